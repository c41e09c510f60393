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

// Here rather than beside the record (changes.rs): undoing calls every module
// that configures, and they all write into the record.
impl HostChanges {
    /// Undoes every recorded change, in the reverse order of configuration: the
    /// masquerade table and GUE ports, the routes and addresses, the devices, and the sysctls last (the
    /// ARP settings must outlive the VIPs they hide). Keeps going after a failure,
    /// so that one stuck item does not pin the others, and reports the failures;
    /// what could not be undone stays recorded.
    pub fn undo(&mut self, sysctls: &Sysctls) -> Result<(), HostError> {
        let mut failures = Vec::new();
        failures.extend(nat::remove_masquerade(self).err());
        for port in self.gue_ports.clone() {
            failures.extend(fou::close_gue_port(self, port).err());
        }
        let routes: Vec<DeviceRoute> = self.routes.iter().cloned().collect();
        failures.extend(local_routes::remove_routes(self, &routes).into_iter().map(|(_, e)| e));
        let addresses: Vec<DeviceAddress> = self.addresses.iter().cloned().collect();
        failures.extend(address::remove_addresses(self, &addresses).into_iter().map(|(_, e)| e));
        for device in self.raised_devices.clone() {
            failures.extend(link::lower_device(self, &device).err());
        }
        for device in self.created_devices.clone() {
            failures.extend(link::delete_device(self, &device).err());
        }
        failures.extend(sysctls.restore_all(self).err());
        if failures.is_empty() {
            Ok(())
        } else {
            Err(HostError::new("undoing host changes", Cause::Several(failures)))
        }
    }
}
