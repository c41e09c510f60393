//! The event loop on in-memory seams: each test feeds inputs and checks the
//! kernel and host operations that result.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lvs_crds::lvs_node::LvsNodeSpec;
use lvs_health::HealthChange;
use lvs_ipvs::{BatchReport, IpvsError, IpvsOp, ServiceKey, SyncDaemon, ipvsadm::op_rule};
use lvs_vrrp::{AddressFamily, InstanceConfig, VrrpState};

use super::{InboxSender, Input, Sink, Supervisor, Why, inbox};
use crate::{
    engine::{Changed, Engine, Failure, FailureError, Round, Scope, Subject},
    failover::Transition,
    host::{DeviceAddress, DeviceRoute, GuePort, HostChanges, HostError, sysctl::Forwarding},
    reconcile::{KernelTable, ObservedService, apply_to_table},
    seams::{Dumper, Host, Kernel},
    standalone::{Role, local_state},
};

/// The kernel's table in memory; every operation recorded as an ipvsadm line.
/// A dump can be held (`hold_dumps`) until released, as a slow dump would be.
#[derive(Clone, Default)]
struct FakeKernel {
    state: Arc<Mutex<KernelState>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

#[derive(Default)]
struct KernelState {
    table: KernelTable,
    ops: Vec<String>,
    daemons: Vec<SyncDaemon>,
}

#[derive(Default)]
struct Gate {
    hold: bool,
    waiting: usize,
}

impl FakeKernel {
    fn ops(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().ops)
    }

    /// Each destination in the table, as `service destination weight`.
    fn rules(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let destinations = state.table.iter().flat_map(|(key, service)| {
            service
                .destinations
                .iter()
                .map(move |d| format!("{key} {} {}", d.destination.address, d.destination.weight))
        });
        destinations.collect()
    }

    fn hold_dumps(&self, hold: bool) {
        let (gate, released) = &*self.gate;
        gate.lock().unwrap().hold = hold;
        released.notify_all();
    }

    /// Waits until a dump is held.
    fn wait_for_held_dump(&self) {
        let (gate, changed) = &*self.gate;
        let gate = gate.lock().unwrap();
        let (gate, timeout) =
            changed.wait_timeout_while(gate, Duration::from_secs(5), |gate| gate.waiting == 0).unwrap();
        drop(gate);
        assert!(!timeout.timed_out(), "no resync dump started");
    }

    fn dump_now(&self) -> KernelTable {
        let (gate, changed) = &*self.gate;
        let mut held = gate.lock().unwrap();
        held.waiting += 1;
        changed.notify_all();
        held = changed.wait_while(held, |gate| gate.hold).unwrap();
        held.waiting -= 1;
        drop(held);
        self.state.lock().unwrap().table.clone()
    }
}

impl Kernel for FakeKernel {
    fn apply(&self, ops: &[IpvsOp]) -> BatchReport {
        let mut state = self.state.lock().unwrap();
        for op in ops {
            match op {
                IpvsOp::StartSyncDaemon(daemon) => state.daemons.push(daemon.clone()),
                IpvsOp::StopSyncDaemon(role) => state.daemons.retain(|d| d.state != *role),
                _ => {}
            }
            let rule = match op {
                IpvsOp::StartSyncDaemon(_) | IpvsOp::StopSyncDaemon(_) => op.to_string(),
                _ => op_rule(op),
            };
            state.ops.push(rule);
        }
        apply_to_table(&mut state.table, ops);
        BatchReport { requests: ops.len(), failures: Vec::new() }
    }

    fn dump(&self) -> Result<KernelTable, IpvsError> {
        Ok(self.state.lock().unwrap().table.clone())
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<ObservedService>, IpvsError> {
        Ok(self.state.lock().unwrap().table.get(key).cloned())
    }

    fn sync_daemons(&self) -> Result<Vec<SyncDaemon>, IpvsError> {
        Ok(self.state.lock().unwrap().daemons.clone())
    }

    fn dumper(&self) -> Result<Arc<dyn Dumper>, IpvsError> {
        Ok(Arc::new(self.clone()))
    }
}

impl Dumper for FakeKernel {
    fn dump(&self) -> Result<KernelTable, IpvsError> {
        Ok(self.dump_now())
    }
}

/// The host in memory: every route to `eth0`; each change recorded as a line.
#[derive(Clone, Default)]
struct FakeHost {
    ops: Arc<Mutex<Vec<String>>>,
    /// Addresses present, as the host would list them.
    addresses: Arc<Mutex<BTreeSet<DeviceAddress>>>,
    /// While set, taking VIPs loses the kernel's answers (`ENOBUFS`): each
    /// VIP's outcome is unknown, and none is added.
    lose_answers: Arc<Mutex<bool>>,
}

impl FakeHost {
    fn ops(&self) -> Vec<String> {
        std::mem::take(&mut *self.ops.lock().unwrap())
    }

    fn record(&self, op: String) {
        self.ops.lock().unwrap().push(op);
    }
}

impl Host for FakeHost {
    fn local_addresses(&self) -> Result<Vec<DeviceAddress>, HostError> {
        Ok(self.addresses.lock().unwrap().iter().cloned().collect())
    }

    fn route_devices(&self, addresses: &[IpAddr]) -> Vec<Result<String, HostError>> {
        addresses.iter().map(|_| Ok("eth0".to_string())).collect()
    }

    fn configure_real_server(
        &self,
        _: &mut HostChanges,
        vips: &[lvs_crds::lvs_node::RealServerVip],
    ) -> Vec<(IpAddr, HostError)> {
        for vip in vips {
            self.record(format!("real server VIP {}", vip.address));
        }
        Vec::new()
    }

    fn close_unused_gue_ports(
        &self,
        _: &mut HostChanges,
        _: &[lvs_crds::lvs_node::RealServerVip],
    ) -> Vec<(GuePort, HostError)> {
        Vec::new()
    }

    fn director_sysctls(
        &self,
        changes: &mut HostChanges,
        forwarding: Forwarding,
        interface: &str,
    ) -> Result<(), HostError> {
        // Set once: the real ones are written only when they differ.
        if changes.sysctls.insert(format!("{interface} {forwarding:?}"), String::new()).is_none() {
            self.record(format!("director sysctls {forwarding:?} on {interface}"));
        }
        Ok(())
    }

    fn add_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> (Vec<DeviceRoute>, Vec<(DeviceRoute, HostError)>) {
        let added: Vec<DeviceRoute> =
            routes.iter().filter(|r| changes.routes.insert((*r).clone())).cloned().collect();
        for route in &added {
            self.record(format!("add route {} on {}", route.block, route.device));
        }
        (added, Vec::new())
    }

    fn remove_routes(
        &self,
        changes: &mut HostChanges,
        routes: &[DeviceRoute],
    ) -> Vec<(DeviceRoute, HostError)> {
        for route in routes {
            if changes.routes.remove(route) {
                self.record(format!("remove route {} on {}", route.block, route.device));
            }
        }
        Vec::new()
    }

    fn announce(&self, vips: &[DeviceAddress]) -> Vec<(DeviceAddress, HostError)> {
        for vip in vips {
            self.record(format!("announce {} on {}", vip.address, vip.device));
        }
        Vec::new()
    }

    fn take_vips(
        &self,
        changes: &mut HostChanges,
        vips: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        if *self.lose_answers.lock().unwrap() {
            let lost = HostError::new("sending", crate::host::Cause::Lost);
            return vips.iter().map(|vip| (vip.clone(), lost.clone())).collect();
        }
        for vip in vips {
            if self.addresses.lock().unwrap().insert(vip.clone()) {
                changes.addresses.insert(vip.clone());
                self.record(format!("add {} on {}", vip.address, vip.device));
            }
            self.record(format!("announce {} on {}", vip.address, vip.device));
        }
        Vec::new()
    }

    fn remove_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        for address in addresses {
            if changes.addresses.remove(address) && self.addresses.lock().unwrap().remove(address) {
                self.record(format!("remove {} on {}", address.address, address.device));
            }
        }
        Vec::new()
    }

    fn masquerade(&self, _: &mut HostChanges, real_servers: &[IpAddr]) -> Result<(), HostError> {
        if !real_servers.is_empty() {
            self.record(format!("masquerade {real_servers:?}"));
        }
        Ok(())
    }

    fn restore(&self, changes: &mut HostChanges) -> Result<(), HostError> {
        *changes = HostChanges::default();
        self.record("restore".into());
        Ok(())
    }
}

/// The rounds the loop reports, as they come.
struct Rounds(mpsc::Sender<(Why, Vec<String>, usize)>);

impl Sink<Arc<LvsNodeSpec>> for Rounds {
    fn round(&mut self, why: Why, _: &Arc<LvsNodeSpec>, round: Round, _: &Supervisor) -> bool {
        self.0.send((why, round.applied, round.failures.len())).is_ok()
    }
}

/// A director's desired state: one service, TCP 192.0.2.100:80, wrr, to
/// 198.51.100.1 (weight `weight`) and 198.51.100.2 (weight 1), or to the first
/// alone; `extra` goes into the VirtualService's spec.
fn spec(weight: u32, both: bool, extra: &str) -> Arc<LvsNodeSpec> {
    let second = if both { ", {address: 198.51.100.2, weight: 1}" } else { "" };
    let yaml = format!(
        "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  vip: 192.0.2.100\n  port: 80\n  scheduler: wrr\n  forwarding: DirectRouting\n  \
         realServers: [{{address: 198.51.100.1, weight: {weight}}}{second}]\n{extra}"
    );
    let vs = lvs_crds::yaml::from_str(&yaml).unwrap();
    let (spec, _) = local_state(&[vs], "director1", &[], Role::Director);
    Arc::new(spec)
}

const SERVICE: &str = "192.0.2.100:80";

struct Lab {
    kernel: FakeKernel,
    host: FakeHost,
    inputs: InboxSender<Arc<LvsNodeSpec>>,
    rounds: mpsc::Receiver<(Why, Vec<String>, usize)>,
    agent: Option<JoinHandle<()>>,
    _runtime: tokio::runtime::Runtime,
    state_dir: PathBuf,
}

impl Lab {
    /// The loop running on the fakes with `first` as its first desired state;
    /// returns once its startup round is in.
    fn start(name: &str, first: Arc<LvsNodeSpec>, resync: Duration) -> Lab {
        Self::start_on(name, first, resync, FakeKernel::default())
    }

    /// The same on a kernel that already holds something.
    fn start_on(name: &str, first: Arc<LvsNodeSpec>, resync: Duration, kernel: FakeKernel) -> Lab {
        let host = FakeHost::default();
        let state_dir = std::env::temp_dir().join(format!("lvs-agent-loop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let engine =
            Engine::with(Box::new(kernel.clone()), Box::new(host.clone()), &state_dir, false).unwrap();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (inputs, receiver) = inbox();
        let agent = Supervisor::new(engine, runtime.handle().clone(), &inputs);
        let (rounds_tx, rounds) = mpsc::channel();
        let none_yet = Arc::new(LvsNodeSpec::default());
        let thread =
            std::thread::spawn(move || agent.run(none_yet, &receiver, &mut Rounds(rounds_tx), resync));
        inputs.send(Input::Desired(first)).unwrap();
        let lab = Lab { kernel, host, inputs, rounds, agent: Some(thread), _runtime: runtime, state_dir };
        let (why, _, failures) = lab.next_round();
        assert_eq!((why, failures), (Why::Startup, 0));
        lab
    }

    fn next_round(&self) -> (Why, Vec<String>, usize) {
        self.rounds.recv_timeout(Duration::from_secs(5)).expect("a round")
    }

    /// The next round other than a resync's.
    fn next_change_round(&self) -> (Why, Vec<String>, usize) {
        loop {
            let round = self.next_round();
            if !matches!(round.0, Why::Repaired { .. }) {
                return round;
            }
        }
    }

    fn send(&self, input: Input<Arc<LvsNodeSpec>>) {
        self.inputs.send(input).unwrap();
    }

    fn stop(&mut self) {
        self.send(Input::Stop);
        let agent = self.agent.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !agent.is_finished() {
            assert!(Instant::now() < deadline, "the loop did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        agent.join().unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.agent.is_some() {
            let _ = self.inputs.send(Input::Stop);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn startup_programs_the_service_and_holds_the_vip() {
    let lab = Lab::start("startup", spec(2, true, ""), HOUR);
    assert_eq!(
        lab.kernel.ops(),
        [
            format!("-A -t {SERVICE} -s wrr"),
            format!("-a -t {SERVICE} -r 198.51.100.1:80 -g -w 2"),
            format!("-a -t {SERVICE} -r 198.51.100.2:80 -g -w 1"),
        ]
    );
    let host = lab.host.ops();
    assert!(host.contains(&"add 192.0.2.100 on eth0".to_string()), "{host:?}");
}

#[test]
fn a_change_during_a_resync_reaches_the_kernel_at_once_and_stays() {
    let lab = Lab::start("resync", spec(2, true, ""), Duration::from_millis(50));
    lab.kernel.ops();
    lab.host.ops();
    // The resync's dump is under way, and takes as long as the test wants.
    lab.kernel.hold_dumps(true);
    lab.kernel.wait_for_held_dump();
    let sent = Instant::now();
    lab.send(Input::Desired(spec(5, true, "")));
    let (why, applied, failures) = lab.next_change_round();
    assert!(sent.elapsed() < Duration::from_secs(1), "the change waited {:?}", sent.elapsed());
    assert_eq!((why, failures), (Why::Applied, 0));
    let edit = format!("-e -t {SERVICE} -r 198.51.100.1:80 -g -w 5 -x 0 -y 0");
    assert_eq!(applied, [edit.as_str()]);
    assert_eq!(lab.kernel.ops(), [edit.as_str()]);
    // The dump read the table before the change: the resync must not undo it.
    lab.kernel.hold_dumps(false);
    loop {
        let (why, applied, _) = lab.next_round();
        assert!(applied.is_empty(), "the resync changed {applied:?}");
        if why == (Why::Repaired { finished: true }) {
            break;
        }
    }
    assert!(lab.kernel.ops().is_empty());
    assert_eq!(
        lab.kernel.rules(),
        [format!("TCP {SERVICE} 198.51.100.1:80 5"), format!("TCP {SERVICE} 198.51.100.2:80 1")]
    );
    assert!(lab.host.ops().is_empty(), "the host was already as wanted");
}

#[test]
fn a_drain_falling_due_removes_the_destination() {
    // The service is there already, with a connection to the destination that leaves.
    let kernel = FakeKernel::default();
    let first = spec(2, true, "  drainSeconds: 1\n");
    let service = ServiceKey::tcp(SERVICE.parse().unwrap());
    {
        let director = first.director.as_ref().unwrap();
        let desired = crate::desired::desired_services(director);
        let mut ops = vec![IpvsOp::AddService(desired[0].service.clone())];
        ops.extend(desired[0].destinations.iter().map(|d| IpvsOp::AddDestination(service, *d)));
        kernel.apply(&ops);
        let mut state = kernel.state.lock().unwrap();
        let destinations = &mut state.table.get_mut(&service).unwrap().destinations;
        destinations.iter_mut().for_each(|d| d.active_connections = 1);
    }
    let lab = Lab::start_on("drain", first, HOUR, kernel);
    lab.host.ops();
    assert_eq!(lab.kernel.ops().len(), 3, "only the service added before");
    lab.send(Input::Desired(spec(2, false, "  drainSeconds: 1\n")));
    // The destination left: weight 0 while its connections drain.
    let (why, applied, _) = lab.next_change_round();
    assert_eq!(why, Why::Applied);
    assert_eq!(applied, [format!("-e -t {SERVICE} -r 198.51.100.2:80 -g -w 0 -x 0 -y 0")]);
    lab.kernel.ops();
    let left = Instant::now();
    let (why, applied, _) = lab.next_change_round();
    assert_eq!(why, Why::Drained);
    assert!(left.elapsed() >= Duration::from_millis(500), "drained after {:?}", left.elapsed());
    assert_eq!(applied, [format!("-d -t {SERVICE} -r 198.51.100.2:80")]);
    assert_eq!(lab.kernel.ops(), [format!("-d -t {SERVICE} -r 198.51.100.2:80")]);
    assert!(lab.host.ops().is_empty());
}

/// The cache is read at startup, with no connections; a client connects
/// afterwards. Removing its real server must drain it, not cut it: the plan is
/// made on the kernel's counts.
#[test]
fn a_connection_made_after_the_last_reading_is_drained_not_cut() {
    let lab = Lab::start("fresh-counts", spec(2, true, "  drainSeconds: 30\n"), HOUR);
    lab.kernel.ops();
    lab.host.ops();
    let service = ServiceKey::tcp(SERVICE.parse().unwrap());
    {
        let mut state = lab.kernel.state.lock().unwrap();
        let destinations = &mut state.table.get_mut(&service).unwrap().destinations;
        destinations.iter_mut().for_each(|d| d.active_connections = 1);
    }
    lab.send(Input::Desired(spec(2, false, "  drainSeconds: 30\n")));
    let (why, applied, _) = lab.next_change_round();
    assert_eq!(why, Why::Applied);
    assert_eq!(applied, [format!("-e -t {SERVICE} -r 198.51.100.2:80 -g -w 0 -x 0 -y 0")]);
    // Idle in the kernel: deleted at once (nothing to drain).
    let lab = Lab::start("fresh-idle", spec(2, true, "  drainSeconds: 30\n"), HOUR);
    lab.kernel.ops();
    lab.send(Input::Desired(spec(2, false, "  drainSeconds: 30\n")));
    let (_, applied, _) = lab.next_change_round();
    assert_eq!(applied, [format!("-d -t {SERVICE} -r 198.51.100.2:80")]);
}

#[test]
fn a_health_transition_quiesces_and_restores_the_destination() {
    // Checks an hour apart: the checker itself says nothing during the test.
    let check = "  healthCheck: {type: TCP, intervalSeconds: 3600, timeoutSeconds: 1, onFailure: Quiesce}\n";
    let lab = Lab::start("health", spec(2, true, check), HOUR);
    lab.kernel.ops();
    lab.host.ops();
    let service = ServiceKey::tcp(SERVICE.parse().unwrap());
    let change = |healthy| HealthChange {
        service,
        destination: "198.51.100.1:80".parse().unwrap(),
        healthy,
        reason: "test".into(),
    };
    lab.send(Input::Health(change(false)));
    let (why, applied, _) = lab.next_change_round();
    assert_eq!(why, Why::Health);
    assert_eq!(applied, [format!("-e -t {SERVICE} -r 198.51.100.1:80 -g -w 0 -x 0 -y 0")]);
    assert_eq!(lab.kernel.ops(), applied);
    lab.send(Input::Health(change(true)));
    let (why, applied, _) = lab.next_change_round();
    assert_eq!(why, Why::Health);
    assert_eq!(applied, [format!("-e -t {SERVICE} -r 198.51.100.1:80 -g -w 2 -x 0 -y 0")]);
    assert_eq!(lab.kernel.ops(), applied);
    assert!(lab.host.ops().is_empty());
}

fn instance() -> InstanceConfig {
    InstanceConfig {
        interface: "eth1".into(),
        vrid: 51,
        family: AddressFamily::IPv4,
        priority: 100,
        advert_interval: Duration::from_millis(20),
        preempt: true,
        addresses: vec!["192.0.2.200".parse().unwrap()],
    }
}

fn wait_for_host(host: &FakeHost, wanted: &[&str]) -> Duration {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        seen.extend(host.ops());
        if wanted.iter().all(|w| seen.iter().any(|s| s == w)) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("wanted {wanted:?}, the host saw {seen:?}");
}

#[test]
fn vrrp_transitions_take_and_release_the_vips() {
    let lab = Lab::start("vrrp", spec(2, true, ""), HOUR);
    lab.kernel.ops();
    lab.host.ops();
    let transition = |from, to| Input::Vrrp(Transition { instance: instance(), from, to });
    lab.send(transition(VrrpState::Backup, VrrpState::Master));
    wait_for_host(&lab.host, &["add 192.0.2.200 on eth1", "announce 192.0.2.200 on eth1"]);
    lab.send(transition(VrrpState::Master, VrrpState::Backup));
    wait_for_host(&lab.host, &["remove 192.0.2.200 on eth1"]);
    // Starting as a backup keeps a VIP already here for a master down interval
    // (3 adverts and a bit), then gives it up.
    lab.host
        .addresses
        .lock()
        .unwrap()
        .insert(DeviceAddress { device: "eth1".into(), address: "192.0.2.200".parse().unwrap() });
    lab.send(transition(VrrpState::Initialize, VrrpState::Backup));
    let after = wait_for_host(&lab.host, &["remove 192.0.2.200 on eth1"]);
    assert!(after >= Duration::from_millis(100), "released after {after:?}");
    // The IPVS rules stay, as on any backup; no sync daemon is configured.
    assert!(lab.kernel.ops().is_empty());
}

#[test]
fn stop_leaves_the_rules_and_the_vips() {
    let mut lab = Lab::start("stop", spec(2, true, ""), HOUR);
    lab.kernel.ops();
    lab.host.ops();
    lab.stop();
    assert!(lab.kernel.ops().is_empty());
    assert!(lab.host.ops().is_empty());
    assert_eq!(
        lab.kernel.rules(),
        [format!("TCP {SERVICE} 198.51.100.1:80 2"), format!("TCP {SERVICE} 198.51.100.2:80 1")]
    );
    assert!(lab.rounds.try_recv().is_err(), "no round after the stop");
}

/// The engine goes by the source's word on the host part: a change it says is
/// of services alone leaves the host (thousands of VIPs) unread, except for
/// FullNAT's masquerade, which follows the services.
#[test]
fn a_change_of_services_alone_leaves_the_host_part_unread() {
    let host = FakeHost::default();
    let state_dir = std::env::temp_dir().join(format!("lvs-agent-loop-told-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut engine =
        Engine::with(Box::new(FakeKernel::default()), Box::new(host.clone()), &state_dir, false).unwrap();
    let key = ServiceKey::tcp(SERVICE.parse().unwrap());
    let changed = |host| Scope::Changed(Changed { services: [key].into(), host });
    engine.reconcile(&spec(2, true, ""), Scope::Full);
    assert!(host.ops().contains(&"add 192.0.2.100 on eth0".to_string()));

    // Another VIP, told as services alone: the host is not looked at.
    let mut moved_vip = spec(3, true, "").as_ref().clone();
    moved_vip.director.as_mut().unwrap().vips[0].address = "192.0.2.101".parse().unwrap();
    let round = engine.reconcile(&moved_vip, changed(false));
    assert_eq!(round.failures.len(), 0);
    assert!(host.ops().is_empty());
    // Told that the host part may have changed, it is configured.
    engine.reconcile(&moved_vip, changed(true));
    assert!(host.ops().contains(&"add 192.0.2.101 on eth0".to_string()));

    // FullNAT's destinations come with the services: a change of services
    // alone masquerades the new one.
    let mut full_nat = moved_vip.clone();
    let director = full_nat.director.as_mut().unwrap();
    director.full_nat_masquerade = true;
    engine.reconcile(&full_nat, changed(true));
    host.ops();
    let service = Arc::make_mut(&mut full_nat.director.as_mut().unwrap().services[0]);
    for destination in &mut service.destinations {
        destination.forwarding = lvs_crds::virtual_service::Forwarding::FullNat;
    }
    engine.reconcile(&full_nat, changed(false));
    let ops = host.ops();
    assert!(ops.iter().any(|op| op.starts_with("masquerade [198.51.100.1")), "{ops:?}");
    std::fs::remove_dir_all(&state_dir).unwrap();
}

/// A host batch whose answers were lost (`ENOBUFS`) is a failure of unknown
/// outcome: reported, and the next round reads the host again and configures
/// it, even one that changes services alone; once that succeeded, such rounds
/// leave the host unread again.
#[test]
fn lost_host_answers_make_the_next_round_read_the_host_again() {
    let host = FakeHost::default();
    let state_dir = std::env::temp_dir().join(format!("lvs-agent-loop-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut engine =
        Engine::with(Box::new(FakeKernel::default()), Box::new(host.clone()), &state_dir, false).unwrap();
    let key = ServiceKey::tcp(SERVICE.parse().unwrap());
    let services_alone = || Scope::Changed(Changed { services: [key].into(), host: false });

    *host.lose_answers.lock().unwrap() = true;
    let round = engine.reconcile(&spec(2, true, ""), Scope::Full);
    let lost: Vec<&Failure> = round.failures.iter().collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].subject, Subject::DirectorVip("192.0.2.100".parse().unwrap()));
    assert!(matches!(&lost[0].error, FailureError::Host(e) if e.outcome_unknown()));
    assert!(!host.ops().contains(&"add 192.0.2.100 on eth0".to_string()));

    // A change of services alone: the host is read and configured again.
    *host.lose_answers.lock().unwrap() = false;
    let round = engine.reconcile(&spec(3, true, ""), services_alone());
    assert_eq!(round.failures.len(), 0, "{:?}", round.failures);
    assert!(host.ops().contains(&"add 192.0.2.100 on eth0".to_string()));
    // Known again: the next such change leaves the host unread.
    engine.reconcile(&spec(4, true, ""), services_alone());
    assert!(host.ops().is_empty());
    std::fs::remove_dir_all(&state_dir).unwrap();
}

/// A state file that cannot be trusted (empty, truncated, corrupt, of a later
/// format) does not stop the agent: it is set aside, the agent starts owning
/// nothing, adopts what is desired (the service, the VIP in place), leaves the
/// rest and names it. A missing file is a first start: nothing to report, and
/// an address in place stays someone else's.
#[test]
fn a_state_file_that_cannot_be_trusted_is_set_aside_and_nothing_unproven_is_deleted() {
    let desired = spec(2, true, "");
    let service = ServiceKey::tcp(SERVICE.parse().unwrap());
    let foreign = ServiceKey::tcp("192.0.2.200:80".parse().unwrap());
    let valid = br#"{"version":1,"owned":[],"drains":[],"host":{}}"#;
    let cases: [(&str, Option<&[u8]>); 5] = [
        ("missing", None),
        ("empty", Some(b"")),
        ("truncated", Some(&valid[..valid.len() / 2])),
        ("corrupt", Some(b"\x00\xffnot json at all")),
        ("newer", Some(br#"{"version":2,"owned":[],"layout":"of the future"}"#)),
    ];
    for (case, content) in cases {
        let state_dir = std::env::temp_dir().join(format!("lvs-agent-state-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).unwrap();
        let state_file = state_dir.join("state.json");
        if let Some(content) = content {
            std::fs::write(&state_file, content).unwrap();
        }
        // The kernel holds the desired service (another weight) and a foreign
        // one; the host holds the VIP already.
        let kernel = FakeKernel::default();
        let in_kernel = crate::desired::desired_services(desired.director.as_ref().unwrap());
        let mut other = in_kernel[0].service.clone();
        other.key = foreign;
        let mut ops = vec![IpvsOp::AddService(in_kernel[0].service.clone()), IpvsOp::AddService(other)];
        ops.extend(
            in_kernel[0]
                .destinations
                .iter()
                .map(|d| IpvsOp::AddDestination(service, lvs_ipvs::Destination { weight: 9, ..*d })),
        );
        kernel.apply(&ops);
        kernel.ops();
        let host = FakeHost::default();
        let vip = DeviceAddress { device: "eth0".into(), address: "192.0.2.100".parse().unwrap() };
        host.addresses.lock().unwrap().insert(vip.clone());

        let mut engine =
            Engine::with(Box::new(kernel.clone()), Box::new(host.clone()), &state_dir, false).unwrap();
        let round = engine.reconcile(&desired, Scope::Full);
        let ops = kernel.ops();
        assert!(ops.iter().all(|op| op.starts_with(&format!("-e -t {SERVICE}"))), "{case}: {ops:?}");
        assert_eq!(ops.len(), 2, "{case}: both destinations adopted at weight 2 and 1: {ops:?}");
        let named: Vec<String> = round.failures.iter().map(ToString::to_string).collect();
        let untrusted = content.is_some();
        assert_eq!(
            round.failures.iter().any(|f| f.subject == Subject::Service(foreign)),
            untrusted,
            "{case}: {named:?}"
        );
        assert_eq!(round.failures.len(), if untrusted { 2 } else { 0 }, "{case}: {named:?}");
        assert_eq!(std::fs::exists(state_dir.join("state.json.untrusted")).unwrap(), untrusted, "{case}");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
        assert_eq!(written["version"], 1, "{case}");

        // Nothing desired any more: the adopted service goes, the foreign one
        // stays; the VIP goes only where it was adopted.
        host.ops();
        engine.reconcile(&LvsNodeSpec::default(), Scope::Full);
        assert_eq!(kernel.ops(), [format!("-D -t {SERVICE}")], "{case}");
        let removed = host.ops().contains(&"remove 192.0.2.100 on eth0".to_string());
        assert_eq!(removed, untrusted, "{case}");
        std::fs::remove_dir_all(&state_dir).unwrap();
    }
}

/// A round that changes the host writes a mark first and clears it with its
/// own write: an agent killed in between (the chaos run's early kills) finds
/// the mark at its next start and adopts what is in place of the desired host
/// part, which it made but could not record; so emptying removes it. Without
/// the mark, a VIP already in place is someone else's and stays.
#[test]
fn a_kill_while_changing_the_host_leaves_a_mark_that_makes_the_restart_adopt() {
    let desired = spec(2, true, "");
    for (case, marked) in [("marked", true), ("clean", false)] {
        let state_dir = std::env::temp_dir().join(format!("lvs-agent-mark-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).unwrap();
        let state_file = state_dir.join("state.json");
        let mark = if marked { r#","changing_host":true"# } else { "" };
        std::fs::write(&state_file, format!(r#"{{"version":1,"owned":[],"drains":[],"host":{{}}{mark}}}"#))
            .unwrap();
        // The host holds the VIP: the killed run had taken it.
        let host = FakeHost::default();
        let vip = DeviceAddress { device: "eth0".into(), address: "192.0.2.100".parse().unwrap() };
        host.addresses.lock().unwrap().insert(vip);
        let kernel = FakeKernel::default();
        let mut engine =
            Engine::with(Box::new(kernel.clone()), Box::new(host.clone()), &state_dir, false).unwrap();
        let round = engine.reconcile(&desired, Scope::Full);
        assert!(round.failures.is_empty(), "{case}: {:?}", round.failures);
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
        assert!(written.get("changing_host").is_none(), "{case}: the round's own write clears the mark");

        host.ops();
        engine.reconcile(&LvsNodeSpec::default(), Scope::Full);
        let removed = host.ops().contains(&"remove 192.0.2.100 on eth0".to_string());
        assert_eq!(removed, marked, "{case}");
        std::fs::remove_dir_all(&state_dir).unwrap();
    }
}
