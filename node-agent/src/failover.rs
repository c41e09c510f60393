//! What a director does when VRRP moves a VIP: the IPVS connection sync daemon
//! follows the VRRP state, master where this node holds a VIP and backup where
//! it does not, so the connections a master forwards are known to the backups
//! that may take over (the rules themselves stay programmed everywhere: hot
//! standby).

use lvs_crds::lvs_node::ConnectionSync;

use crate::ipvs::{IpvsOp, SyncDaemon, SyncState};

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
