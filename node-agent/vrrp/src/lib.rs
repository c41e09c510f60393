//! VRRP version 3 (RFC 5798): which director holds which VIPs, decided
//! between the directors themselves, without the Kubernetes API (issue 5).
//! It interoperates with keepalived (`vrrp_version 3`).
//!
//! - `packet`: the advertisement, emitted and parsed;
//! - `state`: the RFC's state machine, pure;
//! - `socket`: raw sockets and the receive checks, with drop counters;
//! - here: [`InstanceConfig`] (one virtual router), [`Hooks`] (what a
//!   transition does to the host) and [`Router`], which runs the instances on a
//!   tokio runtime.
//!
//! One instance per (interface, family, VRID); several VIPs sharing a VRID are
//! one instance advertising all of them, as keepalived does. IPVS rules are
//! not touched here: backups keep them programmed (hot standby).
//!
//! Use:
//! ```no_run
//! # use std::sync::Arc;
//! # use lvs_vrrp::{Hooks, InstanceConfig, Router, VrrpState};
//! struct Vips;
//! impl Hooks for Vips {
//!     fn transition(&self, instance: &InstanceConfig, _from: VrrpState, to: VrrpState) {
//!         // to == Master: add instance.addresses on instance.interface, announce;
//!         // anything else: remove them.
//!     }
//! }
//! # async fn run(instances: Vec<InstanceConfig>) {
//! let mut router = Router::new(tokio::runtime::Handle::current(), Arc::new(Vips));
//! router.set_instances(instances);
//! // ... on every new configuration: set_instances again; on SIGTERM:
//! router.shutdown().await;
//! # }
//! ```

mod packet;
#[cfg(test)]
mod receive_properties;
mod socket;
mod state;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::IpAddr,
    sync::{
        Arc, Condvar, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    runtime::Handle,
    sync::mpsc::{self, UnboundedReceiver, UnboundedSender, error::TrySendError, unbounded_channel},
    task::JoinHandle,
    time::{Instant, interval, sleep, sleep_until},
};

pub use self::{
    packet::{Advertisement, PacketError},
    socket::Drops,
    state::VrrpState,
};
use self::{
    socket::{DropCounters, DropReason, VrrpSocket, check},
    state::{Action, Config, Machine},
};

/// The IP version of an instance: its VIPs and advertisements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    IPv4,
    IPv6,
}

impl AddressFamily {
    /// `IPv4` or `IPv6`, for messages and labels.
    pub fn name(self) -> &'static str {
        match self {
            AddressFamily::IPv4 => "IPv4",
            AddressFamily::IPv6 => "IPv6",
        }
    }
}

impl From<IpAddr> for AddressFamily {
    fn from(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Self::IPv4,
            IpAddr::V6(_) => Self::IPv6,
        }
    }
}

/// How long an instance waits before retrying to open its socket (interface
/// missing or without address), and how often it checks that its interface is
/// still the one its socket is bound to (deleted and recreated: a new index).
const RETRY: Duration = Duration::from_secs(1);

/// Valid adverts waiting for one instance. A real peer sends one per interval;
/// more pile up only under a flood, whose excess is dropped (and counted), so
/// memory stays bounded and the instance's task keeps its pace.
const ADVERT_QUEUE: usize = 64;

/// At most one receive error is logged per this long (per link): a socket
/// failing on every call must not flood the log.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One virtual router this node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub interface: String,
    pub vrid: u8,
    pub family: AddressFamily,
    /// 1-254.
    pub priority: u8,
    /// A multiple of 10 ms, 10 ms to 40.95 s.
    pub advert_interval: Duration,
    pub preempt: bool,
    /// The VIPs, all of `family`, in the order of the LvsNode.
    pub addresses: Vec<IpAddr>,
}

/// What identifies an instance: a VRID is per interface and family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub interface: String,
    pub family: AddressFamily,
    pub vrid: u8,
}

impl InstanceConfig {
    pub fn key(&self) -> InstanceKey {
        InstanceKey { interface: self.interface.clone(), family: self.family, vrid: self.vrid }
    }

    fn machine_config(&self) -> Config {
        Config {
            virtual_router_id: self.vrid,
            priority: self.priority,
            advert_interval: self.advert_interval,
            preempt: self.preempt,
        }
    }

    /// Checks priority, interval and VRID (errors name the instance and value).
    pub fn validate(&self) -> Result<(), String> {
        self.machine_config()
            .validate()
            .map_err(|error| format!("{} on {}: {error}", self.family.name(), self.interface))
    }
}

/// What the host does when an instance changes state.
pub trait Hooks: Send + Sync + 'static {
    /// Called for the transitions of `instance`, one at a time per instance,
    /// on a blocking thread (it may take some milliseconds: the advertisements
    /// go on meanwhile). Transitions made while a call runs are folded into
    /// the next: it goes from the state the last call reported to the latest,
    /// with the latest configuration, so a slow hook never runs stale ones.
    /// `to == Master`: take the addresses and announce them; anything else:
    /// release them. Also called with `from == to == Master` when a Master's
    /// address list changed, with the new list, and when its link came back
    /// (announce again).
    fn transition(&self, instance: &InstanceConfig, from: VrrpState, to: VrrpState);
}

/// Counters of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStats {
    pub key: InstanceKey,
    pub state: VrrpState,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Adverts that could not be sent (interface down, ...).
    pub send_errors: u64,
    pub transitions: u64,
}

/// Counters of a [`Router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub instances: Vec<InstanceStats>,
    /// Received packets dropped, by reason, over all interfaces.
    pub drops: Drops,
}

/// The live state and counters of one instance, shared with its task.
#[derive(Debug)]
struct Status {
    state: Mutex<VrrpState>,
    adverts_sent: AtomicU64,
    adverts_received: AtomicU64,
    send_errors: AtomicU64,
    transitions: AtomicU64,
}

/// A received advertisement, for the instance of its VRID.
type Received = (IpAddr, Advertisement);

/// The queues of the instances of one link, by VRID.
type Routes = Arc<Mutex<HashMap<u8, mpsc::Sender<Received>>>>;

/// A socket shared by the instances of one (interface, family), with the task
/// that receives, checks and dispatches its packets by VRID. Closed when the
/// last instance drops it.
struct Link {
    socket: Arc<VrrpSocket>,
    routes: Routes,
    receiver: JoinHandle<()>,
}

impl Link {
    /// Whether the interface was deleted (and maybe recreated with a new
    /// index) since the socket was bound to it.
    fn is_stale(&self, interface: &str) -> bool {
        nix::net::if_::if_nametoindex(interface).ok() != Some(self.socket.interface_index())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// What the instances of one router share.
#[derive(Default)]
struct Shared {
    drops: Arc<DropCounters>,
    links: Mutex<HashMap<(String, AddressFamily), Weak<Link>>>,
}

impl Shared {
    /// The link of (interface, family), opened if no instance holds it.
    /// Must run inside the runtime.
    fn link(&self, interface: &str, family: AddressFamily) -> io::Result<Arc<Link>> {
        let mut links = self.links.lock().expect("links lock");
        let key = (interface.to_owned(), family);
        if let Some(link) = links.get(&key).and_then(Weak::upgrade)
            && !link.is_stale(interface)
        {
            return Ok(link);
        }
        let socket = Arc::new(VrrpSocket::open(interface, family)?);
        let routes: Routes = Arc::default();
        let receiver = tokio::spawn(receive(socket.clone(), routes.clone(), self.drops.clone()));
        let link = Arc::new(Link { socket, routes, receiver });
        links.insert(key, Arc::downgrade(&link));
        Ok(link)
    }
}

/// Receives, checks and dispatches the packets of one socket, forever.
async fn receive(socket: Arc<VrrpSocket>, routes: Routes, drops: Arc<DropCounters>) {
    let mut last_logged: Option<Instant> = None;
    loop {
        let raw = match socket.receive().await {
            Ok(Ok(raw)) => raw,
            Ok(Err(reason)) => {
                drops.count(reason);
                continue;
            }
            Err(error) => {
                // Not expected on a raw socket (a deleted interface is noticed by
                // its instances); avoid spinning or logging on every call.
                if last_logged.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL) {
                    tracing::warn!(%error, "vrrp: receiving (logged at most once a minute)");
                    last_logged = Some(Instant::now());
                }
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let known = |vrid: u8| routes.lock().expect("routes lock").contains_key(&vrid);
        match check(&raw, socket.own_address(), known) {
            Ok(advert) => {
                let route = routes.lock().expect("routes lock").get(&advert.virtual_router_id).cloned();
                if let Some(route) = route
                    && let Err(TrySendError::Full(_)) = route.try_send((raw.source, advert))
                {
                    drops.count(DropReason::QueueFull);
                }
            }
            Err(reason) => drops.count(reason),
        }
    }
}

enum Command {
    Reconfigure(InstanceConfig),
    Stop,
}

struct Running {
    config: InstanceConfig,
    commands: UnboundedSender<Command>,
    task: JoinHandle<()>,
    status: Arc<Status>,
}

/// Runs VRRP instances on a tokio runtime. Dropping it without
/// [`Router::shutdown`] stops the instances at once, silently, as a crash
/// would (no priority-0 advertisement, no hook).
pub struct Router {
    handle: Handle,
    hooks: Arc<dyn Hooks>,
    shared: Arc<Shared>,
    instances: BTreeMap<InstanceKey, Running>,
    /// Removed instances still giving up their state.
    stopping: Vec<JoinHandle<()>>,
}

impl Router {
    /// A router without instances. Its tasks run on `handle`, whose threads
    /// must be in the network namespace of the interfaces.
    pub fn new(handle: Handle, hooks: Arc<dyn Hooks>) -> Self {
        Router { handle, hooks, shared: Arc::default(), instances: BTreeMap::new(), stopping: Vec::new() }
    }

    /// Runs exactly `instances` (see [`instances`]): new ones start in Backup,
    /// removed ones give up (a Master sends priority 0) and their hook goes to
    /// Initialize, changed ones take the new priority, interval, preemption or
    /// addresses without a state change. Invalid configurations are logged and
    /// skipped.
    pub fn set_instances(&mut self, instances: Vec<InstanceConfig>) {
        let mut wanted = BTreeMap::new();
        for config in instances {
            match config.validate() {
                Ok(()) => {
                    wanted.insert(config.key(), config);
                }
                Err(error) => tracing::error!(%error, "vrrp: skipping an instance"),
            }
        }
        let removed: Vec<InstanceKey> =
            self.instances.keys().filter(|key| !wanted.contains_key(key)).cloned().collect();
        for key in removed {
            if let Some(running) = self.instances.remove(&key) {
                let _ = running.commands.send(Command::Stop);
                self.stopping.push(running.task);
            }
        }
        self.stopping.retain(|task| !task.is_finished());
        for (key, config) in wanted {
            match self.instances.get_mut(&key) {
                Some(running) => {
                    if running.config != config {
                        running.config = config.clone();
                        let _ = running.commands.send(Command::Reconfigure(config));
                    }
                }
                None => {
                    let running = self.start(config);
                    self.instances.insert(key, running);
                }
            }
        }
    }

    fn start(&self, config: InstanceConfig) -> Running {
        let (commands, receiver) = unbounded_channel();
        let status = Arc::new(Status {
            state: Mutex::new(VrrpState::Initialize),
            adverts_sent: AtomicU64::new(0),
            adverts_received: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
        });
        let instance = Instance::new(config.clone(), status.clone());
        let task = self.handle.spawn(instance.run(self.hooks.clone(), self.shared.clone(), receiver));
        Running { config, commands, task, status }
    }

    /// The state of each instance, by key.
    pub fn states(&self) -> Vec<(InstanceKey, VrrpState)> {
        self.instances
            .iter()
            .map(|(key, running)| (key.clone(), *running.status.state.lock().expect("state lock")))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let instances = self
            .instances
            .iter()
            .map(|(key, running)| {
                let status = &running.status;
                InstanceStats {
                    key: key.clone(),
                    state: *status.state.lock().expect("state lock"),
                    adverts_sent: status.adverts_sent.load(Ordering::Relaxed),
                    adverts_received: status.adverts_received.load(Ordering::Relaxed),
                    send_errors: status.send_errors.load(Ordering::Relaxed),
                    transitions: status.transitions.load(Ordering::Relaxed),
                }
            })
            .collect();
        Stats { instances, drops: self.shared.drops.snapshot() }
    }

    /// Stops every instance gracefully: Masters send priority 0, every hook
    /// goes to Initialize; returns when all is done (hooks included).
    pub async fn shutdown(&mut self) {
        let mut tasks = std::mem::take(&mut self.stopping);
        for (_, running) in std::mem::take(&mut self.instances) {
            let _ = running.commands.send(Command::Stop);
            tasks.push(running.task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for running in self.instances.values() {
            running.task.abort();
        }
        for task in &self.stopping {
            task.abort();
        }
    }
}

/// The transition waiting for an instance's hook thread: at most one, the
/// latest (see [`Hooks::transition`]). A bounded slot, not a queue, so that
/// transitions coming faster than the hook runs cost no memory and a real
/// Master -> Backup never waits behind stale ones.
#[derive(Default)]
struct HookSlot {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    /// Where the hooks stand: the `to` of the last transition handed out.
    reported: Option<VrrpState>,
    latest: Option<(InstanceConfig, VrrpState, VrrpState)>,
    closed: bool,
}

impl HookSlot {
    /// Puts a transition in the slot, folding it into the one waiting there.
    fn put(&self, config: InstanceConfig, from: VrrpState, to: VrrpState) {
        let mut pending = self.pending.lock().expect("hook slot lock");
        let from = pending.latest.as_ref().map_or(from, |(_, first_from, _)| *first_from);
        pending.latest = Some((config, from, to));
        drop(pending);
        self.wake.notify_one();
    }

    /// Closes the slot: [`HookSlot::take`] returns what is waiting, then None.
    fn close(&self) {
        self.pending.lock().expect("hook slot lock").closed = true;
        self.wake.notify_one();
    }

    /// The next transition to run, blocking until there is one; None once
    /// closed and empty.
    fn take(&self) -> Option<(InstanceConfig, VrrpState, VrrpState)> {
        let mut pending = self.pending.lock().expect("hook slot lock");
        loop {
            if let Some((config, from, to)) = pending.latest.take() {
                // A transition folded back to where the hooks stand (e.g. Backup
                // -> Master -> Backup before the hook ran) needs no call, except
                // Master -> Master, which announces again.
                if pending.reported == Some(to) && from == to && to != VrrpState::Master {
                    continue;
                }
                pending.reported = Some(to);
                return Some((config, from, to));
            }
            if pending.closed {
                return None;
            }
            pending = self.wake.wait(pending).expect("hook slot lock");
        }
    }
}

/// One running instance: its task's state.
struct Instance {
    config: InstanceConfig,
    status: Arc<Status>,
    /// The transition for the hook thread.
    hook_slot: Arc<HookSlot>,
    hook_thread: Option<JoinHandle<()>>,
    /// Whether the last advertisement could not be sent (link down).
    send_failing: bool,
    /// Whether reopening the socket of a recreated interface failed last time
    /// (logged once, not at every retry).
    reopen_failing: bool,
}

impl Instance {
    fn new(config: InstanceConfig, status: Arc<Status>) -> Self {
        Instance {
            config,
            status,
            hook_slot: Arc::default(),
            hook_thread: None,
            send_failing: false,
            reopen_failing: false,
        }
    }

    /// Starts the thread that runs the hooks. Called from the instance's task,
    /// so that the thread is the runtime's (and in its network namespace), not
    /// the caller's of `set_instances`. The hook runs without any lock held:
    /// the instance's task only ever waits for the slot's lock, briefly.
    fn start_hooks(&mut self, hooks: Arc<dyn Hooks>) {
        let slot = self.hook_slot.clone();
        self.hook_thread = Some(tokio::task::spawn_blocking(move || {
            while let Some((config, from, to)) = slot.take() {
                hooks.transition(&config, from, to);
            }
        }));
    }

    async fn run(
        mut self,
        hooks: Arc<dyn Hooks>,
        shared: Arc<Shared>,
        mut commands: UnboundedReceiver<Command>,
    ) {
        self.start_hooks(hooks);
        // Until the socket opens, the instance stays in Initialize.
        let mut link = loop {
            match shared.link(&self.config.interface, self.config.family) {
                Ok(link) => break link,
                Err(error) => {
                    tracing::warn!(vrid = self.config.vrid, %error, "vrrp: cannot open the socket; retrying");
                    tokio::select! {
                        command = commands.recv() => match command {
                            Some(Command::Reconfigure(config)) => self.config = config,
                            Some(Command::Stop) | None => return self.finish().await,
                        },
                        _ = sleep(RETRY) => {}
                    }
                }
            }
        };
        let (route, mut adverts) = mpsc::channel(ADVERT_QUEUE);
        link.routes.lock().expect("routes lock").insert(self.config.vrid, route.clone());
        let mut machine = Machine::new(self.config.machine_config(), link.socket.own_address());
        let actions = machine.startup(Instant::now());
        self.perform(&link, &mut machine, VrrpState::Initialize, actions);
        let mut link_check = interval(RETRY);
        link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The check and the reopening run on a blocking thread: while the
        // kernel deletes an interface it holds the locks that opening a socket
        // and reading addresses need, for seconds under load, and the timers
        // must not wait for that.
        let mut reopening: Option<JoinHandle<Option<io::Result<Arc<Link>>>>> = None;
        loop {
            let deadline = machine.next_deadline();
            let from = machine.state();
            let actions = tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Reconfigure(config)) => {
                        let addresses_changed = config.addresses != self.config.addresses;
                        self.config = config;
                        let actions = machine.reconfigure(Instant::now(), self.config.machine_config());
                        if addresses_changed && machine.state() == VrrpState::Master {
                            self.hook(VrrpState::Master, VrrpState::Master);
                        }
                        actions
                    }
                    Some(Command::Stop) | None => break,
                },
                Some((source, advert)) = adverts.recv() => {
                    self.status.adverts_received.fetch_add(1, Ordering::Relaxed);
                    machine.on_advert(Instant::now(), source, advert.priority, advert.max_advert_interval)
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    machine.on_timer(Instant::now())
                }
                _ = link_check.tick(), if reopening.is_none() => {
                    let (shared, current) = (shared.clone(), link.clone());
                    let (interface, family) = (self.config.interface.clone(), self.config.family);
                    reopening = Some(tokio::task::spawn_blocking(move || {
                        current.is_stale(&interface).then(|| shared.link(&interface, family))
                    }));
                    Vec::new()
                }
                checked = async { reopening.as_mut().expect("guarded").await }, if reopening.is_some() => {
                    reopening = None;
                    if let Ok(Some(opened)) = checked {
                        self.reopened(opened, &mut link, &route, &mut machine);
                    }
                    Vec::new()
                }
            };
            self.perform(&link, &mut machine, from, actions);
        }
        let from = machine.state();
        let actions = machine.shutdown();
        self.perform(&link, &mut machine, from, actions);
        unroute(&link, self.config.vrid, &route);
        self.finish().await
    }

    /// The interface was deleted (and maybe recreated): a socket on the new
    /// one, if it is there yet, replaces the old (which would neither send nor
    /// receive again). The state stays; a Master takes its addresses again,
    /// since they went with the old interface.
    fn reopened(
        &mut self,
        opened: io::Result<Arc<Link>>,
        link: &mut Arc<Link>,
        route: &mpsc::Sender<Received>,
        machine: &mut Machine,
    ) {
        match opened {
            Ok(new) => {
                unroute(link, self.config.vrid, route);
                new.routes.lock().expect("routes lock").insert(self.config.vrid, route.clone());
                *link = new;
                machine.set_own_address(link.socket.own_address());
                self.reopen_failing = false;
                // The announcement below covers the link's return.
                self.send_failing = false;
                tracing::info!(
                    vrid = self.config.vrid,
                    interface = %self.config.interface,
                    "vrrp: interface recreated; socket reopened"
                );
                if machine.state() == VrrpState::Master {
                    self.hook(VrrpState::Master, VrrpState::Master);
                }
            }
            Err(error) => {
                if !self.reopen_failing {
                    tracing::warn!(vrid = self.config.vrid, %error, "vrrp: interface gone; retrying every second");
                    self.reopen_failing = true;
                }
            }
        }
    }

    /// Sends what the machine asked for and reports its state change.
    fn perform(&mut self, link: &Link, machine: &mut Machine, from: VrrpState, actions: Vec<Action>) {
        for action in actions {
            if let Action::SendAdvert { priority } = action {
                let advert = Advertisement {
                    virtual_router_id: self.config.vrid,
                    priority,
                    max_advert_interval: machine.config().advert_interval_centiseconds(),
                    addresses: self.config.addresses.clone(),
                };
                let sent = link.socket.send(&advert).is_ok();
                let counter = if sent { &self.status.adverts_sent } else { &self.status.send_errors };
                counter.fetch_add(1, Ordering::Relaxed);
                // A master whose link comes back announces its VIPs again: while it
                // was cut off another master took them, and the neighbours still
                // send there even after that one steps down on hearing this one.
                if sent
                    && self.send_failing
                    && from == VrrpState::Master
                    && machine.state() == VrrpState::Master
                {
                    self.hook(VrrpState::Master, VrrpState::Master);
                }
                self.send_failing = !sent;
            }
            // BecomeMaster / BecomeBackup: the state change below covers them.
        }
        let to = machine.state();
        if to != from {
            *self.status.state.lock().expect("state lock") = to;
            self.status.transitions.fetch_add(1, Ordering::Relaxed);
            self.hook(from, to);
        }
    }

    fn hook(&self, from: VrrpState, to: VrrpState) {
        self.hook_slot.put(self.config.clone(), from, to);
    }

    /// Waits for the hook of the last transition.
    async fn finish(mut self) {
        // Closing the slot ends the hook thread once it has run what waits there.
        self.hook_slot.close();
        if let Some(thread) = self.hook_thread.take() {
            let _ = thread.await;
        }
    }
}

/// Removes the instance's queue from `link` (unless another instance of that
/// VRID replaced it meanwhile).
fn unroute(link: &Link, vrid: u8, route: &mpsc::Sender<Received>) {
    let mut routes = link.routes.lock().expect("routes lock");
    if routes.get(&vrid).is_some_and(|r| r.same_channel(route)) {
        routes.remove(&vrid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addresses: &[&str]) -> InstanceConfig {
        InstanceConfig {
            interface: "eth0".into(),
            vrid: 51,
            family: AddressFamily::IPv4,
            priority: 100,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    use VrrpState::{Backup, Initialize, Master};

    #[test]
    fn the_hook_slot_keeps_the_latest_transition_from_where_the_hooks_stand() {
        let slot = HookSlot::default();
        slot.put(config(&["10.0.0.1"]), Initialize, Backup);
        assert_eq!(slot.take(), Some((config(&["10.0.0.1"]), Initialize, Backup)));
        // A hook running meanwhile: three transitions and a reassert fold into one.
        slot.put(config(&["10.0.0.1"]), Backup, Master);
        slot.put(config(&["10.0.0.1"]), Master, Master);
        slot.put(config(&["10.0.0.1"]), Master, Backup);
        slot.put(config(&["10.0.0.2"]), Backup, Master);
        assert_eq!(slot.take(), Some((config(&["10.0.0.2"]), Backup, Master)));
        // Back where the hooks stand: no call.
        slot.put(config(&["10.0.0.2"]), Master, Backup);
        slot.put(config(&["10.0.0.2"]), Backup, Master);
        slot.put(config(&["10.0.0.2"]), Master, Master);
        assert_eq!(slot.take(), Some((config(&["10.0.0.2"]), Master, Master)), "Master -> Master announces");
        slot.put(config(&["10.0.0.2"]), Master, Backup);
        assert_eq!(slot.take(), Some((config(&["10.0.0.2"]), Master, Backup)));
        slot.put(config(&["10.0.0.2"]), Backup, Master);
        slot.put(config(&["10.0.0.2"]), Master, Backup);
        slot.close();
        assert_eq!(slot.take(), None, "Backup -> Master -> Backup: nothing to do");
    }

    #[test]
    fn a_flood_of_transitions_costs_one_slot_and_the_hook_thread_takes_the_latest() {
        let slot = Arc::new(HookSlot::default());
        let taker = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                let mut taken = Vec::new();
                while let Some(transition) = slot.take() {
                    taken.push(transition);
                    // A slow hook: the flood goes on meanwhile.
                    std::thread::sleep(Duration::from_millis(1));
                }
                taken
            })
        };
        for n in 0..100_000 {
            let (from, to) = if n % 2 == 0 { (Backup, Master) } else { (Master, Backup) };
            slot.put(config(&["10.0.0.1"]), from, to);
        }
        slot.put(config(&["10.0.0.1"]), Master, Backup);
        slot.close();
        let taken = taker.join().unwrap();
        assert!(taken.len() < 1_000, "{} hook calls for 100,000 transitions", taken.len());
        assert_eq!(taken.last().map(|(_, _, to)| *to), Some(Backup), "the latest state wins");
        // Each call goes from where the previous one left the hooks.
        for pair in taken.windows(2) {
            assert_eq!(pair[1].1, pair[0].2, "{pair:?}");
        }
    }
}
