//! The long-running agent's core, shared by `apply` and `run`: the [`Engine`]
//! keeps one desired state applied, with the health checks' verdicts and VRRP's
//! VIP ownership folded in.
//!
//! ```text
//! desired spec ─────────────┬─> Engine (IPVS, host) ──> kernel
//!      │                    │        ^
//!      ├─> health::Checker ─┴─ health changes (one service planned each)
//!      └─> vrrp::Router ──> FailoverHooks: VIPs, announcements, sync daemon
//! ```
//!
//! Health checks and VRRP run as tasks on a tokio runtime; the engine stays on
//! the caller's thread, which calls [`Supervisor::poll`] often (every few tens
//! of milliseconds) to apply what the checks found.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::mpsc,
    time::Duration,
};

use lvs_crds::{
    lvs_node::{ConnectionSync, DirectorState, DirectorVip, LvsNodeSpec},
    virtual_service::VrrpState,
};
use tokio::runtime::Handle;

use crate::{
    convert,
    engine::{Engine, Failure, Round, Scope, Subject},
    failover::{FailoverHooks, Transition},
    host::address,
    reconcile::KernelTable,
};
use lvs_health::{Checker, CheckerStats, HealthChange, HealthMap};
use lvs_ipvs::ServiceKey;
use lvs_vrrp::{InstanceConfig, InstanceKey, Router};

pub struct Supervisor {
    engine: Engine,
    handle: Handle,
    checker: Checker,
    health_changes: mpsc::Receiver<HealthChange>,
    router: Router,
    hooks: FailoverHooks,
    transitions: mpsc::Receiver<Transition>,
    /// The connection sync last given to the hooks (`None` before the first).
    sync: Option<Option<ConnectionSync>>,
    /// The VRRP instances last given to the router.
    instances: Vec<InstanceConfig>,
}

impl Supervisor {
    /// Runs health checks and VRRP on `handle`'s runtime. The engine is told
    /// that VRRP decides who holds VIPs with a `vrrp` section.
    pub fn new(mut engine: Engine, handle: Handle) -> Self {
        engine.set_vrrp(true);
        let (health_tx, health_changes) = mpsc::channel();
        let (transition_tx, transitions) = mpsc::channel();
        let hooks = FailoverHooks::new(transition_tx);
        let router = Router::new(handle.clone(), hooks.hooks());
        Supervisor {
            engine,
            checker: Checker::new(handle.clone(), health_tx),
            health_changes,
            router,
            hooks,
            transitions,
            sync: None,
            instances: Vec::new(),
            handle,
        }
    }

    /// Applies a new desired state (`scope`: what changed in it, see [`Scope`]);
    /// health checks and VRRP instances follow it.
    pub fn apply(&mut self, spec: &LvsNodeSpec, scope: Scope) -> Round {
        let empty = DirectorState::default();
        let director = spec.director.as_ref().unwrap_or(&empty);
        self.checker.set_targets(convert::health_targets(director));
        self.engine.set_health(self.checker.health());
        let mut round = self.engine.reconcile(spec, scope);
        if let Err(e) = self.follow_vrrp(director) {
            round.failures.push(Failure::new(Subject::Failover, e));
        }
        round
    }

    /// The VRRP instances and the sync daemon for `director`.
    fn follow_vrrp(&mut self, director: &DirectorState) -> Result<(), String> {
        // VIPs without an interface go where the route towards them goes.
        let unrouted: Vec<&DirectorVip> =
            director.vips.iter().filter(|v| v.vrrp.is_some() && v.interface.is_none()).collect();
        let routes = address::route_devices(&unrouted.iter().map(|v| v.address).collect::<Vec<_>>());
        let interface_of = |vip: &DirectorVip| {
            let index = unrouted.iter().position(|v| *v == vip)?;
            routes.get(index)?.as_ref().ok().cloned()
        };
        let instances = convert::vrrp_instances(director, interface_of).map_err(|e| format!("VRRP: {e}"))?;
        let sync = director.connection_sync.clone().and_then(|mut sync| {
            // No interface named: the first VRRP instance's.
            if sync.interface.is_empty() {
                sync.interface = instances.first()?.interface.clone();
            }
            Some(sync)
        });
        self.instances.clone_from(&instances);
        self.router.set_instances(instances);
        if self.sync.as_ref() != Some(&sync) {
            self.sync = Some(sync.clone());
            self.hooks.set_sync(sync).map_err(|e| format!("connection sync daemon: {e}"))?;
        }
        Ok(())
    }

    /// Starts the periodic resync: its dump runs beside the rounds of changes
    /// (see [`Engine::start_resync`]).
    pub fn start_resync(&mut self) {
        self.engine.start_resync();
    }

    /// One step of the running resync (see [`Engine::resync_step`]).
    pub fn resync_step(&mut self, spec: &LvsNodeSpec) -> Option<Round> {
        let checker = &self.checker;
        self.engine.resync_step(spec, || checker.health())
    }

    /// Whether a resync runs.
    pub fn resyncing(&self) -> bool {
        self.engine.resyncing()
    }

    /// A round for the services in `keys` only (changed, or drains due).
    pub fn reconcile_services(&mut self, spec: &LvsNodeSpec, keys: BTreeSet<ServiceKey>) -> Round {
        self.engine.set_health(self.checker.health());
        self.engine.reconcile(spec, Scope::Services(keys))
    }

    /// Applies the health changes that arrived since the last call (a round for
    /// the services they concern) and logs VRRP transitions. Returns the round,
    /// if one ran.
    pub fn poll(&mut self, spec: &LvsNodeSpec) -> Option<Round> {
        for transition in self.transitions.try_iter() {
            log_transition(&transition);
        }
        let changes: Vec<HealthChange> = self.health_changes.try_iter().collect();
        if changes.is_empty() {
            return None;
        }
        for change in &changes {
            eprintln!(
                "lvs-agent: health: {} of {} is {} ({})",
                change.destination,
                change.service,
                if change.healthy { "healthy" } else { "unhealthy" },
                change.reason
            );
        }
        let keys = changes.iter().map(|c| c.service).collect();
        Some(self.reconcile_services(spec, keys))
    }

    /// Each health-checked destination's verdict.
    pub fn health(&self) -> HealthMap {
        self.checker.health()
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
    /// and give their VIPs up. IPVS rules stay, as on any backup.
    pub fn shutdown(mut self) {
        self.handle.block_on(self.router.shutdown());
        for transition in self.transitions.try_iter() {
            log_transition(&transition);
        }
    }
}

fn log_transition(transition: &Transition) {
    let addresses: Vec<String> = transition.addresses.iter().map(ToString::to_string).collect();
    eprintln!(
        "lvs-agent: VRRP router {} on {}: {:?} -> {:?} ({})",
        transition.instance.vrid,
        transition.instance.interface,
        transition.from,
        transition.to,
        addresses.join(", ")
    );
    for failure in &transition.failures {
        eprintln!("lvs-agent: failed: {failure}");
    }
}

/// How often the loops call [`Supervisor::poll`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
