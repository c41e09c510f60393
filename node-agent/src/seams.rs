//! The engine's seams: what it asks of the kernel's IPVS ([`Kernel`]) and of
//! the host ([`Host`]). The agent runs on [`NetlinkKernel`] and [`SystemHost`],
//! thin adapters over [`crate::ipvs`] and [`crate::host`]; the event loop's unit
//! tests run on in-memory implementations that record what they are asked.

use std::{net::IpAddr, sync::Arc};

use lvs_crds::lvs_node::RealServerVip;

use crate::{
    host::{
        DeviceAddress, DeviceRoute, GuePort, HostChanges, HostError, Sysctls, address, announce,
        local_routes, nat, real_server,
        sysctl::{self, Forwarding},
    },
    reconcile::{KernelTable, ObservedDestination, ObservedService},
};
use lvs_ipvs::{BatchReport, IpvsError, IpvsHandle, IpvsOp, KernelError, ServiceKey, SyncDaemon};

/// The kernel's IPVS table and sync daemons.
pub trait Kernel: Send {
    /// Applies `ops` in order, each attempted; the report names the failures.
    fn apply(&self, ops: &[IpvsOp]) -> BatchReport;
    /// The whole table.
    fn dump(&self) -> Result<KernelTable, IpvsError>;
    /// One service as the kernel has it (`None`: no such service).
    fn service(&self, key: &ServiceKey) -> Result<Option<ObservedService>, IpvsError>;
    /// The running connection-sync daemons.
    fn sync_daemons(&self) -> Result<Vec<SyncDaemon>, IpvsError>;
    /// Something that dumps the table on another thread (the resync's dump runs
    /// beside the rounds).
    fn dumper(&self) -> Result<Arc<dyn Dumper>, IpvsError>;
}

/// Dumps the kernel's table from any thread.
pub trait Dumper: Send + Sync {
    fn dump(&self) -> Result<KernelTable, IpvsError>;
}

/// The host: addresses, routes, sysctls, real-server devices, announcements,
/// the FullNAT masquerade. Each change is recorded in the [`HostChanges`] given.
pub trait Host: Send {
    /// Every address of the host, with its device.
    fn local_addresses(&self) -> Result<Vec<DeviceAddress>, HostError>;
    /// The device the route towards each address leaves by.
    fn route_devices(&self, addresses: &[IpAddr]) -> Vec<Result<String, HostError>>;
    /// This host as a real server of `vips`; the VIPs that failed, with why.
    fn configure_real_server(
        &self,
        changes: &mut HostChanges,
        vips: &[RealServerVip],
    ) -> Vec<(IpAddr, HostError)>;
    /// Closes the GUE ports the agent opened that no VIP of `vips` uses; those
    /// that failed, with why.
    fn close_unused_gue_ports(
        &self,
        changes: &mut HostChanges,
        vips: &[RealServerVip],
    ) -> Vec<(GuePort, HostError)>;
    /// A director's sysctls on `interface`.
    fn director_sysctls(
        &self,
        changes: &mut HostChanges,
        forwarding: Forwarding,
        interface: &str,
    ) -> Result<(), HostError>;
    /// Adds the local routes not there yet: those added, and the failures.
    fn add_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> (Vec<DeviceRoute>, Vec<(DeviceRoute, HostError)>);
    fn remove_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> Vec<(DeviceRoute, HostError)>;
    /// Gratuitous ARP / unsolicited NA for each VIP.
    fn announce(&self, vips: &[DeviceAddress]) -> Vec<(DeviceAddress, HostError)>;
    /// Adds and announces the VIPs.
    fn take_vips(&self, changes: &mut HostChanges, vips: &[DeviceAddress])
    -> Vec<(DeviceAddress, HostError)>;
    /// Removes the addresses `changes` records as the agent's.
    fn remove_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)>;
    /// The FullNAT masquerade towards `real_servers` (none: removed).
    fn masquerade(&self, changes: &mut HostChanges, real_servers: &[IpAddr]) -> Result<(), HostError>;
    /// Puts the host back as it was (undoes `changes`).
    fn restore(&self, changes: &mut HostChanges) -> Result<(), HostError>;
}

/// The kernel over generic netlink.
pub struct NetlinkKernel(IpvsHandle);

impl NetlinkKernel {
    pub fn connect() -> Result<Self, IpvsError> {
        IpvsHandle::connect().map(NetlinkKernel)
    }
}

struct NetlinkDumper(IpvsHandle);

/// The kernel's table as the engine caches it.
fn dump_table(ipvs: &IpvsHandle) -> Result<KernelTable, IpvsError> {
    let table = ipvs.table_of(|entry| ObservedDestination::from(&entry))?;
    let services = table.into_iter().map(|(entry, destinations)| {
        (entry.service.key, ObservedService { service: entry.service, destinations })
    });
    Ok(services.collect())
}

impl Dumper for NetlinkDumper {
    fn dump(&self) -> Result<KernelTable, IpvsError> {
        dump_table(&self.0)
    }
}

impl Kernel for NetlinkKernel {
    fn apply(&self, ops: &[IpvsOp]) -> BatchReport {
        self.0.apply_batch(ops)
    }

    fn dump(&self) -> Result<KernelTable, IpvsError> {
        dump_table(&self.0)
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<ObservedService>, IpvsError> {
        match self.0.service(key) {
            Ok(service) => {
                let destinations = self.0.destinations(key)?;
                Ok(Some(ObservedService::from(&(service, destinations))))
            }
            Err(e) if e.kernel_error() == Some(&KernelError::NoSuchService) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn sync_daemons(&self) -> Result<Vec<SyncDaemon>, IpvsError> {
        self.0.sync_daemons()
    }

    fn dumper(&self) -> Result<Arc<dyn Dumper>, IpvsError> {
        // Its own socket: sockets belong to their creator's network namespace,
        // and this one is created on the engine's thread.
        Ok(Arc::new(NetlinkDumper(IpvsHandle::connect()?)))
    }
}

/// This host, over netlink, sysctl files and nf_tables.
pub struct SystemHost {
    sysctls: Sysctls,
}

impl SystemHost {
    pub fn new(sysctls: Sysctls) -> Self {
        SystemHost { sysctls }
    }
}

impl Host for SystemHost {
    fn local_addresses(&self) -> Result<Vec<DeviceAddress>, HostError> {
        address::local_addresses()
    }

    fn route_devices(&self, addresses: &[IpAddr]) -> Vec<Result<String, HostError>> {
        address::route_devices(addresses)
    }

    fn configure_real_server(
        &self,
        changes: &mut HostChanges,
        vips: &[RealServerVip],
    ) -> Vec<(IpAddr, HostError)> {
        real_server::configure(changes, &self.sysctls, vips)
    }

    fn close_unused_gue_ports(
        &self,
        changes: &mut HostChanges,
        vips: &[RealServerVip],
    ) -> Vec<(GuePort, HostError)> {
        real_server::close_unused_gue_ports(changes, vips)
    }

    fn director_sysctls(
        &self,
        changes: &mut HostChanges,
        forwarding: Forwarding,
        interface: &str,
    ) -> Result<(), HostError> {
        let profile = sysctl::director(forwarding, interface, self.sysctls.kernel_version()?);
        self.sysctls.apply(changes, &profile)
    }

    fn add_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> (Vec<DeviceRoute>, Vec<(DeviceRoute, HostError)>) {
        local_routes::add_routes(changes, routes)
    }

    fn remove_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> Vec<(DeviceRoute, HostError)> {
        local_routes::remove_routes(changes, routes)
    }

    fn announce(&self, vips: &[DeviceAddress]) -> Vec<(DeviceAddress, HostError)> {
        announce::announce_vips(vips)
    }

    fn take_vips(
        &self,
        changes: &mut HostChanges,
        vips: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        address::take_vips(changes, vips)
    }

    fn remove_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        address::remove_addresses(changes, addresses)
    }

    fn masquerade(&self, changes: &mut HostChanges, real_servers: &[IpAddr]) -> Result<(), HostError> {
        if real_servers.is_empty() {
            nat::remove_masquerade(changes)
        } else {
            nat::set_masquerade(changes, real_servers)
        }
    }

    fn restore(&self, changes: &mut HostChanges) -> Result<(), HostError> {
        changes.undo(&self.sysctls)
    }
}
