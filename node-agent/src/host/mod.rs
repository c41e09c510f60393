//! Host configuration, owned and reversible: sysctls, addresses, devices and
//! tunnels, the FullNAT masquerade table and gratuitous ARP / unsolicited NA,
//! all over netlink (no external program).
//!
//! Everything the agent changes on the host is written into a [`HostChanges`]
//! record, which the caller persists in its state file under `--state-dir`, so
//! that [`HostChanges::undo`] can put the host back as it was, even after a
//! restart of the agent. The agent never undoes what it did not do: an address or
//! device that was already there is left alone.

pub mod address;
pub mod announce;
mod changes;
mod error;
mod fou;
pub mod link;
pub mod local_routes;
pub mod nat;
mod nftables;
pub mod real_server;
mod rtnl;
#[cfg(test)]
mod rtnl_properties;
pub mod sysctl;
pub mod tunnel;

pub use changes::{DeviceAddress, DeviceRoute, GuePort, HostChanges};
pub use error::{Cause, HostError};
pub use sysctl::Sysctls;

/// The host's own hands: the steps of [`real_server::configure_with`] and
/// [`HostChanges::undo_with`] taken for real, with these sysctls.
pub struct OnHost<'a>(pub &'a Sysctls);

/// The steps of undoing, each one change: taken on the host by [`OnHost`],
/// recorded by a dry run. [`HostChanges::undo_with`] is their one order.
pub trait UndoSteps {
    fn remove_masquerade(&self, changes: &mut HostChanges) -> Result<(), HostError>;
    fn close_gue_port(&self, changes: &mut HostChanges, port: GuePort) -> Result<(), HostError>;
    fn remove_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> Vec<(DeviceRoute, HostError)>;
    fn remove_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)>;
    fn lower_device(&self, changes: &mut HostChanges, device: &str) -> Result<(), HostError>;
    fn delete_device(&self, changes: &mut HostChanges, device: &str) -> Result<(), HostError>;
    /// Every recorded sysctl back to its value from before.
    fn restore_sysctls(&self, changes: &mut HostChanges) -> Result<(), HostError>;
}

impl UndoSteps for OnHost<'_> {
    fn remove_masquerade(&self, changes: &mut HostChanges) -> Result<(), HostError> {
        nat::remove_masquerade(changes)
    }

    fn close_gue_port(&self, changes: &mut HostChanges, port: GuePort) -> Result<(), HostError> {
        fou::close_gue_port(changes, port)
    }

    fn remove_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> Vec<(DeviceRoute, HostError)> {
        local_routes::remove_routes(changes, routes)
    }

    fn remove_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        address::remove_addresses(changes, addresses)
    }

    fn lower_device(&self, changes: &mut HostChanges, device: &str) -> Result<(), HostError> {
        link::lower_device(changes, device)
    }

    fn delete_device(&self, changes: &mut HostChanges, device: &str) -> Result<(), HostError> {
        link::delete_device(changes, device)
    }

    fn restore_sysctls(&self, changes: &mut HostChanges) -> Result<(), HostError> {
        self.0.restore_all(changes)
    }
}

// Here rather than beside the record (changes.rs): undoing calls every module
// that configures, and they all write into the record.
impl HostChanges {
    /// Undoes every recorded change on this host; see [`HostChanges::undo_with`].
    pub fn undo(&mut self, sysctls: &Sysctls) -> Result<(), HostError> {
        self.undo_with(&OnHost(sysctls))
    }

    /// Undoes every recorded change, in the reverse order of configuration: the
    /// masquerade table and GUE ports, the routes and addresses, the devices, and the sysctls last (the
    /// ARP settings must outlive the VIPs they hide). Keeps going after a failure,
    /// so that one stuck item does not pin the others, and reports the failures;
    /// what could not be undone stays recorded.
    pub fn undo_with(&mut self, steps: &impl UndoSteps) -> Result<(), HostError> {
        let mut failures = Vec::new();
        failures.extend(steps.remove_masquerade(self).err());
        for port in self.gue_ports.clone() {
            failures.extend(steps.close_gue_port(self, port).err());
        }
        let routes: Vec<DeviceRoute> = self.routes.iter().cloned().collect();
        failures.extend(steps.remove_routes(self, &routes).into_iter().map(|(_, e)| e));
        let addresses: Vec<DeviceAddress> = self.addresses.iter().cloned().collect();
        failures.extend(steps.remove_addresses(self, &addresses).into_iter().map(|(_, e)| e));
        for device in self.raised_devices.clone() {
            failures.extend(steps.lower_device(self, &device).err());
        }
        for device in self.created_devices.clone() {
            failures.extend(steps.delete_device(self, &device).err());
        }
        failures.extend(steps.restore_sysctls(self).err());
        if failures.is_empty() {
            Ok(())
        } else {
            Err(HostError::new("undoing host changes", Cause::Several(failures)))
        }
    }
}
