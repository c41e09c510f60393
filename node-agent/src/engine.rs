//! The agent's reconcile loop body: one node's desired state ([`LvsNodeSpec`],
//! from manifests or from the cluster) made true in the kernel and on the host.
//!
//! ```text
//! desired spec ──> desired services ─┐
//!                                    ├─> reconcile::plan ─> IPVS batch ─> kernel
//! kernel table (cached / dumped) ────┘
//! desired VIPs, sysctls ─────────────────> host configuration (recorded, undoable)
//! ```
//!
//! A change of the desired state is planned against the table as the agent last
//! saw it (refreshed for the services it touches), so it reaches the kernel in
//! milliseconds whatever the table's size; the periodic resync dumps the whole
//! table and repairs drift. What the agent owns (services, drains, host changes)
//! lives in a state file, so a restart neither forgets nor flushes anything.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use lvs_crds::{
    lvs_node::{DirectorState, LvsNodeSpec, RealServerMode},
    virtual_service::Forwarding,
};
use serde::{Deserialize, Serialize};

use crate::{
    desired::desired_services,
    host::{DeviceAddress, HostChanges, Sysctls, address, nat, sysctl, tunnel},
    ipvs::{IpvsHandle, IpvsOp, KernelError, ServiceKey},
    ipvsadm::{TableEntry, op_rule},
    reconcile::{Drains, Ownership, Plan, plan},
};

/// What the agent keeps across restarts (`<state-dir>/state.json`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct AgentState {
    /// Owned services with the drain period they were last desired with.
    owned: Vec<(ServiceKey, Duration)>,
    /// Draining destinations and when each drain started (since the UNIX epoch).
    drains: Vec<(ServiceKey, SocketAddr, Duration)>,
    host: HostChanges,
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// The IPVS operations applied, as ipvsadm lines.
    pub applied: Vec<String>,
    /// Everything that failed, each naming its object.
    pub failures: Vec<String>,
    /// When a drain ends and the agent should look again.
    pub next_check: Option<Duration>,
}

/// The agent of one network namespace.
pub struct Engine {
    ipvs: IpvsHandle,
    sysctls: Sysctls,
    state_file: PathBuf,
    state: AgentState,
    exclusive: bool,
    /// The kernel table as last dumped and then changed by the agent.
    table: Option<Vec<TableEntry>>,
}

impl Engine {
    /// Opens the IPVS handle and the state under `state_dir` (created if absent).
    pub fn open(state_dir: &Path, sysctl_root: &Path, exclusive: bool) -> Result<Self> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let state_file = state_dir.join("state.json");
        let state = match std::fs::read_to_string(&state_file) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("reading {}", state_file.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentState::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", state_file.display())),
        };
        Ok(Engine {
            ipvs: IpvsHandle::connect()?,
            sysctls: Sysctls::new(sysctl_root),
            state_file,
            state,
            exclusive,
            table: None,
        })
    }

    /// Makes the kernel and the host match `spec`. With `full`, the whole table is
    /// dumped first (startup, periodic resync: repairs drift); otherwise the plan
    /// works on the cached table.
    pub fn reconcile(&mut self, spec: &LvsNodeSpec, full: bool) -> Round {
        let mut round = Round::default();
        if full || self.table.is_none() {
            match self.ipvs.table() {
                Ok(table) => self.table = Some(table),
                Err(e) => {
                    round.failures.push(e.to_string());
                    return round;
                }
            }
        }
        let desired = spec.director.as_ref().map(desired_services).unwrap_or_default();
        let plan = plan(
            &desired,
            self.table.as_deref().unwrap_or_default(),
            &Ownership(self.state.owned.iter().copied().collect()),
            &Drains(self.state.drains.iter().map(|(k, a, t)| ((*k, *a), *t)).collect()),
            now(),
            self.exclusive,
        );
        self.apply(&plan, &mut round);
        self.configure_host(spec, &mut round);
        if let Err(e) = self.save() {
            round.failures.push(format!("{e:#}"));
        }
        round
    }

    fn apply(&mut self, plan: &Plan, round: &mut Round) {
        let report = self.ipvs.apply_batch(&plan.ops);
        let failed: BTreeSet<usize> = report.failures.iter().map(|(i, _)| *i).collect();
        round.failures.extend(report.failures.iter().map(|(_, e)| e.to_string()));
        round.applied = plan
            .ops
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains(i))
            .map(|(_, op)| op_rule(op))
            .collect();
        round.next_check = plan.next_check;
        self.state.owned = plan.owned.0.iter().map(|(k, d)| (*k, *d)).collect();
        self.state.drains = plan.drains.0.iter().map(|((k, a), t)| (*k, *a, *t)).collect();
        // Refresh the cache for what was touched (or tried): a few small dumps
        // instead of the whole table.
        let touched: BTreeSet<ServiceKey> = plan.ops.iter().filter_map(IpvsOp::service_key).collect();
        let Some(table) = self.table.as_mut() else { return };
        for key in touched {
            table.retain(|(service, _)| service.service.key != key);
            let refreshed = match self.ipvs.service(&key) {
                Ok(service) => self.ipvs.destinations(&key).map(|d| table.push((service, d))),
                Err(e) if e.kernel_error() == Some(&KernelError::NoSuchService) => Ok(()),
                Err(e) => Err(e),
            };
            if refreshed.is_err() {
                self.table = None; // dump it all next time
                return;
            }
        }
    }

    /// VIPs, sysctls and the FullNAT masquerade for `spec`; everything the agent
    /// added that `spec` no longer wants is removed, and once nothing is wanted
    /// the host is put back as it was.
    fn configure_host(&mut self, spec: &LvsNodeSpec, round: &mut Round) {
        let changes = &mut self.state.host;
        let mut wanted: BTreeSet<DeviceAddress> = BTreeSet::new();
        let mut fail = |what: &str, e: anyhow::Error| round.failures.push(format!("{what}: {e:#}"));

        if let Some(real_server) = &spec.real_server {
            for vip in &real_server.vips {
                let (device, result) = match vip.mode {
                    RealServerMode::DirectRouting => (
                        address::VIP_DEVICE,
                        address::configure_real_server(changes, &self.sysctls, vip.address),
                    ),
                    RealServerMode::Tunnel => (
                        tunnel::TUNNEL_DEVICE,
                        tunnel::configure_real_server(changes, &self.sysctls, vip.address),
                    ),
                };
                wanted.insert(DeviceAddress { device: device.into(), address: vip.address });
                if let Err(e) = result {
                    fail(&format!("real server VIP {}", vip.address), e);
                }
            }
        }
        if let Some(director) = &spec.director {
            // One address dump per round; a VIP already in place costs nothing more.
            let present = address::local_addresses().unwrap_or_default();
            let mut configured_interfaces = BTreeSet::new();
            for vip in &director.vips {
                let held = present.iter().find(|a| a.address == vip.address).map(|a| a.device.clone());
                let interface = vip
                    .interface
                    .clone()
                    .or(held.clone())
                    .map_or_else(|| address::route_device(vip.address), Ok);
                let interface = match interface {
                    Ok(interface) => interface,
                    Err(e) => {
                        fail(&format!("director VIP {}", vip.address), e);
                        continue;
                    }
                };
                wanted.insert(DeviceAddress { device: interface.clone(), address: vip.address });
                let mut result = Ok(());
                if configured_interfaces.insert(interface.clone()) {
                    result = director_sysctls(changes, &self.sysctls, director, &interface);
                }
                if result.is_ok() && held.as_deref() != Some(interface.as_str()) {
                    result = address::take_vip(changes, &interface, vip.address);
                }
                if let Err(e) = result {
                    fail(&format!("director VIP {} on {interface}", vip.address), e);
                }
            }
            let full_nat = full_nat_destinations(director);
            let result = if full_nat.is_empty() {
                nat::remove_masquerade(changes)
            } else {
                nat::set_masquerade(changes, &full_nat)
            };
            if let Err(e) = result {
                fail("FullNAT masquerade", e);
            }
        }
        for stale in changes.addresses.clone().into_iter().filter(|a| !wanted.contains(a)) {
            if let Err(e) = address::remove_address(changes, &stale.device, stale.address) {
                fail(&format!("removing {} from {}", stale.address, stale.device), e);
            }
        }
        let wants_nothing =
            spec.director.is_none() && spec.real_server.as_ref().is_none_or(|r| r.vips.is_empty());
        if wants_nothing
            && !changes.is_empty()
            && let Err(e) = changes.undo(&self.sysctls)
        {
            fail("restoring the host", e);
        }
    }

    fn save(&self) -> Result<()> {
        // Write then rename, so a crash never leaves half a state file.
        let partial = self.state_file.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_vec_pretty(&self.state)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &self.state_file)
            .with_context(|| format!("writing {}", self.state_file.display()))
    }
}

/// The director's sysctls for `interface`, by how it forwards.
fn director_sysctls(
    changes: &mut HostChanges,
    sysctls: &Sysctls,
    director: &DirectorState,
    interface: &str,
) -> Result<()> {
    let forwarding = match (director.full_nat_masquerade, director.ip_forward) {
        (true, _) => sysctl::Forwarding::FullNat,
        (false, true) => sysctl::Forwarding::Nat,
        (false, false) => sysctl::Forwarding::DirectRouting,
    };
    sysctls.apply(changes, &sysctl::director(forwarding, interface, sysctls.kernel_version()?))
}

/// The real servers of FullNAT services, which the director masquerades to.
fn full_nat_destinations(director: &DirectorState) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = director
        .services
        .iter()
        .flat_map(|s| &s.destinations)
        .filter(|d| d.forwarding == Forwarding::FullNat)
        .map(|d| IpNet::from(d.address))
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

/// The time since the UNIX epoch, as drains are recorded.
pub fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
