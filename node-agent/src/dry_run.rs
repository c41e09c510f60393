//! `apply --dry-run`: everything applying would change on this host, with
//! nothing changed.
//!
//! The engine plans and applies a full round as the agent would, on seams that
//! look at the host and the kernel (sysctls, links, addresses, local routes,
//! the nftables table, the IPVS table and sync daemons) but only record what
//! they are asked to change: [`PlanningKernel`] and [`PlanningHost`], whose
//! decisions are the host modules' pure ones ([`sysctl::changes`],
//! [`link::ensure_changes`], [`real_server::devices`], [`nat::ruleset`]), and
//! whose order is the host's own: the planning host takes the steps of
//! [`real_server::configure_with`] and [`HostChanges::undo_with`]. The
//! long-running agent's other parts (VRRP instances, the sync daemon, health
//! checks) come from the settings its supervisor gives them. [`DryRun::render`]
//! is the one place that prints it all.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use lvs_crds::lvs_node::{LvsNodeSpec, RealServerVip};
use lvs_health::{CheckKind, Target};
use lvs_ipvs::{BatchReport, IpvsError, IpvsOp, ServiceKey, SyncDaemon, ipvsadm::op_rule};
use lvs_vrrp::InstanceConfig;
use tracing::warn;

use crate::{
    convert,
    engine::{Engine, Scope},
    failover,
    host::{
        DeviceAddress, DeviceRoute, GuePort, HostChanges, HostError, Sysctls, UndoSteps, address,
        link::{self, LinkChange},
        local_routes, nat,
        real_server::{self, RealServerDevice, RealServerSteps},
        sysctl::{self, Forwarding, Setting, SysctlChange},
    },
    reconcile::{KernelTable, ObservedService},
    seams::{Dumper, Host, Kernel, NetlinkKernel},
};

/// What `apply` would do to this host.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DryRun {
    /// `apply --once` (no VRRP, health checks or sync daemon) rather than the
    /// long-running agent.
    pub once: bool,
    pub sysctls: Vec<SysctlChange>,
    pub devices: Vec<DeviceChange>,
    pub addresses: Vec<AddressChange>,
    pub nftables: NftChange,
    pub vrrp: Vec<InstanceConfig>,
    /// The sync daemons started or stopped at startup (as backup: a VRRP
    /// master's becomes a master).
    pub sync_daemons: Vec<IpvsOp>,
    pub health_checks: Vec<Target>,
    pub ipvs: Vec<IpvsOp>,
    /// What applying would fail on, as far as looking tells.
    pub problems: Vec<String>,
}

/// A device made, changed or removed, or a GUE port opened or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    Link(LinkChange),
    OpenGuePort(GuePort),
    CloseGuePort(GuePort),
}

/// An address or a local route added or removed, or a VIP announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressChange {
    Add(DeviceAddress),
    Remove(DeviceAddress),
    AddRoute(DeviceRoute),
    RemoveRoute(DeviceRoute),
    /// Gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6).
    Announce(DeviceAddress),
}

/// What becomes of the agent's nftables table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum NftChange {
    /// No table wanted, none to delete.
    #[default]
    Nothing,
    /// Loaded again as it is: present, and recorded with the same real servers.
    Unchanged,
    /// Loaded whole, replacing the table in place (`present`: whether there is
    /// one, unknown when nf_tables cannot be asked).
    Load {
        ruleset: String,
        present: Option<bool>,
    },
    Delete,
}

/// The dry run's options: `apply`'s.
#[derive(Debug, Clone, Copy)]
pub struct DryRunOptions<'a> {
    pub state_dir: &'a Path,
    pub sysctl_root: &'a Path,
    pub exclusive: bool,
    pub once: bool,
}

/// What applying `spec` would do: a full round of the engine on recording
/// seams (with what the state file says the agent owns), then, unless `once`,
/// the VRRP instances, the sync daemon and the health checks the agent would run.
pub fn plan(spec: &LvsNodeSpec, options: DryRunOptions<'_>) -> DryRun {
    // Asking for IPVS would load its module: not when it is not loaded (its
    // file in this namespace's /proc/net is missing), whose table is empty.
    let kernel = Path::new("/proc/net/ip_vs")
        .exists()
        .then(|| {
            NetlinkKernel::connect()
                .inspect_err(|e| warn!(error = %e, "the kernel's IPVS table cannot be read; planning from an empty one"))
                .ok()
        })
        .flatten();
    let recorded = Arc::new(Mutex::new(DryRun { once: options.once, ..DryRun::default() }));
    let kernel = PlanningKernel { kernel, plan: Arc::clone(&recorded) };
    let host = PlanningHost::new(Sysctls::new(options.sysctl_root), Arc::clone(&recorded));
    let mut engine =
        Engine::read_only(Box::new(kernel), Box::new(host), options.state_dir, options.exclusive);
    // The long-running agent leaves the VIPs with a `vrrp` section to VRRP.
    engine.set_vrrp(!options.once);
    let round = engine.reconcile(spec, Scope::Full);
    let problems: Vec<String> = round.failures.iter().map(ToString::to_string).collect();
    let mut dry_run = std::mem::take(&mut *recorded.lock().expect("not poisoned"));
    dry_run.problems.extend(problems);
    if options.once {
        return dry_run;
    }
    let Some(director) = &spec.director else { return dry_run };
    dry_run.health_checks = convert::health_targets(director);
    match failover::settings(director, engine.host()) {
        Ok((instances, sync)) => {
            dry_run.vrrp = instances;
            if let Some(sync) = sync {
                // At startup no instance is master yet: a backup daemon.
                let running = engine.kernel().sync_daemons().unwrap_or_default();
                let wanted = (failover::sync_role(0), &sync);
                dry_run.sync_daemons = failover::sync_daemon_ops(&running, Some(wanted));
            }
        }
        Err(e) => dry_run.problems.push(e),
    }
    dry_run
}

/// Headings and their lines: `## <section>`, then one change per line, each
/// starting with `# ` and its kind (`# sysctl`, `# ip link`, `# ip addr`, ...),
/// and the IPVS operations last as ipvsadm rules, uncommented: the output is
/// `ipvsadm -R` (and `lvs-agent restore`) input as it stands.
impl DryRun {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mode = if self.once { "apply --once" } else { "apply" };
        let _ = writeln!(
            out,
            "# lvs-agent {mode} --dry-run: what applying would change here; nothing was changed."
        );
        section(&mut out, "sysctls", self.sysctls.iter().map(sysctl_line).collect());
        section(&mut out, "devices", self.devices.iter().map(device_line).collect());
        section(&mut out, "addresses", self.addresses.iter().map(address_line).collect());
        section(&mut out, "nftables", nftables_lines(&self.nftables));
        let long_running = |lines: Vec<String>| {
            if self.once { vec!["# (none with --once)".to_string()] } else { lines }
        };
        section(&mut out, "vrrp", long_running(self.vrrp.iter().map(vrrp_line).collect()));
        let sync = self.sync_daemons.iter().map(|op| format!("# ipvsadm {}", op_rule(op))).collect();
        section(&mut out, "sync daemon", long_running(sync));
        section(
            &mut out,
            "health checks",
            long_running(self.health_checks.iter().map(health_line).collect()),
        );
        if !self.problems.is_empty() {
            section(&mut out, "problems", self.problems.iter().map(|p| format!("# problem: {p}")).collect());
        }
        section(&mut out, "ipvs", self.ipvs.iter().map(op_rule).collect());
        out
    }
}

/// A heading and its lines, or `# (no change)`.
fn section(out: &mut String, heading: &str, lines: Vec<String>) {
    let _ = writeln!(out, "## {heading}");
    if lines.is_empty() {
        out.push_str("# (no change)\n");
    }
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

fn sysctl_line(change: &SysctlChange) -> String {
    let current = change.current.as_deref().unwrap_or("(absent)");
    format!(
        "# sysctl {}: {} -> {}",
        change.key,
        current.split_whitespace().collect::<Vec<_>>().join(" "),
        change.wanted
    )
}

fn device_line(change: &DeviceChange) -> String {
    match change {
        DeviceChange::Link(LinkChange::Create { name, kind }) => format!("# ip link add {name} type {kind}"),
        DeviceChange::Link(LinkChange::Up(name)) => format!("# ip link set {name} up"),
        DeviceChange::Link(LinkChange::Down(name)) => format!("# ip link set {name} down"),
        DeviceChange::Link(LinkChange::Delete(name)) => format!("# ip link del {name}"),
        DeviceChange::OpenGuePort(port) => format!("# ip fou add port {} gue{}", port.port, family(port)),
        DeviceChange::CloseGuePort(port) => format!("# ip fou del port {}{}", port.port, family(port)),
    }
}

/// `ip fou`'s family option.
fn family(port: &GuePort) -> &'static str {
    if port.ipv6 { " -6" } else { "" }
}

fn address_line(change: &AddressChange) -> String {
    let prefix = |address: &IpAddr| if address.is_ipv4() { 32 } else { 128 };
    match change {
        AddressChange::Add(a) => {
            format!("# ip addr add {}/{} dev {}", a.address, prefix(&a.address), a.device)
        }
        AddressChange::Remove(a) => {
            format!("# ip addr del {}/{} dev {}", a.address, prefix(&a.address), a.device)
        }
        AddressChange::AddRoute(r) => {
            format!("# ip route add local {} dev {} table local", r.block, r.device)
        }
        AddressChange::RemoveRoute(r) => {
            format!("# ip route del local {} dev {} table local", r.block, r.device)
        }
        AddressChange::Announce(a) => {
            let how = if a.address.is_ipv4() { "gratuitous ARP" } else { "unsolicited NA" };
            format!("# announce {} dev {} ({how})", a.address, a.device)
        }
    }
}

fn nftables_lines(change: &NftChange) -> Vec<String> {
    let table = format!("table inet {}", nat::TABLE);
    match change {
        NftChange::Nothing => vec![],
        NftChange::Unchanged => vec![format!("# nft {table}: unchanged")],
        NftChange::Delete => vec![format!("# nft delete {table}")],
        NftChange::Load { ruleset, present } => {
            let what = match present {
                Some(true) => "replacing the one in place",
                Some(false) => "new",
                None => "the one in place could not be listed",
            };
            let mut lines = vec![format!("# nft load {table} ({what}):")];
            lines.extend(ruleset.lines().map(|line| format!("# nft | {line}")));
            lines
        }
    }
}

fn vrrp_line(instance: &InstanceConfig) -> String {
    let vips: Vec<String> = instance.addresses.iter().map(ToString::to_string).collect();
    format!(
        "# vrrp instance {} vrid {} {}: priority {}, advert {} ms, {}, vips {} (held while master)",
        instance.interface,
        instance.vrid,
        instance.family.name(),
        instance.priority,
        instance.advert_interval.as_millis(),
        if instance.preempt { "preempt" } else { "nopreempt" },
        vips.join(" "),
    )
}

fn health_line(target: &Target) -> String {
    let check = &target.check;
    let kind = match check.kind {
        CheckKind::None => "none",
        CheckKind::Tcp => "TCP",
        CheckKind::Http => "HTTP",
        CheckKind::Https => "HTTPS",
        CheckKind::Udp => "UDP",
    };
    let probe =
        std::net::SocketAddr::new(target.destination.ip(), check.port.unwrap_or(target.destination.port()));
    let mut line = format!("# health check {kind} {probe}");
    if matches!(check.kind, CheckKind::Http | CheckKind::Https) {
        let _ = write!(line, " path {}", check.path.as_deref().unwrap_or("/"));
    }
    let _ = write!(
        line,
        " of {}: every {} s, timeout {} s, rise {}, fall {}",
        target.service, check.interval_seconds, check.timeout_seconds, check.rise, check.fall
    );
    line
}

/// The kernel as a dry run sees it: read when it can be (IPVS needs
/// CAP_NET_ADMIN), else an empty table; operations recorded, never sent.
struct PlanningKernel {
    kernel: Option<NetlinkKernel>,
    plan: Arc<Mutex<DryRun>>,
}

impl Kernel for PlanningKernel {
    fn apply(&self, ops: &[IpvsOp]) -> BatchReport {
        self.plan.lock().expect("not poisoned").ipvs.extend(ops.iter().cloned());
        BatchReport { requests: ops.len(), failures: Vec::new() }
    }

    /// Unreadable (no CAP_NET_ADMIN), the table is planned from empty.
    fn dump(&self) -> Result<KernelTable, IpvsError> {
        let table = self.kernel.as_ref().map_or(Ok(KernelTable::new()), Kernel::dump);
        Ok(table.unwrap_or_else(|e| {
            warn!(error = %e, "the kernel's IPVS table cannot be read; planning from an empty one");
            KernelTable::new()
        }))
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<ObservedService>, IpvsError> {
        self.kernel.as_ref().map_or(Ok(None), |kernel| kernel.service(key))
    }

    fn sync_daemons(&self) -> Result<Vec<SyncDaemon>, IpvsError> {
        self.kernel.as_ref().map_or(Ok(Vec::new()), Kernel::sync_daemons)
    }

    fn dumper(&self) -> Result<Arc<dyn Dumper>, IpvsError> {
        match &self.kernel {
            Some(kernel) => kernel.dumper(),
            None => Ok(Arc::new(NoTable)),
        }
    }
}

/// The empty table of a kernel that cannot be read.
struct NoTable;

impl Dumper for NoTable {
    fn dump(&self) -> Result<KernelTable, IpvsError> {
        Ok(KernelTable::new())
    }
}

/// The host as a dry run sees it: every look is real, every change recorded in
/// the plan (and in the engine's in-memory record, as the change would be), none made.
struct PlanningHost {
    sysctls: Sysctls,
    plan: Arc<Mutex<DryRun>>,
    /// The sysctl values planned so far: a later profile sees them (`all`'s
    /// keys are in several).
    planned: Mutex<BTreeMap<String, String>>,
}

impl PlanningHost {
    fn new(sysctls: Sysctls, plan: Arc<Mutex<DryRun>>) -> Self {
        PlanningHost { sysctls, plan, planned: Mutex::default() }
    }

    fn record(&self, record: impl FnOnce(&mut DryRun)) {
        record(&mut self.plan.lock().expect("not poisoned"));
    }

    /// The profile's settings that differ from the values now (or planned).
    fn plan_sysctls(&self, changes: &mut HostChanges, profile: &[Setting]) {
        let mut planned = self.planned.lock().expect("not poisoned");
        let found =
            sysctl::changes(profile, |key| planned.get(key).cloned().or_else(|| self.sysctls.get(key).ok()));
        for change in found {
            planned.insert(change.key.clone(), change.wanted.clone());
            if let Some(current) = &change.current {
                changes.sysctls.entry(change.key.clone()).or_insert_with(|| current.clone());
            }
            self.record(|plan| plan.sysctls.push(change));
        }
    }

    fn present_addresses(&self) -> Result<BTreeSet<DeviceAddress>, HostError> {
        Ok(address::local_addresses()?.into_iter().collect())
    }
}

impl Host for PlanningHost {
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
        real_server::configure_with(self, changes, vips)
    }

    fn close_unused_gue_ports(
        &self,
        changes: &mut HostChanges,
        vips: &[RealServerVip],
    ) -> Vec<(GuePort, HostError)> {
        let wanted: BTreeSet<GuePort> =
            vips.iter().filter_map(|vip| real_server::gue_port(vip)?.ok()).collect();
        let unused: Vec<GuePort> = changes.gue_ports.difference(&wanted).copied().collect();
        for port in unused {
            changes.gue_ports.remove(&port);
            self.record(|plan| plan.devices.push(DeviceChange::CloseGuePort(port)));
        }
        Vec::new()
    }

    fn director_sysctls(
        &self,
        changes: &mut HostChanges,
        forwarding: Forwarding,
        interface: &str,
    ) -> Result<(), HostError> {
        let profile = sysctl::director(forwarding, interface, self.sysctls.kernel_version()?);
        self.plan_sysctls(changes, &profile);
        Ok(())
    }

    fn add_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> (Vec<DeviceRoute>, Vec<(DeviceRoute, HostError)>) {
        let present = match local_routes::present_routes() {
            Ok(present) => present,
            Err(e) => return (Vec::new(), routes.iter().map(|r| (r.clone(), e.clone())).collect()),
        };
        if changes.adopt {
            changes.routes.extend(routes.iter().filter(|route| present.contains(route)).cloned());
        }
        let added: Vec<DeviceRoute> =
            routes.iter().filter(|route| !present.contains(route)).cloned().collect();
        changes.routes.extend(added.iter().cloned());
        self.record(|plan| plan.addresses.extend(added.iter().cloned().map(AddressChange::AddRoute)));
        (added, Vec::new())
    }

    fn remove_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> Vec<(DeviceRoute, HostError)> {
        for route in routes.iter().filter(|route| changes.routes.remove(*route)) {
            self.record(|plan| plan.addresses.push(AddressChange::RemoveRoute(route.clone())));
        }
        Vec::new()
    }

    fn announce(&self, vips: &[DeviceAddress]) -> Vec<(DeviceAddress, HostError)> {
        self.record(|plan| plan.addresses.extend(vips.iter().cloned().map(AddressChange::Announce)));
        Vec::new()
    }

    fn take_vips(
        &self,
        changes: &mut HostChanges,
        vips: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        let present = match self.present_addresses() {
            Ok(present) => present,
            Err(e) => return vips.iter().map(|vip| (vip.clone(), e.clone())).collect(),
        };
        for vip in vips.iter().filter(|vip| !present.contains(*vip)) {
            changes.addresses.insert(vip.clone());
            self.record(|plan| plan.addresses.push(AddressChange::Add(vip.clone())));
        }
        self.announce(vips)
    }

    fn remove_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        for address in addresses.iter().filter(|address| changes.addresses.remove(*address)) {
            self.record(|plan| plan.addresses.push(AddressChange::Remove(address.clone())));
        }
        Vec::new()
    }

    fn masquerade(&self, changes: &mut HostChanges, real_servers: &[IpAddr]) -> Result<(), HostError> {
        let change = if real_servers.is_empty() {
            if !changes.nft_table {
                return Ok(());
            }
            changes.nft_table = false;
            changes.masqueraded.clear();
            NftChange::Delete
        } else {
            let wanted: BTreeSet<IpAddr> = real_servers.iter().copied().collect();
            let present = nat::table_present()
                .inspect_err(|e| warn!(error = %e, "the nftables table cannot be listed"))
                .ok();
            let change = if present == Some(true) && changes.nft_table && changes.masqueraded == wanted {
                NftChange::Unchanged
            } else {
                NftChange::Load { ruleset: nat::ruleset(real_servers), present }
            };
            changes.nft_table = true;
            changes.masqueraded = wanted;
            change
        };
        self.record(|plan| plan.nftables = change);
        Ok(())
    }

    fn restore(&self, changes: &mut HostChanges) -> Result<(), HostError> {
        changes.undo_with(self)
    }
}

/// A real server's steps, recorded: the device, its sysctls, GUE's port and
/// the VIPs as they would be made, with the undo record as they would leave it.
impl RealServerSteps for PlanningHost {
    fn ensure_device(
        &self,
        changes: &mut HostChanges,
        device: &RealServerDevice<'_>,
    ) -> Result<(), HostError> {
        let state = link::device_state(device.name)?;
        let recorded = match state {
            None => Some(&mut changes.created_devices),
            Some(false) => Some(&mut changes.raised_devices),
            Some(true) => None,
        };
        if let Some(recorded) = recorded {
            recorded.insert(device.name.into());
        }
        let made = link::ensure_changes(device.name, &device.kind(), state);
        self.record(|plan| plan.devices.extend(made.into_iter().map(DeviceChange::Link)));
        Ok(())
    }

    fn set_sysctls(&self, changes: &mut HostChanges, settings: &[Setting]) -> Result<(), HostError> {
        self.plan_sysctls(changes, settings);
        Ok(())
    }

    fn open_gue_port(&self, changes: &mut HostChanges, port: GuePort) -> Result<(), HostError> {
        if !changes.gue_ports.contains(&port) && !real_server::gue_port_open(port)? {
            changes.gue_ports.insert(port);
            self.record(|plan| plan.devices.push(DeviceChange::OpenGuePort(port)));
        }
        Ok(())
    }

    fn add_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        let present = match self.present_addresses() {
            Ok(present) => present,
            Err(e) => return addresses.iter().map(|a| (a.clone(), e.clone())).collect(),
        };
        for address in addresses.iter().filter(|a| !present.contains(*a)) {
            if changes.addresses.insert(address.clone()) {
                self.record(|plan| plan.addresses.push(AddressChange::Add(address.clone())));
            }
        }
        Vec::new()
    }
}

/// Undoing, recorded: what [`HostChanges::undo_with`] would take away.
impl UndoSteps for PlanningHost {
    fn remove_masquerade(&self, changes: &mut HostChanges) -> Result<(), HostError> {
        self.masquerade(changes, &[])
    }

    fn close_gue_port(&self, changes: &mut HostChanges, port: GuePort) -> Result<(), HostError> {
        if changes.gue_ports.remove(&port) {
            self.record(|plan| plan.devices.push(DeviceChange::CloseGuePort(port)));
        }
        Ok(())
    }

    fn remove_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> Vec<(DeviceRoute, HostError)> {
        Host::remove_routes(self, changes, routes)
    }

    fn remove_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        Host::remove_addresses(self, changes, addresses)
    }

    fn lower_device(&self, changes: &mut HostChanges, device: &str) -> Result<(), HostError> {
        if changes.raised_devices.remove(device) {
            self.record(|plan| plan.devices.push(DeviceChange::Link(LinkChange::Down(device.into()))));
        }
        Ok(())
    }

    fn delete_device(&self, changes: &mut HostChanges, device: &str) -> Result<(), HostError> {
        if changes.created_devices.remove(device) {
            self.record(|plan| plan.devices.push(DeviceChange::Link(LinkChange::Delete(device.into()))));
        }
        Ok(())
    }

    fn restore_sysctls(&self, changes: &mut HostChanges) -> Result<(), HostError> {
        for (key, previous) in std::mem::take(&mut changes.sysctls) {
            // A device's keys go with the device.
            if let Ok(current) = self.sysctls.get(&key) {
                let change = SysctlChange { key, current: Some(current), wanted: previous };
                self.record(|plan| plan.sysctls.push(change));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use lvs_health::HealthCheck;
    use lvs_ipvs::{Destination, ForwardMethod, Service, SyncState};
    use lvs_vrrp::AddressFamily;
    use pretty_assertions::assert_eq;

    use super::*;

    fn device(device: &str, address: &str) -> DeviceAddress {
        DeviceAddress { device: device.into(), address: address.parse().unwrap() }
    }

    fn director() -> DryRun {
        let key = ServiceKey::tcp("192.168.16.100:80".parse().unwrap());
        let real_server: SocketAddr = "192.168.16.21:80".parse().unwrap();
        DryRun {
            once: false,
            sysctls: vec![
                SysctlChange {
                    key: "net.ipv4.conf.all.send_redirects".into(),
                    current: Some("1".into()),
                    wanted: "0".into(),
                },
                SysctlChange {
                    key: "net.ipv4.vs.expire_nodest_conn".into(),
                    current: None,
                    wanted: "1".into(),
                },
            ],
            devices: vec![
                DeviceChange::Link(LinkChange::Create { name: "tunl0".into(), kind: "ipip".into() }),
                DeviceChange::Link(LinkChange::Up("tunl0".into())),
                DeviceChange::OpenGuePort(GuePort { port: 5555, ipv6: false }),
            ],
            addresses: vec![
                AddressChange::Add(device("eth0", "192.168.16.101")),
                AddressChange::Announce(device("eth0", "192.168.16.101")),
                AddressChange::AddRoute(DeviceRoute {
                    device: "eth0".into(),
                    block: "192.168.16.104/29".parse().unwrap(),
                }),
                AddressChange::Remove(device("eth0", "2001:db8::5")),
            ],
            nftables: NftChange::Load {
                ruleset: nat::ruleset(&["10.0.2.1".parse().unwrap()]),
                present: Some(false),
            },
            vrrp: vec![InstanceConfig {
                interface: "eth0".into(),
                vrid: 51,
                family: AddressFamily::IPv4,
                priority: 100,
                advert_interval: Duration::from_secs(1),
                preempt: true,
                addresses: vec!["192.168.16.100".parse().unwrap()],
            }],
            sync_daemons: vec![IpvsOp::StartSyncDaemon(SyncDaemon::new(SyncState::Backup, "eth0", 51))],
            health_checks: vec![Target {
                service: key,
                destination: real_server,
                check: HealthCheck {
                    kind: CheckKind::Http,
                    path: None,
                    host: None,
                    port: Some(8080),
                    expected_status: None,
                    body_contains: None,
                    payload: None,
                    interval_seconds: 2,
                    timeout_seconds: 1,
                    rise: 2,
                    fall: 3,
                },
            }],
            ipvs: vec![
                IpvsOp::AddService(Service::new(key, "wrr")),
                IpvsOp::AddDestination(key, Destination::new(real_server, ForwardMethod::DirectRoute, 2)),
            ],
            problems: vec![],
        }
    }

    #[test]
    fn every_section_has_a_heading_and_one_change_per_line() {
        assert_eq!(
            director().render(),
            "\
# lvs-agent apply --dry-run: what applying would change here; nothing was changed.
## sysctls
# sysctl net.ipv4.conf.all.send_redirects: 1 -> 0
# sysctl net.ipv4.vs.expire_nodest_conn: (absent) -> 1
## devices
# ip link add tunl0 type ipip
# ip link set tunl0 up
# ip fou add port 5555 gue
## addresses
# ip addr add 192.168.16.101/32 dev eth0
# announce 192.168.16.101 dev eth0 (gratuitous ARP)
# ip route add local 192.168.16.104/29 dev eth0 table local
# ip addr del 2001:db8::5/128 dev eth0
## nftables
# nft load table inet lvs_agent (new):
# nft | table inet lvs_agent {
# nft |     chain postrouting {
# nft |         type nat hook postrouting priority srcnat; policy accept;
# nft |         ip daddr 10.0.2.1 masquerade
# nft |     }
# nft | }
## vrrp
# vrrp instance eth0 vrid 51 IPv4: priority 100, advert 1000 ms, preempt, vips 192.168.16.100 (held while master)
## sync daemon
# ipvsadm --start-daemon backup --mcast-interface eth0 --syncid 51
## health checks
# health check HTTP 192.168.16.21:8080 path / of TCP 192.168.16.100:80: every 2 s, timeout 1 s, rise 2, fall 3
## ipvs
-A -t 192.168.16.100:80 -s wrr
-a -t 192.168.16.100:80 -r 192.168.16.21:80 -g -w 2
"
        );
    }

    #[test]
    fn empty_sections_say_so_and_once_runs_no_vrrp_checks_or_sync() {
        let once = DryRun { once: true, nftables: NftChange::Unchanged, ..director() };
        let text = once.render();
        assert!(text.starts_with("# lvs-agent apply --once --dry-run:"), "{text}");
        assert!(text.contains("## nftables\n# nft table inet lvs_agent: unchanged\n"), "{text}");
        for heading in ["vrrp", "sync daemon", "health checks"] {
            assert!(text.contains(&format!("## {heading}\n# (none with --once)\n")), "{text}");
        }
        let nothing = DryRun::default().render();
        assert_eq!(nothing.matches("# (no change)\n").count(), 8, "{nothing}");
        assert!(!nothing.contains("## problems"), "{nothing}");
        let failing =
            DryRun { problems: vec!["director VIP 192.0.2.1: no route".into()], ..DryRun::default() };
        assert!(failing.render().contains("## problems\n# problem: director VIP 192.0.2.1: no route\n"));
    }

    #[test]
    fn the_rendering_is_ipvsadm_restore_input() {
        let rules = lvs_ipvs::ipvsadm::parse_rules(&director().render()).unwrap();
        assert_eq!(rules, director().ipvs);
    }

    /// A sysctl root of its own, with these keys.
    struct FakeProc(std::path::PathBuf);

    impl FakeProc {
        fn new(name: &str, keys: &[(&str, &str)]) -> (Self, PlanningHost, Arc<Mutex<DryRun>>) {
            let root = std::env::temp_dir().join(format!("lvs-agent-dry-run-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let sysctls = Sysctls::new(&root);
            for (key, value) in keys {
                let path = sysctls.path(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, format!("{value}\n")).unwrap();
            }
            let plan = Arc::new(Mutex::new(DryRun::default()));
            (FakeProc(root), PlanningHost::new(sysctls, Arc::clone(&plan)), plan)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn change(key: &str, current: Option<&str>, wanted: &str) -> SysctlChange {
        SysctlChange { key: key.into(), current: current.map(Into::into), wanted: wanted.into() }
    }

    /// A key that two interfaces' profiles share is planned once, and only
    /// what differs is; the record takes the values they had.
    #[test]
    fn director_sysctls_plan_what_differs_once() {
        let (_proc, host, plan) = FakeProc::new(
            "director",
            &[
                ("net.ipv4.conf.all.send_redirects", "1"),
                ("net.ipv4.conf.eth0.send_redirects", "1"),
                ("net.ipv4.conf.eth1.send_redirects", "0"),
                ("net.ipv4.vs.expire_quiescent_template", "1"),
            ],
        );
        let mut changes = HostChanges::default();
        host.director_sysctls(&mut changes, Forwarding::DirectRouting, "eth0").unwrap();
        host.director_sysctls(&mut changes, Forwarding::DirectRouting, "eth1").unwrap();
        assert_eq!(
            plan.lock().unwrap().sysctls,
            [
                change("net.ipv4.conf.all.send_redirects", Some("1"), "0"),
                change("net.ipv4.conf.eth0.send_redirects", Some("1"), "0"),
                change("net.ipv4.vs.expire_nodest_conn", None, "1"),
            ]
        );
        assert_eq!(changes.sysctls.get("net.ipv4.conf.all.send_redirects").map(String::as_str), Some("1"));
        assert_eq!(host.sysctls.get("net.ipv4.conf.all.send_redirects").unwrap(), "1", "nothing written");
    }

    /// Once nothing is wanted, what the record holds is undone: planned from
    /// the record alone, in the undo's order, the sysctls back to their values.
    #[test]
    fn undoing_is_planned_from_the_record() {
        let (_proc, host, plan) = FakeProc::new("undo", &[("net.ipv4.conf.all.arp_ignore", "1")]);
        let mut changes = HostChanges {
            sysctls: [
                ("net.ipv4.conf.all.arp_ignore".to_string(), "0".to_string()),
                ("net.ipv4.conf.lvs0.arp_ignore".to_string(), "0".to_string()),
            ]
            .into(),
            created_devices: ["lvs0".to_string()].into(),
            raised_devices: ["tunl0".to_string()].into(),
            addresses: [device("lvs0", "192.168.16.100")].into(),
            routes: [DeviceRoute { device: "eth0".into(), block: "192.168.16.104/29".parse().unwrap() }]
                .into(),
            nft_table: true,
            masqueraded: ["10.0.2.1".parse().unwrap()].into(),
            gue_ports: [GuePort { port: 5555, ipv6: false }].into(),
            adopt: false,
        };
        host.restore(&mut changes).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        let plan = plan.lock().unwrap();
        assert_eq!(plan.nftables, NftChange::Delete);
        assert_eq!(
            plan.devices,
            [
                DeviceChange::CloseGuePort(GuePort { port: 5555, ipv6: false }),
                DeviceChange::Link(LinkChange::Down("tunl0".into())),
                DeviceChange::Link(LinkChange::Delete("lvs0".into())),
            ]
        );
        assert_eq!(
            plan.addresses,
            [
                AddressChange::RemoveRoute(DeviceRoute {
                    device: "eth0".into(),
                    block: "192.168.16.104/29".parse().unwrap()
                }),
                AddressChange::Remove(device("lvs0", "192.168.16.100")),
            ]
        );
        // lvs0's key goes with lvs0.
        assert_eq!(plan.sysctls, [change("net.ipv4.conf.all.arp_ignore", Some("1"), "0")]);
    }

    /// Only what the agent recorded is removed, as the real host removes it.
    #[test]
    fn removals_are_of_recorded_things_only() {
        let (_proc, host, plan) = FakeProc::new("removals", &[]);
        let mut changes =
            HostChanges { addresses: [device("eth0", "192.168.16.100")].into(), ..HostChanges::default() };
        let asked = [device("eth0", "192.168.16.100"), device("eth0", "192.168.16.200")];
        assert!(Host::remove_addresses(&host, &mut changes, &asked).is_empty());
        assert!(changes.addresses.is_empty());
        host.masquerade(&mut changes, &[]).unwrap();
        let plan = plan.lock().unwrap();
        assert_eq!(plan.addresses, [AddressChange::Remove(device("eth0", "192.168.16.100"))]);
        assert_eq!(plan.nftables, NftChange::Nothing, "no table recorded, none deleted");
    }
}
