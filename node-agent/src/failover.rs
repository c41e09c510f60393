//! What a director does when VRRP moves its VIPs ([`FailoverHooks`]): a new
//! master adds the VIPs to the instance's interface and announces them
//! (gratuitous ARP, unsolicited NA); a backup removes them. The IPVS connection
//! sync daemon follows: master where this node holds a VIP, backup where it
//! does not, so the connections a master forwards are known to the backups that
//! may take over. The IPVS rules stay programmed everywhere (hot standby).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::Duration,
};

use lvs_crds::lvs_node::ConnectionSync;

use crate::host::{DeviceAddress, HostChanges, address};
use lvs_ipvs::{IpvsHandle, IpvsOp, SyncDaemon, SyncState};
use lvs_vrrp::{Hooks, InstanceConfig, InstanceKey, VrrpState};

/// A VRRP transition, as the agent's loop hears of it (for logs and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub instance: InstanceKey,
    pub addresses: Vec<std::net::IpAddr>,
    pub from: VrrpState,
    pub to: VrrpState,
    /// What failed while acting on it, each naming its object.
    pub failures: Vec<String>,
}

/// The agent's [`Hooks`]: VIPs and sync daemon follow the VRRP states.
pub struct FailoverHooks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Instances this node is master of; also serialises the hooks' host changes.
    masters: Mutex<BTreeSet<InstanceKey>>,
    /// The director's connection sync, if any, with the interface to use.
    sync: Mutex<Option<ConnectionSync>>,
    transitions: mpsc::Sender<Transition>,
}

impl FailoverHooks {
    pub fn new(transitions: mpsc::Sender<Transition>) -> Self {
        let inner = Inner { masters: Mutex::default(), sync: Mutex::default(), transitions };
        FailoverHooks { inner: Arc::new(inner) }
    }

    /// Sets the connection sync of the director (`None`: no sync daemon is
    /// touched) and brings the daemons in line with the current role.
    pub fn set_sync(&self, sync: Option<ConnectionSync>) -> Result<(), String> {
        *self.inner.sync.lock().unwrap_or_else(PoisonError::into_inner) = sync;
        let masters = self.inner.masters.lock().unwrap_or_else(PoisonError::into_inner);
        self.inner.switch_sync_daemon(masters.len())
    }

    /// The hooks to give the VRRP router (they share this value's state).
    pub fn hooks(&self) -> Arc<dyn Hooks> {
        Arc::new(FailoverHooks { inner: Arc::clone(&self.inner) })
    }
}

impl Hooks for FailoverHooks {
    fn transition(&self, instance: &InstanceConfig, from: VrrpState, to: VrrpState) {
        let inner = &self.inner;
        let mut failures = Vec::new();
        {
            let mut masters = inner.masters.lock().unwrap_or_else(PoisonError::into_inner);
            if to == VrrpState::Master {
                masters.insert(instance.key());
                failures.extend(take(instance));
            } else {
                masters.remove(&instance.key());
                if from == VrrpState::Initialize && to == VrrpState::Backup {
                    // Starting up: a VIP still here was held by this node before a
                    // restart. Keep serving it while no other master shows up;
                    // if this node is not master after a master down interval,
                    // another one is, and the VIP goes.
                    let inner = Arc::clone(inner);
                    let instance = instance.clone();
                    let wait = master_down_interval(&instance) + Duration::from_millis(100);
                    std::thread::spawn(move || {
                        std::thread::sleep(wait);
                        let masters = inner.masters.lock().unwrap_or_else(PoisonError::into_inner);
                        if !masters.contains(&instance.key()) {
                            let failures = release(&instance);
                            drop(masters);
                            for failure in failures {
                                eprintln!("lvs-agent: {failure}");
                            }
                        }
                    });
                } else {
                    failures.extend(release(instance));
                }
            }
            if let Err(e) = inner.switch_sync_daemon(masters.len()) {
                failures.push(e);
            }
        }
        let _ = inner.transitions.send(Transition {
            instance: instance.key(),
            addresses: instance.addresses.clone(),
            from,
            to,
            failures,
        });
    }
}

impl Inner {
    fn switch_sync_daemon(&self, masters: usize) -> Result<(), String> {
        let sync = self.sync.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(sync) = sync else { return Ok(()) };
        let role = sync_role(masters);
        let handle = IpvsHandle::connect().map_err(|e| e.to_string())?;
        let running = handle.sync_daemons().map_err(|e| e.to_string())?;
        let ops = sync_daemon_ops(&running, Some((role, &sync)));
        handle.apply_batch(&ops).into_result().map(drop).map_err(|e| e.to_string())
    }
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

/// Adds and announces the instance's VIPs.
fn take(instance: &InstanceConfig) -> Vec<String> {
    let failures = address::take_vips(&mut HostChanges::default(), &vips(instance));
    failures
        .into_iter()
        .map(|(vip, e)| format!("taking VIP {} on {}: {e:#}", vip.address, vip.device))
        .collect()
}

/// Removes the instance's VIPs. They are the instance's whoever added them (a
/// previous run of the agent, before a crash), so they are removed as owned.
fn release(instance: &InstanceConfig) -> Vec<String> {
    let vips = vips(instance);
    let mut owned = HostChanges::default();
    owned.addresses.extend(vips.iter().cloned());
    let failures = address::remove_addresses(&mut owned, &vips);
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
