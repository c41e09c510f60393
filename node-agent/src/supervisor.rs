//! The long-running agent: one event loop, which owns the [`Engine`] and keeps
//! one desired state applied, with the health checks' verdicts and VRRP's VIP
//! ownership folded in.
//!
//! ```text
//!  source (files, LvsNode watch) ─ Desired ─┐
//!  health::Checker ──────────────── Health ─┤
//!  vrrp::Router (FailoverHooks) ───── Vrrp ─┼─> Supervisor::run ─> Engine ─> Kernel, Host
//!  resync's dump thread ───────────Dumped ─┤        │ deadlines: resync, drains, VRRP releases
//!  signals ────────────────────────── Stop ─┘        └─> Sink (state report, LvsNode status)
//! ```
//!
//! Every input arrives in one [`Inbox`] ([`Input`]), which coalesces them as
//! they come (bounded: one pending desired update, one verdict per destination,
//! one transition per VRRP instance); the loop waits on it until the nearest of
//! its own deadlines (the next resync, the end of the first drain, a delayed
//! VRRP release), never polling. Inputs pending are taken together: one round
//! for all of them. The loop holds the desired state; a
//! source sends updates of it, which say what they changed (see
//! [`DesiredState`]). The periodic resync dumps the table on another thread,
//! then plans a slice of the services per step, each step only when no input
//! waits, so a change waits for one step at most. Standalone and cluster mode
//! are a source of updates and a [`Sink`] of rounds.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use lvs_crds::{
    lvs_node::{DirectorState, LvsNodeSpec},
    virtual_service::VrrpState,
};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::{
    convert,
    engine::{self, Changed, Engine, Failure, Round, Scope, Subject},
    failover::{self, Failover, FailoverHooks, Transition},
    reconcile::KernelTable,
};
use lvs_health::{Checker, CheckerStats, HealthChange, HealthMap};
use lvs_ipvs::ServiceKey;
use lvs_vrrp::{InstanceConfig, InstanceKey, Router};

pub use self::inbox::{Batch, Closed, Coalesce, Inbox, InboxSender, inbox};

mod inbox;

/// What the loop is fed (`U`: its source's updates of the desired state).
#[derive(Debug)]
pub enum Input<U> {
    /// The desired state changed (see [`DesiredState::update`]).
    Desired(U),
    /// A health-checked destination turned healthy or unhealthy.
    Health(HealthChange),
    /// A VRRP instance changed state.
    Vrrp(Transition),
    /// The running resync's dump is in.
    Dumped,
    /// Leave gracefully: VRRP masters hand over at once; the kernel's rules stay.
    Stop,
}

/// The desired state as the loop holds it. Its source sends updates, which the
/// loop takes in on its own thread: a source that knows what changed sends
/// just that (standalone: the manifests that changed), so that a change costs
/// what it touches, not a copy of the whole state.
pub trait DesiredState: Send + 'static {
    /// What the source sends; two pending ones are merged into one.
    type Update: Coalesce + Send + 'static;

    fn spec(&self) -> &LvsNodeSpec;

    /// Takes `update` in; returns what it changed.
    fn update(&mut self, update: Self::Update) -> Changed;
}

/// Whole versions, each replacing the last.
impl DesiredState for Arc<LvsNodeSpec> {
    type Update = Arc<LvsNodeSpec>;

    fn spec(&self) -> &LvsNodeSpec {
        self
    }

    fn update(&mut self, new: Arc<LvsNodeSpec>) -> Changed {
        let changed = Changed::between(self, &new);
        *self = new;
        changed
    }
}

/// Why a round ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The first desired state, in full.
    Startup,
    /// A new desired state (health changes and due drains folded in).
    Applied,
    /// Health changes.
    Health,
    /// A drain ended.
    Drained,
    /// A step of the periodic resync (`finished`: its last).
    Repaired { finished: bool },
}

/// Where the loop's rounds go: logs, a state report, the LvsNode status.
pub trait Sink<D> {
    /// A round ran for `desired`. Returns false when the loop should stop (the
    /// sink's consumer is gone).
    fn round(&mut self, why: Why, desired: &D, round: Round, agent: &Supervisor) -> bool;
}

pub struct Supervisor {
    engine: Engine,
    handle: Handle,
    checker: Checker,
    /// The verdicts the loop heard of, by target: they stand over the checker's
    /// (they are what the rounds of their changes plan with).
    heard: HashMap<(ServiceKey, SocketAddr), bool>,
    router: Router,
    failover: Failover,
    /// Tells the loop that the resync's dump is in.
    dumped: Arc<dyn Fn() + Send + Sync>,
    /// The connection sync last given to the failover (`None` before the first).
    sync: Option<Option<lvs_crds::lvs_node::ConnectionSync>>,
    /// The VRRP instances last given to the router.
    instances: Vec<InstanceConfig>,
}

impl Supervisor {
    /// Runs health checks and VRRP on `handle`'s runtime; their changes, and the
    /// resync's dumps, come to the loop as `inputs`. The engine is told that
    /// VRRP decides who holds VIPs with a `vrrp` section.
    pub fn new<U: Coalesce + Send + 'static>(
        mut engine: Engine,
        handle: Handle,
        inputs: &InboxSender<U>,
    ) -> Self {
        engine.set_vrrp(true);
        let (health_tx, health_changes) = mpsc::channel();
        let health_inputs = inputs.clone();
        // The checker's changes, onto the loop's channel (a blocking receive:
        // this thread ends with the checker).
        let forward = move || {
            for change in health_changes {
                if health_inputs.send(Input::Health(change)).is_err() {
                    return;
                }
            }
        };
        std::thread::Builder::new().name("health-inputs".into()).spawn(forward).expect("a thread");
        let vrrp_inputs = inputs.clone();
        let hooks = FailoverHooks::hooks(move |transition| {
            let _ = vrrp_inputs.send(Input::Vrrp(transition));
        });
        let dumped_inputs = inputs.clone();
        Supervisor {
            engine,
            checker: Checker::new(handle.clone(), health_tx),
            heard: HashMap::new(),
            router: Router::new(handle.clone(), hooks),
            failover: Failover::default(),
            dumped: Arc::new(move || {
                let _ = dumped_inputs.send(Input::Dumped);
            }),
            sync: None,
            instances: Vec::new(),
            handle,
        }
    }

    /// Runs the loop until [`Input::Stop`], every sender gone, or the sink
    /// stops it: `current` with the first update in full, then each input as it
    /// comes, a resync every `resync`, a round when a drain ends. Nothing is
    /// applied before the first update (an empty state would remove every
    /// owned service). Leaves gracefully (see [`Self::shutdown`]).
    pub fn run<D: DesiredState>(
        mut self,
        mut current: D,
        inputs: &Inbox<D::Update>,
        sink: &mut impl Sink<D>,
        resync: Duration,
    ) {
        loop {
            let Ok(batch) = inputs.take(None) else { return self.shutdown(inputs) };
            for transition in &batch.vrrp {
                self.transition(transition);
            }
            if batch.stop {
                return self.shutdown(inputs);
            }
            if let Some(update) = batch.desired {
                current.update(update);
                break;
            }
        }
        let round = self.apply(current.spec(), Scope::Full);
        let mut drains = (round.next_check, round.draining.clone());
        if !sink.round(Why::Startup, &current, round, &self) {
            return self.shutdown(inputs);
        }
        let mut next_resync = Instant::now() + resync;
        loop {
            // Until the nearest deadline; at once while the resync has steps to take.
            let wait = if self.engine.resync_ready() {
                Duration::ZERO
            } else {
                let now = Instant::now();
                let mut wait = next_resync.saturating_duration_since(now);
                if let Some(at) = drains.0 {
                    wait = wait.min(at.saturating_sub(engine::now()));
                }
                if let Some(at) = self.failover.next_release() {
                    wait = wait.min(at.saturating_duration_since(now));
                }
                wait
            };
            let Ok(batch) = inputs.take(Some(wait)) else { return self.shutdown(inputs) };
            // Everything pending is taken by this one turn.
            for transition in &batch.vrrp {
                self.transition(transition);
            }
            if batch.stop {
                return self.shutdown(inputs);
            }
            let changed: Option<Changed> = batch.desired.map(|update| current.update(update));
            let mut health_keys = BTreeSet::new();
            for change in batch.health {
                log_health(&change);
                self.heard.insert((change.service, change.destination), change.healthy);
                health_keys.insert(change.service);
            }
            let dumped = batch.dumped;
            let drain_due = drains.0.is_some_and(|at| engine::now() >= at);
            let turn = if let Some(mut changed) = changed {
                changed.services.extend(health_keys);
                changed.services.extend(drains.1.iter().copied());
                Some((Why::Applied, self.apply(current.spec(), Scope::Changed(changed))))
            } else if !health_keys.is_empty() {
                if drain_due {
                    health_keys.extend(drains.1.iter().copied());
                }
                Some((Why::Health, self.reconcile_services(current.spec(), health_keys)))
            } else if drain_due {
                Some((Why::Drained, self.reconcile_services(current.spec(), drains.1.clone())))
            } else {
                None
            };
            if let Some((why, round)) = turn {
                drains = (round.next_check, round.draining.clone());
                if !sink.round(why, &current, round, &self) {
                    return self.shutdown(inputs);
                }
            }
            for failure in self.failover.release_due(self.engine.host(), Instant::now()) {
                warn!(%failure, "VRRP: failed");
            }
            if Instant::now() >= next_resync {
                let dumped = Arc::clone(&self.dumped);
                self.engine.start_resync(move || dumped());
                next_resync = Instant::now() + resync;
            }
            if dumped || self.engine.resync_ready() {
                let spec = current.spec();
                if let Some(round) = self.resync_step(spec) {
                    drains = (round.next_check, round.draining.clone());
                    let why = Why::Repaired { finished: !self.engine.resyncing() };
                    if !sink.round(why, &current, round, &self) {
                        return self.shutdown(inputs);
                    }
                }
            }
        }
    }

    /// Acts on a VRRP transition (VIPs, sync daemon) and logs it.
    fn transition(&mut self, transition: &Transition) {
        let failures =
            self.failover.transition(self.engine.host(), self.engine.kernel(), transition, Instant::now());
        log_transition(transition, &failures);
    }

    /// Applies a new desired state (`scope`: what changed in it, see [`Scope`]);
    /// health checks and VRRP instances follow it.
    pub fn apply(&mut self, spec: &LvsNodeSpec, scope: Scope) -> Round {
        let empty = DirectorState::default();
        let director = spec.director.as_ref().unwrap_or(&empty);
        let targets = convert::health_targets(director);
        if !self.heard.is_empty() {
            // A verdict stands only while its target is checked.
            let checked: BTreeSet<(ServiceKey, SocketAddr)> =
                targets.iter().map(|t| (t.service, t.destination)).collect();
            self.heard.retain(|target, _| checked.contains(target));
        }
        self.checker.set_targets(targets);
        self.engine.set_health(self.health());
        // VRRP follows the VIPs, which only a change of the host part changes.
        let vips_may_change = !matches!(&scope, Scope::Changed(changed) if !changed.host);
        let mut round = self.engine.reconcile(spec, scope);
        if vips_may_change && let Err(e) = self.follow_vrrp(director) {
            round.failures.push(Failure::new(Subject::Failover, e));
        }
        round
    }

    /// The VRRP instances and the sync daemon for `director`.
    fn follow_vrrp(&mut self, director: &DirectorState) -> Result<(), String> {
        let (instances, sync) = failover::settings(director, self.engine.host())?;
        self.instances.clone_from(&instances);
        self.router.set_instances(instances);
        if self.sync.as_ref() != Some(&sync) {
            self.sync = Some(sync.clone());
            self.failover
                .set_sync(self.engine.kernel(), sync)
                .map_err(|e| format!("connection sync daemon: {e}"))?;
        }
        Ok(())
    }

    /// One step of the running resync (see [`Engine::resync_step`]).
    fn resync_step(&mut self, spec: &LvsNodeSpec) -> Option<Round> {
        let health = self.health();
        self.engine.resync_step(spec, || health)
    }

    /// A round for the services in `keys` only (health changes, or drains due).
    fn reconcile_services(&mut self, spec: &LvsNodeSpec, keys: BTreeSet<ServiceKey>) -> Round {
        self.engine.set_health(self.health());
        self.engine.reconcile(spec, Scope::Changed(Changed::services(keys)))
    }

    /// Each health-checked destination's verdict: the checker's, with the
    /// changes the loop heard of over them.
    pub fn health(&self) -> HealthMap {
        let checked = self.checker.health();
        if self.heard.is_empty() {
            return checked;
        }
        let mut verdicts: HashMap<(ServiceKey, SocketAddr), bool> =
            checked.iter().map(|(service, destination, healthy)| ((service, destination), healthy)).collect();
        verdicts.extend(self.heard.iter().map(|(target, healthy)| (*target, *healthy)));
        verdicts.into_iter().collect()
    }

    pub fn health_stats(&self) -> CheckerStats {
        self.checker.stats()
    }

    /// The VRRP state of each VIP that has a VRRP instance.
    pub fn vip_states(&self) -> HashMap<IpAddr, VrrpState> {
        let states: HashMap<InstanceKey, VrrpState> =
            self.router.states().into_iter().map(|(key, state)| (key, convert::vrrp_state(state))).collect();
        self.instances
            .iter()
            .flat_map(|instance| {
                let state = states.get(&instance.key()).copied().unwrap_or(VrrpState::Initialize);
                instance.addresses.iter().map(move |address| (*address, state))
            })
            .collect()
    }

    /// The kernel table as the engine last saw it (see [`Engine::table`]).
    pub fn table(&self) -> Option<&KernelTable> {
        self.engine.table()
    }

    pub fn vrrp_stats(&self) -> lvs_vrrp::Stats {
        self.router.stats()
    }

    /// Leaves gracefully: masters send priority 0 (a backup takes over at once)
    /// and give their VIPs up (the router's last transitions, still queued, are
    /// acted on). IPVS rules stay, as on any backup.
    fn shutdown<D>(mut self, inputs: &Inbox<D>) {
        info!("stopping; the kernel's rules stay as they are");
        self.handle.block_on(self.router.shutdown());
        for transition in inputs.take_now().vrrp {
            self.transition(&transition);
        }
    }
}

fn log_health(change: &HealthChange) {
    let verdict = if change.healthy { "healthy" } else { "unhealthy" };
    info!(
        service = %change.service,
        destination = %change.destination,
        verdict,
        reason = %change.reason,
        "health changed"
    );
}

fn log_transition(transition: &Transition, failures: &[String]) {
    let instance = &transition.instance;
    let addresses: Vec<String> = instance.addresses.iter().map(ToString::to_string).collect();
    info!(
        vrid = instance.vrid,
        interface = %instance.interface,
        from = ?transition.from,
        to = ?transition.to,
        addresses = %addresses.join(", "),
        "VRRP transition"
    );
    for failure in failures {
        warn!(vrid = instance.vrid, interface = %instance.interface, %failure, "VRRP: failed");
    }
}

#[cfg(test)]
mod tests;
