//! What a director does when VRRP moves its VIPs ([`Failover`]): a new master
//! adds the VIPs to the instance's interface and announces them (gratuitous
//! ARP, unsolicited NA); a backup removes them. The IPVS connection sync daemon
//! follows: master where this node holds a VIP, backup where it does not, so the
//! connections a master forwards are known to the backups that may take over.
//! The IPVS rules stay programmed everywhere (hot standby).
//!
//! The VRRP router's hooks ([`FailoverHooks`]) only pass each transition on, as
//! an input of the agent's loop ([`crate::supervisor`]), which acts on it
//! through the engine's seams.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use lvs_crds::lvs_node::{ConnectionSync, DirectorState, DirectorVip};

use crate::{
    convert,
    host::{DeviceAddress, HostChanges},
    seams::{Host, Kernel},
};
use lvs_ipvs::{IpvsOp, SyncDaemon, SyncState};
use lvs_vrrp::{Hooks, InstanceConfig, InstanceKey, VrrpState};

/// A VRRP transition of one instance, as the router reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub instance: InstanceConfig,
    pub from: VrrpState,
    pub to: VrrpState,
}

/// The router's [`Hooks`]: each transition goes to `send` (the agent's loop).
pub struct FailoverHooks<F> {
    send: F,
}

impl<F: Fn(Transition) + Send + Sync + 'static> FailoverHooks<F> {
    pub fn hooks(send: F) -> Arc<dyn Hooks> {
        Arc::new(FailoverHooks { send })
    }
}

impl<F: Fn(Transition) + Send + Sync + 'static> Hooks for FailoverHooks<F> {
    fn transition(&self, instance: &InstanceConfig, from: VrrpState, to: VrrpState) {
        (self.send)(Transition { instance: instance.clone(), from, to });
    }
}

/// The VIPs and the sync daemon as VRRP moves them.
#[derive(Debug, Default)]
pub struct Failover {
    /// Instances this node is master of.
    masters: BTreeSet<InstanceKey>,
    /// The director's connection sync, if any, with the interface to use.
    sync: Option<ConnectionSync>,
    /// Instances that started as backups while their VIPs may still be here
    /// (held before a restart): released when due unless master by then.
    releases: Vec<(Instant, InstanceConfig)>,
}

impl Failover {
    /// Sets the connection sync of the director (`None`: no sync daemon is
    /// touched) and brings the daemons in line with the current role.
    pub fn set_sync(&mut self, kernel: &dyn Kernel, sync: Option<ConnectionSync>) -> Result<(), String> {
        self.sync = sync;
        self.switch_sync_daemon(kernel)
    }

    /// Acts on a transition: takes or releases the instance's VIPs, switches the
    /// sync daemon. Returns what failed, each naming its object.
    pub fn transition(
        &mut self,
        host: &dyn Host,
        kernel: &dyn Kernel,
        transition: &Transition,
        now: Instant,
    ) -> Vec<String> {
        let Transition { instance, from, to } = transition;
        let mut failures = Vec::new();
        if *to == VrrpState::Master {
            self.masters.insert(instance.key());
            self.releases.retain(|(_, pending)| pending.key() != instance.key());
            failures.extend(take(host, instance));
        } else {
            self.masters.remove(&instance.key());
            if *from == VrrpState::Initialize && *to == VrrpState::Backup {
                // Starting up: a VIP still here was held by this node before a
                // restart. Keep serving it while no other master shows up; if
                // this node is not master after a master down interval, another
                // one is, and the VIP goes.
                let due = now + master_down_interval(instance) + Duration::from_millis(100);
                self.releases.push((due, instance.clone()));
            } else {
                failures.extend(release(host, instance));
            }
        }
        if let Err(e) = self.switch_sync_daemon(kernel) {
            failures.push(e);
        }
        failures
    }

    /// When the next delayed release falls due.
    pub fn next_release(&self) -> Option<Instant> {
        self.releases.iter().map(|(due, _)| *due).min()
    }

    /// Releases the VIPs of the instances whose delayed release is due (and
    /// that did not become master meanwhile). Returns what failed.
    pub fn release_due(&mut self, host: &dyn Host, now: Instant) -> Vec<String> {
        let (due, waiting) = std::mem::take(&mut self.releases).into_iter().partition(|(at, _)| *at <= now);
        self.releases = waiting;
        let due: Vec<(Instant, InstanceConfig)> = due;
        due.iter()
            .filter(|(_, instance)| !self.masters.contains(&instance.key()))
            .flat_map(|(_, instance)| release(host, instance))
            .collect()
    }

    fn switch_sync_daemon(&self, kernel: &dyn Kernel) -> Result<(), String> {
        let Some(sync) = &self.sync else { return Ok(()) };
        let role = sync_role(self.masters.len());
        let running = kernel.sync_daemons().map_err(|e| e.to_string())?;
        let ops = sync_daemon_ops(&running, Some((role, sync)));
        if ops.is_empty() {
            return Ok(());
        }
        kernel.apply(&ops).into_result().map(drop).map_err(|e| e.to_string())
    }
}

/// The VRRP instances of `director` and its connection sync: VIPs without an
/// interface go where `host` routes them, and a sync daemon without one uses
/// the first instance's.
pub fn settings(
    director: &DirectorState,
    host: &dyn Host,
) -> Result<(Vec<InstanceConfig>, Option<ConnectionSync>), String> {
    let unrouted: Vec<&DirectorVip> =
        director.vips.iter().filter(|v| v.vrrp.is_some() && v.interface.is_none()).collect();
    let routes = if unrouted.is_empty() {
        Vec::new()
    } else {
        host.route_devices(&unrouted.iter().map(|v| v.address).collect::<Vec<_>>())
    };
    let interface_of = |vip: &DirectorVip| {
        let index = unrouted.iter().position(|v| *v == vip)?;
        routes.get(index)?.as_ref().ok().cloned()
    };
    let instances = convert::vrrp_instances(director, interface_of).map_err(|e| format!("VRRP: {e}"))?;
    let sync = director.connection_sync.clone().and_then(|mut sync| {
        if sync.interface.is_empty() {
            sync.interface = instances.first()?.interface.clone();
        }
        Some(sync)
    });
    Ok((instances, sync))
}

/// RFC 5798's Master_Down_Interval for an instance that has heard no master yet.
fn master_down_interval(instance: &InstanceConfig) -> Duration {
    let advert = instance.advert_interval;
    3 * advert + advert * (256 - u32::from(instance.priority)) / 256
}

fn vips(instance: &InstanceConfig) -> Vec<DeviceAddress> {
    instance
        .addresses
        .iter()
        .map(|address| DeviceAddress { device: instance.interface.clone(), address: *address })
        .collect()
}

/// Adds and announces the instance's VIPs (not recorded in the agent's state:
/// they are VRRP's, whoever holds them).
fn take(host: &dyn Host, instance: &InstanceConfig) -> Vec<String> {
    let failures = host.take_vips(&mut HostChanges::default(), &vips(instance));
    failures
        .into_iter()
        .map(|(vip, e)| format!("taking VIP {} on {}: {e:#}", vip.address, vip.device))
        .collect()
}

/// Removes the instance's VIPs. They are the instance's whoever added them (a
/// previous run of the agent, before a crash), so they are removed as owned.
fn release(host: &dyn Host, instance: &InstanceConfig) -> Vec<String> {
    let vips = vips(instance);
    let mut owned = HostChanges::default();
    owned.addresses.extend(vips.iter().cloned());
    let failures = host.remove_addresses(&mut owned, &vips);
    failures
        .into_iter()
        .map(|(vip, e)| format!("releasing VIP {} on {}: {e:#}", vip.address, vip.device))
        .collect()
}

/// The operations that leave exactly the `wanted` sync daemon running, from the
/// `running` ones: the other role's daemon is stopped first, a daemon of the
/// wanted role with other parameters is restarted. Without connection sync
/// nothing is touched (the daemons may be someone else's).
pub fn sync_daemon_ops(running: &[SyncDaemon], wanted: Option<(SyncState, &ConnectionSync)>) -> Vec<IpvsOp> {
    let Some((state, sync)) = wanted else { return vec![] };
    let desired = SyncDaemon::new(state, sync.interface.clone(), sync.sync_id.into());
    let mut ops = Vec::new();
    let mut running_desired = false;
    for daemon in running {
        let same = daemon.state == desired.state
            && daemon.interface == desired.interface
            && daemon.sync_id == desired.sync_id;
        if same {
            running_desired = true;
        } else {
            ops.push(IpvsOp::StopSyncDaemon(daemon.state));
        }
    }
    if !running_desired {
        ops.push(IpvsOp::StartSyncDaemon(desired));
    }
    ops
}

/// The sync role of a node: master while it is VRRP master of any VIP.
pub fn sync_role(masters: usize) -> SyncState {
    if masters > 0 { SyncState::Master } else { SyncState::Backup }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync() -> ConnectionSync {
        ConnectionSync { interface: "eth0".into(), sync_id: 51 }
    }

    fn rules(ops: &[IpvsOp]) -> Vec<String> {
        ops.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_new_master_stops_its_backup_daemon_and_starts_a_master() {
        let running = [SyncDaemon::new(SyncState::Backup, "eth0", 51)];
        assert_eq!(
            rules(&sync_daemon_ops(&running, Some((SyncState::Master, &sync())))),
            ["stop backup sync daemon", "start master sync daemon on eth0"]
        );
    }

    #[test]
    fn a_running_daemon_as_wanted_is_left_alone() {
        let running = [SyncDaemon::new(SyncState::Backup, "eth0", 51)];
        assert!(sync_daemon_ops(&running, Some((SyncState::Backup, &sync()))).is_empty());
    }

    #[test]
    fn other_parameters_restart_the_daemon() {
        let running = [SyncDaemon::new(SyncState::Master, "eth1", 51)];
        assert_eq!(
            rules(&sync_daemon_ops(&running, Some((SyncState::Master, &sync())))),
            ["stop master sync daemon", "start master sync daemon on eth0"]
        );
    }

    #[test]
    fn without_connection_sync_nothing_is_touched() {
        let running = [SyncDaemon::new(SyncState::Master, "eth0", 1)];
        assert!(sync_daemon_ops(&running, None).is_empty());
    }

    #[test]
    fn master_of_any_vip_is_sync_master() {
        assert_eq!(sync_role(0), SyncState::Backup);
        assert_eq!(sync_role(2), SyncState::Master);
    }
}
