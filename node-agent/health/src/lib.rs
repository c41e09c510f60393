//! Health checks of the real servers a director directs (issue 5).
//!
//! The agent turns a director's desired state into one [`Target`] per
//! (service, destination) with a check; a [`Checker`] runs one tokio task per
//! target on a runtime it is given, keeps each target's rise/fall state
//! ([`RiseFall`]) and sends a [`HealthChange`] over a std channel whenever a
//! target turns healthy or unhealthy. The agent's loop reads those changes,
//! takes a [`Checker::health`] snapshot and derives the effective weights from
//! it; [`Checker::stats`] feeds metrics and the LvsNode status.
//!
//! Every target starts healthy (see [`RiseFall`] for why), and the first check
//! of each target waits a random part of its interval so that thousands of
//! checks spread over the interval instead of firing together; checks start
//! on a 10 ms grid ([`CHECK_GRID`]) so that the runtime wakes up once per
//! step, not once per check. TCP connections of checks end with a reset (see
//! [`Probe`]). tests/bench/health-checks measures the CPU of 5,000 checks per
//! second.

mod probe;
mod state;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::Sender,
    },
    time::{Duration, Instant},
};

use lvs_ipvs::ServiceKey;
use tokio::{runtime::Handle, task::AbortHandle, time::MissedTickBehavior};

pub use probe::{FailureKind, Probe, ProbeFailure};
use state::RiseFall;

/// What a check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// No check: the target is always healthy.
    None,
    /// A TCP connection.
    Tcp,
    /// An HTTP request.
    Http,
    /// An HTTPS request, without certificate verification (keepalived's `SSL_GET`).
    Https,
    /// A datagram that the server answers with any datagram.
    Udp,
}

/// How to check a real server, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// HTTP(S) request path; `/` when absent.
    pub path: Option<String>,
    /// HTTP(S) Host header; the real server's address when absent.
    pub host: Option<String>,
    /// Port to check; the real server's port when absent.
    pub port: Option<u16>,
    /// HTTP status codes that count as healthy; 200-399 when absent.
    pub expected_status: Option<Vec<u16>>,
    /// Text the HTTP(S) response body must contain.
    pub body_contains: Option<String>,
    /// UDP datagram to send.
    pub payload: Option<String>,
    /// Seconds between checks (at least 1).
    pub interval_seconds: u32,
    /// Seconds a check may take (at least 1).
    pub timeout_seconds: u32,
    /// Consecutive successes that make a failed server healthy again.
    pub rise: u32,
    /// Consecutive failures that make a server unhealthy.
    pub fall: u32,
}

/// One real server of one service to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: ServiceKey,
    /// The real server's address and port as programmed; the probe goes to
    /// `check.port` when set, else to this port.
    pub destination: SocketAddr,
    pub check: HealthCheck,
}

/// A target turned healthy or unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub service: ServiceKey,
    pub destination: SocketAddr,
    pub healthy: bool,
    /// Why: the failure of the last check when it turned unhealthy, e.g.
    /// `HTTP status 503 not in 200-399`; `rise` passed checks otherwise.
    pub reason: String,
}

/// A snapshot of every target's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthMap {
    healthy: HashMap<(ServiceKey, SocketAddr), bool>,
}

impl HealthMap {
    /// Whether the destination counts as healthy: true when it has no check.
    pub fn is_healthy(&self, service: ServiceKey, destination: SocketAddr) -> bool {
        self.healthy.get(&(service, destination)).copied().unwrap_or(true)
    }

    /// Every checked target with whether it is healthy, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (ServiceKey, SocketAddr, bool)> + '_ {
        self.healthy.iter().map(|(&(service, destination), &healthy)| (service, destination, healthy))
    }

    /// Number of checked targets.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.healthy.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.healthy.is_empty()
    }
}

impl FromIterator<((ServiceKey, SocketAddr), bool)> for HealthMap {
    fn from_iter<I: IntoIterator<Item = ((ServiceKey, SocketAddr), bool)>>(verdicts: I) -> Self {
        HealthMap { healthy: verdicts.into_iter().collect() }
    }
}

/// Counters since the checker started, and each target's state: what
/// metrics and the LvsNode status report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckerStats {
    /// Checks completed.
    pub checks: u64,
    pub successes: u64,
    /// Failed checks by kind; every kind is present.
    pub failures: BTreeMap<FailureKind, u64>,
    /// Transitions to healthy.
    pub ups: u64,
    /// Transitions to unhealthy.
    pub downs: u64,
    /// One row per target, sorted by service and destination.
    pub targets: Vec<TargetStatus>,
}

/// The state of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    pub service: ServiceKey,
    pub destination: SocketAddr,
    pub healthy: bool,
    /// Result of the last check; None before the first one.
    pub last_check_passed: Option<bool>,
    /// Why the last check failed (None when it passed or none ran yet).
    pub reason: Option<String>,
    /// Checks completed since the target (or its check) was set.
    pub checks: u64,
}

/// Checks start on a grid of this step (from the checker's creation), so that
/// the runtime wakes up once for the several checks due in the same step
/// rather than once per check: fewer wake-ups and context switches, and the
/// checks still spread over 100 steps per second.
pub(crate) const CHECK_GRID: Duration = Duration::from_millis(10);

/// When a target set `now` (time since the checker's epoch) runs its first
/// check: after a uniform random part of its interval, so that targets set at
/// the same moment spread over the interval, then rounded up to
/// [`CHECK_GRID`]. Whole-second intervals keep every later check on the grid.
pub(crate) fn first_check(now: Duration, interval: Duration, rng: &mut fastrand::Rng) -> Duration {
    let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    let at = now + Duration::from_nanos(if nanos == 0 { 0 } else { rng.u64(0..nanos) });
    let grid = CHECK_GRID.as_nanos();
    let steps = at.as_nanos().div_ceil(grid);
    Duration::from_nanos(u64::try_from(steps * grid).unwrap_or(u64::MAX))
}

type TargetKey = (ServiceKey, SocketAddr);

/// Runs the checks of a set of targets on a tokio runtime: one task per
/// target, no thread per check. Dropping it stops every check.
pub struct Checker {
    handle: Handle,
    /// Origin of the check grid.
    epoch: Instant,
    events: Sender<HealthChange>,
    counters: Arc<Counters>,
    running: HashMap<TargetKey, Running>,
    rng: fastrand::Rng,
}

struct Running {
    check: HealthCheck,
    slot: Arc<Mutex<Slot>>,
    task: AbortHandle,
}

/// What a target's task shares with the checker. Held only for a few field
/// updates, never across an await.
struct Slot {
    state: RiseFall,
    last_check_passed: Option<bool>,
    reason: Option<String>,
    checks: u64,
    /// Set when the checker stops or replaces the task: the task records
    /// nothing more and sends no event, even if it is mid-check.
    retired: bool,
}

impl Slot {
    fn new(state: RiseFall) -> Self {
        Self { state, last_check_passed: None, reason: None, checks: 0, retired: false }
    }
}

#[derive(Default)]
struct Counters {
    checks: AtomicU64,
    successes: AtomicU64,
    failures: [AtomicU64; FailureKind::ALL.len()],
    ups: AtomicU64,
    downs: AtomicU64,
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    // A panic while holding it leaves plain data behind: carry on with it.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Checker {
    /// A checker with no targets whose tasks run on `handle` and whose
    /// changes go to `events` (a closed receiver is ignored).
    pub fn new(handle: Handle, events: Sender<HealthChange>) -> Self {
        Self {
            handle,
            epoch: Instant::now(),
            events,
            counters: Arc::default(),
            running: HashMap::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// Makes `targets` the set of checked targets: starts the new ones
    /// (healthy), stops the ones no longer listed, restarts those whose check
    /// changed (they keep whether they are healthy, their run starts over)
    /// and leaves the others running untouched. Of targets listed twice the
    /// first counts.
    pub fn set_targets(&mut self, targets: Vec<Target>) {
        let mut previous = std::mem::take(&mut self.running);
        self.running.reserve(targets.len());
        for target in targets {
            let key = (target.service, target.destination);
            if self.running.contains_key(&key) {
                continue;
            }
            let running = match previous.remove(&key) {
                Some(running) if running.check == target.check => running,
                Some(old) => {
                    let healthy = old.retire();
                    self.spawn(target, healthy)
                }
                None => self.spawn(target, true),
            };
            self.running.insert(key, running);
        }
        for (_, old) in previous {
            old.retire();
        }
    }

    fn spawn(&mut self, target: Target, healthy: bool) -> Running {
        let check = target.check;
        let slot = Arc::new(Mutex::new(Slot::new(RiseFall::starting(healthy, check.rise, check.fall))));
        let interval = Duration::from_secs(check.interval_seconds.max(1).into());
        let task = Task {
            service: target.service,
            destination: target.destination,
            probe: Probe::new(&check, target.destination),
            interval,
            first: self.epoch + first_check(self.epoch.elapsed(), interval, &mut self.rng),
            slot: slot.clone(),
            counters: self.counters.clone(),
            events: self.events.clone(),
        };
        let task = self.handle.spawn(task.run()).abort_handle();
        Running { check, slot, task }
    }

    /// Number of targets checked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether each target is healthy now.
    pub fn health(&self) -> HealthMap {
        let healthy = self
            .running
            .iter()
            .map(|(key, running)| (*key, lock(&running.slot).state.is_healthy()))
            .collect();
        HealthMap { healthy }
    }

    /// Counters and every target's state.
    pub fn stats(&self) -> CheckerStats {
        let c = &self.counters;
        let mut targets: Vec<TargetStatus> = self
            .running
            .iter()
            .map(|(&(service, destination), running)| {
                let slot = lock(&running.slot);
                TargetStatus {
                    service,
                    destination,
                    healthy: slot.state.is_healthy(),
                    last_check_passed: slot.last_check_passed,
                    reason: slot.reason.clone(),
                    checks: slot.checks,
                }
            })
            .collect();
        targets.sort_unstable_by_key(|t| (t.service, t.destination));
        CheckerStats {
            checks: c.checks.load(Relaxed),
            successes: c.successes.load(Relaxed),
            failures: FailureKind::ALL.iter().map(|&k| (k, c.failures[k.index()].load(Relaxed))).collect(),
            ups: c.ups.load(Relaxed),
            downs: c.downs.load(Relaxed),
            targets,
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, running) in self.running.drain() {
            running.retire();
        }
    }
}

impl Running {
    /// Stops the task; returns whether the target was healthy.
    fn retire(self) -> bool {
        self.task.abort();
        let mut slot = lock(&self.slot);
        slot.retired = true;
        slot.state.is_healthy()
    }
}

/// The loop of one target's task.
struct Task {
    service: ServiceKey,
    destination: SocketAddr,
    probe: Probe,
    interval: Duration,
    first: Instant,
    slot: Arc<Mutex<Slot>>,
    counters: Arc<Counters>,
    events: Sender<HealthChange>,
}

impl Task {
    async fn run(self) {
        let mut ticks = tokio::time::interval_at(self.first.into(), self.interval);
        // Ticks missed (a stalled runtime) are skipped, not fired at once, and
        // the next one keeps the target's place in the interval: after a
        // stall the checks stay as spread as before (with `Delay` they would
        // all restart together at the end of the stall).
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let result = self.probe.run().await;
            if !self.record(result) {
                return;
            }
        }
    }

    /// Records one result; false when the task has been retired.
    fn record(&self, result: Result<(), ProbeFailure>) -> bool {
        let c = &self.counters;
        let mut slot = lock(&self.slot);
        if slot.retired {
            return false;
        }
        c.checks.fetch_add(1, Relaxed);
        slot.checks += 1;
        let passed = result.is_ok();
        match result {
            Ok(()) => {
                c.successes.fetch_add(1, Relaxed);
                slot.reason = None;
            }
            Err(failure) => {
                c.failures[failure.kind.index()].fetch_add(1, Relaxed);
                slot.reason = Some(failure.reason);
            }
        }
        slot.last_check_passed = Some(passed);
        if slot.state.record(passed) {
            let healthy = slot.state.is_healthy();
            let reason = match (&slot.reason, healthy) {
                (Some(reason), false) => reason.clone(),
                _ => "passed its checks again".to_owned(),
            };
            if healthy { &c.ups } else { &c.downs }.fetch_add(1, Relaxed);
            // Sent under the slot's lock: no event of a retired task can
            // follow the checker's reading of its state.
            let _ = self.events.send(HealthChange {
                service: self.service,
                destination: self.destination,
                healthy,
                reason,
            });
        }
        true
    }
}

#[cfg(test)]
mod tests;
