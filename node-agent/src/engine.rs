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
//! A change of the desired state comes with its [`Scope`]: the services it
//! concerns are planned against the table as the agent last saw it (updated from
//! the operations that succeeded), so it reaches the kernel in milliseconds
//! whatever the table's size, and the host is configured again only when its
//! part of the desired state changed; [`Scope::Full`] (startup) dumps the whole
//! table, plans everything and repairs drift. The periodic resync does the same
//! in steps between the rounds of changes ([`Engine::start_resync`],
//! [`Engine::resync_step`]): the dump on another thread, then the services a
//! slice at a time, then the host; a change waits for one step at most. What the
//! agent owns (services, drains, host changes) lives in a state file, so a
//! restart neither forgets nor flushes anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use lvs_crds::{
    lvs_node::{DirectorState, DirectorVip, LvsNodeSpec, RealServerState},
    virtual_service::Forwarding,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    desired::{DesiredService, Health, desired_service, desired_services_with, service_key, spec_key},
    host::{DeviceAddress, GuePort, HostChanges, HostError, Sysctls, local_routes, real_server, sysctl},
    reconcile::{Drains, KernelTable, Ownership, Plan, apply_to_table, plan_services, plan_table},
    seams::{Dumper, Host, Kernel, NetlinkKernel, SystemHost},
};
use lvs_health::HealthMap;
use lvs_ipvs::{IpvsError, ServiceKey, ipvsadm::op_rule};

/// The state file's format. A file of a later one is not read as this one.
const STATE_VERSION: u32 = 1;

/// What the agent keeps across restarts (`<state-dir>/state.json`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct AgentState {
    /// The format (absent from the first agents' files, which are version 1).
    version: Option<u32>,
    /// Owned services with the drain period they were last desired with.
    owned: Vec<(ServiceKey, Duration)>,
    /// Draining destinations and when each drain started (since the UNIX epoch).
    drains: Vec<(ServiceKey, SocketAddr, Duration)>,
    host: HostChanges,
    /// Written (true) just before a round changes the host, and cleared by that
    /// round's own write: found set at startup, the agent was stopped (killed)
    /// between the two, so changes it made are missing from `host`, and what
    /// is in place of the desired host part is adopted as its own.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    changing_host: bool,
}

/// What a round looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: the kernel's table is dumped again, every service planned, the
    /// host configured (repairs drift). For startup; the periodic resync dumps
    /// beside the rounds instead (see [`Engine::start_resync`]).
    Full,
    /// Only what [`Changed`] names (with the services whose drains are due): those
    /// services are planned against the cached table, the others are not looked
    /// at. The host is configured only if its part of the spec (VIPs, forwarding,
    /// real server VIPs, FullNAT's destinations) differs from the last round's,
    /// and that is looked at only where it may have changed.
    Changed(Changed),
}

/// What a new version of the desired state changed, as its source knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The services whose desired state changed.
    pub services: BTreeSet<ServiceKey>,
    /// Whether the host part (VIPs, forwarding, real server VIPs, VRRP) may
    /// have: a change of services alone leaves it (and its thousands of VIPs)
    /// unread.
    pub host: bool,
}

impl Changed {
    /// These services alone.
    pub fn services(services: BTreeSet<ServiceKey>) -> Self {
        Changed { services, host: false }
    }

    /// From `old` to `new`, when the source does not know: the services compared,
    /// the host part maybe.
    pub fn between(old: &LvsNodeSpec, new: &LvsNodeSpec) -> Self {
        Changed { services: changed_services(old, new), host: true }
    }

    /// Both changes, one after the other.
    pub fn extend(&mut self, later: Changed) {
        self.services.extend(later.services);
        self.host |= later.host;
    }
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// The IPVS operations applied, as ipvsadm lines.
    pub applied: Vec<String>,
    /// Everything that failed, each with its subject.
    pub failures: Vec<Failure>,
    /// When a drain ends and the agent should look again.
    pub next_check: Option<Duration>,
    /// The services whose drains are running (what to plan when `next_check` comes).
    pub draining: BTreeSet<ServiceKey>,
    /// What the round looked at: its failures stand for these, and the earlier
    /// failures of what it did not look at still stand (a report merges them).
    pub looked_at: LookedAt,
}

/// What a round planned and configured (nothing, by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookedAt {
    /// Every service (a full round).
    pub all_services: bool,
    /// These services (a change round, a resync step's slice).
    pub services: BTreeSet<ServiceKey>,
    /// The host part: VIPs, sysctls, real server devices, the masquerade.
    pub host: bool,
}

/// What a failure is about: status reports find their services and VIPs by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An IPVS service: one of its operations, or reading it back.
    Service(ServiceKey),
    /// A VIP this director holds: adding, announcing or routing it.
    DirectorVip(IpAddr),
    /// A VIP this real server binds.
    RealServerVip(IpAddr),
    /// A UDP port this real server receives GUE on.
    GuePort(GuePort),
    /// A director interface's sysctls.
    DirectorSysctls(String),
    /// FullNAT's masquerade table.
    Masquerade,
    /// This host's addresses, as listed or removed.
    HostAddresses,
    /// Putting the host back as it was, once nothing is wanted.
    HostRestore,
    /// The kernel's IPVS table as a whole (a dump).
    IpvsTable,
    /// The agent's state file.
    StateFile,
    /// VRRP instances and the sync daemon.
    Failover,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Service(key) => write!(f, "{key}"),
            Subject::DirectorVip(vip) => write!(f, "director VIP {vip}"),
            Subject::RealServerVip(vip) => write!(f, "real server VIP {vip}"),
            Subject::GuePort(port) => write!(f, "GUE port {port}"),
            Subject::DirectorSysctls(interface) => write!(f, "director sysctls of {interface}"),
            Subject::Masquerade => f.write_str("FullNAT masquerade"),
            Subject::HostAddresses => f.write_str("host addresses"),
            Subject::HostRestore => f.write_str("restoring the host"),
            Subject::IpvsTable => f.write_str("IPVS table"),
            Subject::StateFile => f.write_str("state file"),
            Subject::Failover => f.write_str("failover"),
        }
    }
}

/// Why something failed.
#[derive(Debug, thiserror::Error)]
pub enum FailureError {
    /// The kernel refused an IPVS request, or the IPVS socket failed.
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    /// A host change failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Anything else (the state file, VRRP settings).
    #[error("{0}")]
    Other(String),
}

/// One failure of a round.
#[derive(Debug)]
pub struct Failure {
    pub subject: Subject,
    pub error: FailureError,
}

impl Failure {
    pub fn new(subject: Subject, error: impl Into<FailureError>) -> Self {
        Failure { subject, error: error.into() }
    }
}

impl From<String> for FailureError {
    fn from(text: String) -> Self {
        FailureError::Other(text)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            // An IPVS error names its operation and service itself.
            FailureError::Ipvs(e) => write!(f, "{e}"),
            error => write!(f, "{}: {error}", self.subject),
        }
    }
}

/// The host's part of a spec: what [`Engine::configure_host`] reads. A change
/// round whose spec has the same skips the host.
#[derive(Debug, Clone, PartialEq)]
struct HostInputs {
    director_vips: Option<Vec<DirectorVip>>,
    ip_forward: bool,
    full_nat: Vec<IpAddr>,
    real_server: Option<RealServerState>,
}

impl HostInputs {
    fn of(spec: &LvsNodeSpec) -> Self {
        HostInputs {
            director_vips: spec.director.as_ref().map(|d| d.vips.clone()),
            ip_forward: spec.director.as_ref().is_some_and(|d| d.ip_forward),
            full_nat: spec.director.as_ref().map(full_nat_destinations).unwrap_or_default(),
            real_server: spec.real_server.clone(),
        }
    }

    /// Compared without copying the spec's lists.
    fn matches(&self, spec: &LvsNodeSpec) -> bool {
        let director = spec.director.as_ref();
        self.director_vips.as_deref() == director.map(|d| d.vips.as_slice())
            && self.ip_forward == director.is_some_and(|d| d.ip_forward)
            && self.masquerades_as(spec)
            && self.real_server.as_ref() == spec.real_server.as_ref()
    }

    /// Whether FullNAT masquerades the same destinations (they follow the
    /// services, so a change of services alone may change them).
    fn masquerades_as(&self, spec: &LvsNodeSpec) -> bool {
        let director = spec.director.as_ref();
        if self.full_nat.is_empty() && !director.is_some_and(|d| d.full_nat_masquerade) {
            return true; // no FullNAT before or now: nothing to collect
        }
        self.full_nat == director.map(full_nat_destinations).unwrap_or_default()
    }
}

/// The agent of one network namespace.
pub struct Engine {
    kernel: Box<dyn Kernel>,
    system: Box<dyn Host>,
    state_file: PathBuf,
    state: AgentState,
    exclusive: bool,
    /// The kernel table as last dumped and then changed by the agent.
    table: Option<KernelTable>,
    /// The host part of the spec last configured (failures included).
    host_inputs: Option<HostInputs>,
    /// What the agent owns and drains (the state file's lists, as maps).
    owned: Ownership,
    drains: Drains,
    /// The health checks' verdicts, applied to the desired destinations.
    health: HealthMap,
    /// Whether VRRP decides who holds the VIPs that have a `vrrp` section (a
    /// long-running agent); else this node holds them all (`apply --once`).
    vrrp: bool,
    /// The periodic resync while it runs, and the handle its dumps run on
    /// (opened on the first resync: sockets belong to their creator's namespace).
    resync: Option<Resync>,
    dumper: Option<Arc<dyn Dumper>>,
    /// Why the state file read at start could not be trusted, until the first
    /// full round has reported what it leaves.
    untrusted: Option<String>,
    /// A dry run's engine: the state file is read, never written.
    read_only: bool,
}

/// The periodic resync, in steps between the rounds of changes, so that no
/// change waits for it (its dump alone takes seconds under emulation).
enum Resync {
    /// The kernel's table being dumped on another thread.
    Dumping(ResyncDump),
    /// The services still to plan against the fresh table, a slice per step;
    /// then the host.
    Planning(BTreeSet<ServiceKey>),
}

/// Services planned per step of a resync: a change waits for one step at most
/// (about 3 ms in the emulated lab).
const RESYNC_SLICE: usize = 200;

struct ResyncDump {
    table: mpsc::Receiver<Result<KernelTable, IpvsError>>,
    /// The services that rounds changed meanwhile: the dump may have read them
    /// before or after the change, so the cache's entries (which follow the
    /// rounds' operations) stand for them.
    touched: BTreeSet<ServiceKey>,
}

impl Engine {
    /// Opens the IPVS handle and the state under `state_dir` (created if absent).
    pub fn open(state_dir: &Path, sysctl_root: &Path, exclusive: bool) -> Result<Self> {
        let kernel = NetlinkKernel::connect()?;
        let host = SystemHost::new(Sysctls::new(sysctl_root));
        Self::with(Box::new(kernel), Box::new(host), state_dir, exclusive)
    }

    /// An engine on these seams (the event loop's tests give it in-memory ones),
    /// with its state under `state_dir` (created if absent).
    pub fn with(
        kernel: Box<dyn Kernel>,
        host: Box<dyn Host>,
        state_dir: &Path,
        exclusive: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let state_file = state_dir.join("state.json");
        let (state, untrusted) = read_state(&state_file);
        Ok(Self::from_state(kernel, host, state_file, state, untrusted, exclusive))
    }

    /// An engine that changes nothing of its own: for a dry run, on seams that
    /// only record what they are asked. The state file under `state_dir` is
    /// read (what the agent owns, to plan its removals) when it can be, and
    /// neither moved aside nor written.
    pub fn read_only(
        kernel: Box<dyn Kernel>,
        host: Box<dyn Host>,
        state_dir: &Path,
        exclusive: bool,
    ) -> Self {
        let state_file = state_dir.join("state.json");
        let state = parse_state(&state_file).unwrap_or_else(|why| {
            warn!(file = %state_file.display(), reason = %why, "planning as if the agent owned nothing");
            AgentState::default()
        });
        let mut engine = Self::from_state(kernel, host, state_file, state, None, exclusive);
        engine.read_only = true;
        engine
    }

    fn from_state(
        kernel: Box<dyn Kernel>,
        host: Box<dyn Host>,
        state_file: PathBuf,
        mut state: AgentState,
        untrusted: Option<String>,
        exclusive: bool,
    ) -> Self {
        if let Some(why) = &untrusted {
            warn!(
                file = %state_file.display(),
                reason = %why,
                "the state file cannot be trusted: starting with nothing owned (what is desired is adopted, the rest left in place and reported)"
            );
            state.host.adopt = true;
        }
        if state.changing_host {
            info!(
                "the last run stopped while changing the host: what is in place of the desired host part is adopted"
            );
            state.host.adopt = true;
        }
        let owned = Ownership(state.owned.iter().copied().collect());
        let drains = Drains(state.drains.iter().map(|(k, a, t)| ((*k, *a), *t)).collect());
        Engine {
            kernel,
            system: host,
            state_file,
            state,
            owned,
            drains,
            exclusive,
            table: None,
            host_inputs: None,
            health: HealthMap::default(),
            vrrp: false,
            resync: None,
            dumper: None,
            untrusted,
            read_only: false,
        }
    }

    /// The health checks' latest verdicts, for the next rounds. A round whose
    /// scope is a set of services applies them to those services only.
    pub fn set_health(&mut self, health: HealthMap) {
        self.health = health;
    }

    /// Leaves the VIPs with a `vrrp` section to VRRP (see [`crate::failover`]):
    /// the engine neither takes nor removes them, but prepares their interfaces.
    pub fn set_vrrp(&mut self, vrrp: bool) {
        self.vrrp = vrrp;
    }

    /// The kernel table as the engine last saw it: dumped at the last full
    /// round, then updated with its own changes.
    pub fn table(&self) -> Option<&KernelTable> {
        self.table.as_ref()
    }

    /// Makes the kernel and the host match `spec`, looking at what `scope` says
    /// changed (see [`Scope`]). Without a cached table, any scope is full.
    pub fn reconcile(&mut self, spec: &LvsNodeSpec, scope: Scope) -> Round {
        let (keys, host) = match scope {
            Scope::Changed(changed) if self.table.is_some() => (Some(changed.services), changed.host),
            _ => (None, true),
        };
        match &keys {
            None => {
                // A resync's dump in flight is older than this one. The old cache
                // goes first: two tables at once would be the agent's peak.
                (self.resync, self.table) = (None, None);
                match self.kernel.dump() {
                    Ok(table) => self.table = Some(table),
                    Err(e) => {
                        return Round {
                            failures: vec![Failure::new(Subject::IpvsTable, e)],
                            ..Round::default()
                        };
                    }
                }
            }
            Some(keys) => {
                if let Some(Resync::Dumping(dump)) = &mut self.resync {
                    dump.touched.extend(keys.iter().copied());
                }
            }
        }
        self.round(spec, keys, host)
    }

    /// Starts the periodic resync: the kernel's table is dumped on another
    /// thread while rounds go on; [`Self::resync_step`] does the rest. Nothing
    /// to do while one runs.
    ///
    /// `dumped` is called once the dump is in (or failed): the next
    /// [`Self::resync_step`] takes it. The caller waits for that, it need not ask.
    pub fn start_resync(&mut self, dumped: impl FnOnce() + Send + 'static) {
        if self.resync.is_some() {
            return;
        }
        let (sender, table) = mpsc::channel();
        let dumper = match &self.dumper {
            Some(dumper) => Ok(Arc::clone(dumper)),
            None => self.kernel.dumper().map(|dumper| Arc::clone(self.dumper.insert(dumper))),
        };
        match dumper {
            Ok(dumper) => drop(std::thread::spawn(move || {
                let _ = sender.send(dumper.dump());
                dumped();
            })),
            // Reported by the next step, as a failed dump would be.
            Err(e) => {
                drop(sender.send(Err(e)));
                dumped();
            }
        }
        self.resync = Some(Resync::Dumping(ResyncDump { table, touched: BTreeSet::new() }));
    }

    /// Whether a resync runs (started, not finished).
    pub fn resyncing(&self) -> bool {
        self.resync.is_some()
    }

    /// Whether the running resync has work to do now (its dump is in): the
    /// caller takes [`Self::resync_step`]s between its other work until it has not.
    pub fn resync_ready(&self) -> bool {
        matches!(self.resync, Some(Resync::Planning(_)))
    }

    /// The host, for what the agent does on it beside the rounds (VRRP's VIPs).
    pub fn host(&self) -> &dyn Host {
        &*self.system
    }

    /// The kernel, for what the agent does in it beside the rounds (sync daemons).
    pub fn kernel(&self) -> &dyn Kernel {
        &*self.kernel
    }

    /// The host's changes as recorded, with the host to change it further
    /// (VRRP's VIPs). The state file is written again only with the next round's.
    pub fn host_changes(&mut self) -> (&dyn Host, &mut HostChanges) {
        (&*self.system, &mut self.state.host)
    }

    /// One step of the running resync, a few milliseconds' work, if there is one
    /// to take: once the dump is in, it becomes the cache (the services changed
    /// meanwhile keep their cached entries) and every service is planned against
    /// it, a slice per step (drift repaired); the last step configures the host.
    /// The rounds of the steps are returned.
    pub fn resync_step(&mut self, spec: &LvsNodeSpec, health: impl FnOnce() -> HealthMap) -> Option<Round> {
        match self.resync.as_mut()? {
            Resync::Dumping(dump) => {
                let dumped = match dump.table.try_recv() {
                    Ok(dumped) => dumped,
                    Err(mpsc::TryRecvError::Empty) => return None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.resync = None;
                        let lost = "the resync's dump ended without a table".to_string();
                        return Some(self.idle_round(vec![Failure::new(Subject::IpvsTable, lost)]));
                    }
                };
                let touched = std::mem::take(&mut dump.touched);
                self.resync = None;
                let mut table = match dumped {
                    Ok(table) => table,
                    Err(e) => return Some(self.idle_round(vec![Failure::new(Subject::IpvsTable, e)])),
                };
                let Some(cached) = &self.table else {
                    // No cache to stand for the touched services: dump again, here.
                    self.set_health(health());
                    return Some(self.reconcile(spec, Scope::Full));
                };
                for key in touched {
                    match cached.get(&key) {
                        Some(entry) => table.insert(key, entry.clone()),
                        None => table.remove(&key),
                    };
                }
                // Everything a full plan looks at: the kernel's, the owned and the desired services.
                let mut keys: BTreeSet<ServiceKey> =
                    table.keys().chain(self.owned.0.keys()).copied().collect();
                keys.extend(
                    spec.director.iter().flat_map(|d| &d.services).filter_map(|s| service_key(&s.key)),
                );
                self.table = Some(table);
                self.resync = Some(Resync::Planning(keys));
                None
            }
            // A round dropped the cache meanwhile: a full round, here.
            Resync::Planning(_) if self.table.is_none() => {
                self.set_health(health());
                Some(self.reconcile(spec, Scope::Full))
            }
            Resync::Planning(remaining) if remaining.is_empty() => {
                self.resync = None;
                // The host, as a full round configures it (the state file
                // written again only if that changed what it records).
                let mut round = self.idle_round(Vec::new());
                let recorded = self.state.host.clone();
                self.configure_host(spec, &mut round);
                if self.state.host != recorded {
                    self.save(&mut round);
                }
                Some(round)
            }
            Resync::Planning(remaining) => {
                let slice: BTreeSet<ServiceKey> =
                    std::iter::from_fn(|| remaining.pop_first()).take(RESYNC_SLICE).collect();
                self.set_health(health());
                // The host's turn is the last step's.
                Some(self.round(spec, Some(slice), false))
            }
        }
    }

    /// A round that applies nothing: these failures, the drains as they run.
    fn idle_round(&self, failures: Vec<Failure>) -> Round {
        let mut round = Round { failures, ..Round::default() };
        self.schedule_drains(&mut round);
        round
    }

    /// Plans the services `keys` (all with `None`) against the cached table,
    /// applies the plan and configures the host when due (`host`: whether its
    /// part of the spec may have changed).
    fn round(&mut self, spec: &LvsNodeSpec, keys: Option<BTreeSet<ServiceKey>>, host: bool) -> Round {
        let mut round = Round::default();
        match &keys {
            None => round.looked_at.all_services = true,
            Some(keys) => round.looked_at.services.clone_from(keys),
        }
        // Whether the state file changes: it holds ownership and drains, not
        // weights, so an edit alone does not rewrite it (megabytes at 10,000
        // services, longer to write than the edit takes).
        let (plan, changed_state) = match &keys {
            Some(keys) => {
                // Only the keys' part of what is owned and drained: a change round
                // costs what the change touches, whatever the table's size.
                let owned =
                    Ownership(keys.iter().filter_map(|k| Some((*k, *self.owned.0.get(k)?))).collect());
                let drains = Drains(
                    self.drains
                        .0
                        .iter()
                        .filter(|((k, _), _)| keys.contains(k))
                        .map(|(d, t)| (*d, *t))
                        .collect(),
                );
                let desired =
                    spec.director.as_ref().map(|d| desired_of(d, keys, &self.health)).unwrap_or_default();
                let table = self.table.as_ref().expect("a round has a table");
                let mut plan = plan_services(keys, &desired, table, &owned, &drains, now(), self.exclusive);
                // The cache's connection counts are those of its last reading: a
                // destination idle there may have connections now, and deleting it
                // would cut them instead of draining. A plan that deletes is made
                // again on the kernel's counts of those services.
                let deleting = deleted_services(&plan);
                if !deleting.is_empty() {
                    if let Err(e) = self.refresh(&deleting) {
                        round.failures.push(Failure::new(Subject::IpvsTable, e));
                        return round;
                    }
                    let table = self.table.as_ref().expect("refreshed");
                    plan = plan_services(keys, &desired, table, &owned, &drains, now(), self.exclusive);
                }
                let changed = owned != plan.owned || drains != plan.drains;
                (plan, changed)
            }
            None => {
                let desired = spec
                    .director
                    .as_ref()
                    .map(|d| desired_services_with(d, &self.health))
                    .unwrap_or_default();
                let table = self.table.as_ref().expect("a round has a table");
                let plan = plan_table(&desired, table, &self.owned, &self.drains, now(), self.exclusive);
                let changed = self.owned != plan.owned || self.drains != plan.drains;
                (plan, changed)
            }
        };
        // After a state file that could not be trusted, the first full round
        // names the services it leaves: in the kernel, neither desired nor
        // known to be the agent's.
        let untrusted = if keys.is_none() { self.untrusted.take() } else { None };
        if let Some(why) = &untrusted {
            round.failures.push(Failure::new(Subject::StateFile, why.clone()));
            let table = self.table.as_ref().expect("a round has a table");
            for key in table.keys().filter(|key| !plan.owned.0.contains_key(key)) {
                let left = format!("left in place: not known to be the agent's (the state file {why})");
                round.failures.push(Failure::new(Subject::Service(*key), left));
            }
        }
        self.apply(&plan, &mut round);
        self.keep(plan, keys.as_ref(), &mut round);
        let host_due = keys.is_none()
            || !self.host_inputs.as_ref().is_some_and(|inputs| match host {
                true => inputs.matches(spec),
                false => inputs.masquerades_as(spec),
            });
        if host_due {
            // Written ahead: a kill during the changes leaves a mark that makes
            // the next start adopt them (they are not recorded yet).
            self.state.changing_host = true;
            self.save(&mut round);
            self.configure_host(spec, &mut round);
            self.state.changing_host = false;
        }
        if untrusted.is_some() || host_due {
            // Adopted what the host had of the desired part; from now on, as recorded.
            self.state.host.adopt = false;
        }
        if changed_state || host_due || untrusted.is_some() {
            self.save(&mut round);
        }
        round
    }

    /// Reads `keys` again from the kernel into the cached table. When the kernel
    /// cannot be read, the cache goes (the next round dumps the table).
    fn refresh(&mut self, keys: &BTreeSet<ServiceKey>) -> Result<(), IpvsError> {
        let table = self.table.as_mut().expect("a round has a table");
        for key in keys {
            match self.kernel.service(key) {
                Ok(Some(service)) => table.insert(*key, service),
                Ok(None) => table.remove(key),
                Err(e) => {
                    self.table = None;
                    return Err(e);
                }
            };
        }
        Ok(())
    }

    fn apply(&mut self, plan: &Plan, round: &mut Round) {
        let report = self.kernel.apply(&plan.ops);
        let failed: BTreeSet<usize> = report.failures.iter().map(|(i, _)| *i).collect();
        round.failures.extend(report.failures.into_iter().map(|(i, e)| match plan.ops[i].service_key() {
            Some(key) => Failure::new(Subject::Service(key), e),
            None => Failure::new(Subject::IpvsTable, e),
        }));
        round.applied = plan
            .ops
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains(i))
            .map(|(_, op)| op_rule(op))
            .collect();
        // The cache follows the operations that succeeded, without reading the
        // kernel back; a service with a failed operation is read back, since what
        // the kernel made of the rest of its operations is unsure.
        let unsure: BTreeSet<ServiceKey> = failed.iter().filter_map(|i| plan.ops[*i].service_key()).collect();
        let Some(table) = self.table.as_mut() else { return };
        let succeeded =
            plan.ops.iter().filter(|op| op.service_key().is_none_or(|key| !unsure.contains(&key)));
        apply_to_table(table, succeeded);
        for key in unsure {
            table.remove(&key);
            let refreshed = self.kernel.service(&key).map(|service| {
                if let Some(service) = service {
                    table.insert(key, service);
                }
            });
            if refreshed.is_err() {
                self.table = None; // dump it all next time
                return;
            }
        }
    }

    /// VIPs, sysctls and the FullNAT masquerade for `spec`; everything the agent
    /// added that `spec` no longer wants is removed, and once nothing is wanted
    /// the host is put back as it was. Addresses go in batches (one listing, one
    /// batch of route lookups, one of adds, one of removals), sysctls once per device.
    fn configure_host(&mut self, spec: &LvsNodeSpec, round: &mut Round) {
        round.looked_at.host = true;
        let failures_before = round.failures.len();
        let changes = &mut self.state.host;
        let system = &*self.system;
        let mut wanted: BTreeSet<DeviceAddress> = BTreeSet::new();
        let mut fail = |subject: Subject, e: HostError| round.failures.push(Failure::new(subject, e));

        let real_server_vips = spec.real_server.as_ref().map_or(&[][..], |r| &r.vips);
        wanted.extend(real_server::vip_addresses(real_server_vips));
        for (vip, e) in system.configure_real_server(changes, real_server_vips) {
            fail(Subject::RealServerVip(vip), e);
        }
        for (port, e) in system.close_unused_gue_ports(changes, real_server_vips) {
            fail(Subject::GuePort(port), e);
        }
        if let Some(director) = &spec.director {
            // One address listing per round; a VIP already in place costs nothing
            // more. A director's VIP on `lo` is not in place (it does not answer
            // ARP); one under the agent's own local route is (on its device).
            let addressed: BTreeMap<IpAddr, String> = match system.local_addresses() {
                Ok(present) => {
                    present.into_iter().filter(|a| a.device != "lo").map(|a| (a.address, a.device)).collect()
                }
                Err(e) => {
                    fail(Subject::HostAddresses, e);
                    BTreeMap::new()
                }
            };
            // Where each VIP is held (by address or route), which is its device.
            let mut held = addressed.clone();
            for vip in &director.vips {
                if !held.contains_key(&vip.address)
                    && let Some(device) = local_routes::routed_device(changes, vip.address)
                {
                    held.insert(vip.address, device.to_string());
                }
            }
            let unrouted: Vec<_> = director
                .vips
                .iter()
                .filter(|vip| vip.interface.is_none() && !held.contains_key(&vip.address))
                .map(|vip| vip.address)
                .collect();
            let mut routes: BTreeMap<_, _> =
                unrouted.iter().copied().zip(system.route_devices(&unrouted)).collect();
            let mut configured_interfaces: BTreeMap<String, bool> = BTreeMap::new();
            // The VIPs this round holds, and those it leaves as they are (VRRP's,
            // or on an interface whose sysctls failed).
            let mut to_hold = BTreeSet::new();
            let mut left = BTreeSet::new();
            for vip in &director.vips {
                let interface = match (&vip.interface, held.get(&vip.address)) {
                    (Some(interface), _) | (None, Some(interface)) => interface.clone(),
                    (None, None) => match routes.remove(&vip.address) {
                        Some(Ok(interface)) => interface,
                        Some(Err(e)) => {
                            fail(Subject::DirectorVip(vip.address), e);
                            continue;
                        }
                        None => continue, // listed twice; done the first time
                    },
                };
                let vip_address = DeviceAddress { device: interface.clone(), address: vip.address };
                if to_hold.contains(&vip_address) || left.contains(&vip_address) {
                    continue;
                }
                let ready =
                    *configured_interfaces.entry(interface.clone()).or_insert_with(
                        || match director_sysctls(changes, system, director, &interface) {
                            Ok(()) => true,
                            Err(e) => {
                                fail(Subject::DirectorSysctls(interface.clone()), e);
                                false
                            }
                        },
                    );
                // VRRP takes and releases its VIPs itself, as it changes state.
                let by_vrrp = self.vrrp && vip.vrrp.is_some();
                if ready && !by_vrrp {
                    to_hold.insert(vip_address);
                } else {
                    left.insert(vip_address);
                }
            }
            let holdings = local_routes::holdings(&to_hold);
            let (added, failed) = system.add_routes(changes, &holdings.routes);
            for (route, e) in failed {
                for vip in
                    to_hold.iter().filter(|v| v.device == route.device && route.block.contains(&v.address))
                {
                    fail(Subject::DirectorVip(vip.address), e.clone());
                }
            }
            let routed: Vec<DeviceAddress> = to_hold
                .iter()
                .filter(|v| added.iter().any(|r| r.device == v.device && r.block.contains(&v.address)))
                .cloned()
                .collect();
            for (vip, e) in system.announce(&routed) {
                fail(Subject::DirectorVip(vip.address), e);
            }
            let (to_take, in_place): (Vec<DeviceAddress>, Vec<DeviceAddress>) = holdings
                .addresses
                .iter()
                .cloned()
                .partition(|a| addressed.get(&a.address) != Some(&a.device));
            if changes.adopt {
                changes.addresses.extend(in_place);
            }
            for (vip, e) in system.take_vips(changes, &to_take) {
                fail(Subject::DirectorVip(vip.address), e);
            }
            let stale_routes: Vec<_> =
                changes.routes.iter().filter(|r| !holdings.routes.contains(r)).cloned().collect();
            for (_, e) in system.remove_routes(changes, &stale_routes) {
                fail(Subject::HostAddresses, e);
            }
            wanted.extend(holdings.addresses);
            wanted.extend(left);
            let full_nat = full_nat_destinations(director);
            if let Err(e) = system.masquerade(changes, &full_nat) {
                fail(Subject::Masquerade, e);
            }
        }
        let stale: Vec<DeviceAddress> =
            changes.addresses.iter().filter(|a| !wanted.contains(*a)).cloned().collect();
        for (_, e) in system.remove_addresses(changes, &stale) {
            fail(Subject::HostAddresses, e);
        }
        let wants_nothing =
            spec.director.is_none() && spec.real_server.as_ref().is_none_or(|r| r.vips.is_empty());
        if wants_nothing
            && !changes.is_empty()
            && let Err(e) = system.restore(changes)
        {
            fail(Subject::HostRestore, e);
        }
        // Recorded even when some of it failed: a change round that leaves the
        // host part as it is does not redo the host (thousands of VIPs) for
        // another service's weight; the failures are retried at the resync.
        // Unless answers were lost: then what the host holds is unknown, and the
        // next round, whatever it changes, reads the host again and configures it.
        let unknown = round.failures[failures_before..]
            .iter()
            .any(|f| matches!(&f.error, FailureError::Host(e) if e.outcome_unknown()));
        self.host_inputs = (!unknown).then(|| HostInputs::of(spec));
    }

    /// Takes the plan's ownership and drains: all of them after a full round,
    /// those of `keys` after a change round. Drops the plan (before the host's
    /// turn, which has its own thousands of messages).
    fn keep(&mut self, plan: Plan, keys: Option<&BTreeSet<ServiceKey>>, round: &mut Round) {
        match keys {
            None => (self.owned, self.drains) = (plan.owned, plan.drains),
            Some(keys) => {
                for key in keys {
                    self.owned.0.remove(key);
                }
                self.owned.0.extend(plan.owned.0);
                self.drains.0.retain(|(key, _), _| !keys.contains(key));
                self.drains.0.extend(plan.drains.0);
            }
        }
        self.schedule_drains(round);
    }

    /// When the first drain ends (each runs its service's owned period, as the
    /// planner counts it) and which services drain, from what the engine keeps:
    /// the same whatever part of the table the round planned.
    fn schedule_drains(&self, round: &mut Round) {
        let end = |&(key, _): &(ServiceKey, SocketAddr), start: &Duration| {
            start.saturating_add(self.owned.0.get(&key).copied().unwrap_or_default())
        };
        round.next_check = self.drains.0.iter().map(|(drain, start)| end(drain, start)).min();
        round.draining = self.drains.0.keys().map(|(key, _)| *key).collect();
    }

    /// Writes the state file; a failure is the round's.
    fn save(&mut self, round: &mut Round) {
        if let Err(e) = self.write_state() {
            round.failures.push(Failure::new(Subject::StateFile, format!("{e:#}")));
        }
    }

    fn write_state(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.state.version = Some(STATE_VERSION);
        self.state.owned = self.owned.0.iter().map(|(k, d)| (*k, *d)).collect();
        self.state.drains = self.drains.0.iter().map(|((k, a), t)| (*k, *a, *t)).collect();
        write_durably(&self.state_file, &serde_json::to_vec(&self.state)?)
    }
}

/// The state file, or (with the default state) why it cannot be trusted:
/// unreadable, not a state file (empty, truncated, corrupt), or of a later
/// format. Such a file is moved aside to `state.json.untrusted` for a look; the
/// agent then starts owning nothing, so it deletes nothing it cannot prove is
/// its own.
fn read_state(state_file: &Path) -> (AgentState, Option<String>) {
    let why = match parse_state(state_file) {
        Ok(state) => return (state, None),
        Err(why) => why,
    };
    let aside = state_file.with_extension("json.untrusted");
    let why = match std::fs::rename(state_file, &aside) {
        Ok(()) => format!("{why}; moved aside to {}", aside.display()),
        Err(e) => format!("{why}; could not be moved aside: {e}"),
    };
    (AgentState::default(), Some(why))
}

/// The state file as it is (none: the default state), or why it cannot be
/// trusted: unreadable, not a state file, or of a later format.
fn parse_state(state_file: &Path) -> Result<AgentState, String> {
    match std::fs::read(state_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
        Err(e) => Err(format!("could not be read: {e}")),
        Ok(bytes) => match serde_json::from_slice::<AgentState>(&bytes) {
            Ok(state) if state.version.unwrap_or(1) <= STATE_VERSION => Ok(state),
            Ok(state) => Err(format!(
                "is of a later format (version {}, this agent reads {STATE_VERSION})",
                state.version.unwrap_or_default()
            )),
            Err(e) => Err(format!("is not a state file ({e})")),
        },
    }
}

/// Writes `bytes` to `file` so that a crash or a power loss leaves either the
/// old file or the new one, whole: a temporary file, synced, renamed over it,
/// and the directory synced (which makes the rename durable). A failed write
/// (a full disk) leaves the old file and removes the temporary one.
pub(crate) fn write_durably(file: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let partial = file.with_extension("json.partial");
    let written = std::fs::File::create(&partial).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("writing {}", partial.display()));
    }
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    let directory = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(directory)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", directory.display()))
}

/// The services of which `plan` deletes destinations, or which it deletes.
fn deleted_services(plan: &Plan) -> BTreeSet<ServiceKey> {
    plan.ops
        .iter()
        .filter_map(|op| match op {
            lvs_ipvs::IpvsOp::DeleteDestination(key, _) | lvs_ipvs::IpvsOp::DeleteService(key) => Some(*key),
            _ => None,
        })
        .collect()
}

/// The director's sysctls for `interface`, by how it forwards.
fn director_sysctls(
    changes: &mut HostChanges,
    system: &dyn Host,
    director: &DirectorState,
    interface: &str,
) -> Result<(), HostError> {
    let forwarding = match (director.full_nat_masquerade, director.ip_forward) {
        (true, _) => sysctl::Forwarding::FullNat,
        (false, true) => sysctl::Forwarding::Nat,
        (false, false) => sysctl::Forwarding::DirectRouting,
    };
    system.director_sysctls(changes, forwarding, interface)
}

/// The real servers of FullNAT services, which the director masquerades to.
fn full_nat_destinations(director: &DirectorState) -> Vec<IpAddr> {
    if !director.full_nat_masquerade {
        return Vec::new(); // no FullNAT service
    }
    let mut addresses: Vec<IpAddr> = director
        .services
        .iter()
        .flat_map(|s| &s.destinations)
        .filter(|d| d.forwarding == Forwarding::FullNat)
        .map(|d| d.address)
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The services whose desired state differs between two specs: a new version's
/// [`Scope::Changed`] when the caller does not know what changed.
pub fn changed_services(old: &LvsNodeSpec, new: &LvsNodeSpec) -> BTreeSet<ServiceKey> {
    let (old, new) = (services_by_key(old), services_by_key(new));
    let differs = |key: &ServiceKey| old.get(key) != new.get(key);
    old.keys().chain(new.keys()).filter(|key| differs(key)).copied().collect()
}

fn services_by_key(spec: &LvsNodeSpec) -> BTreeMap<ServiceKey, &lvs_crds::lvs_node::IpvsService> {
    let services = spec.director.iter().flat_map(|d| &d.services);
    services.filter_map(|s| Some((service_key(&s.key)?, &**s))).collect()
}

/// The desired services of `keys` alone (a change that concerns only them).
fn desired_of(
    director: &DirectorState,
    keys: &BTreeSet<ServiceKey>,
    health: &dyn Health,
) -> Vec<DesiredService> {
    let services = &director.services;
    // The translations list services by key: each is found by a search (a
    // change costs what it touches), else by a look at every one.
    let find = |key: &ServiceKey| {
        let found = spec_key(key).and_then(|wanted| services.binary_search_by(|s| s.key.cmp(&wanted)).ok());
        match found {
            Some(at) => Some(&services[at]),
            None => services.iter().find(|s| service_key(&s.key).as_ref() == Some(key)),
        }
    };
    let mut desired: Vec<DesiredService> =
        keys.iter().filter_map(find).filter_map(|s| desired_service(s, health)).collect();
    desired.sort_by_key(|d| d.service.key);
    desired
}

/// The time since the UNIX epoch, as drains are recorded.
pub fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    /// A director's spec with one TCP service per `(vip, weight of its one
    /// destination)`, on port 80, and `vips` as its VIPs.
    fn director_spec(services: &[(&str, u16)], vips: &[&str]) -> LvsNodeSpec {
        let services: String = services
            .iter()
            .map(|(vip, weight)| {
                format!(
                    "\n    - owner: {{namespace: default, name: web, uid: u1, generation: 1}}\
                     \n      key: {{family: IPv4, address: '{vip}', port: 80, protocol: TCP}}\
                     \n      scheduler: rr\
                     \n      destinations: [{{address: 198.51.100.1, port: 80, weight: {weight}, forwarding: DirectRouting}}]"
                )
            })
            .collect();
        let vips: Vec<String> = vips.iter().map(|vip| format!("{{address: '{vip}'}}")).collect();
        let yaml = format!("node: lvs1\ndirector:\n  vips: [{}]\n  services:{services}", vips.join(", "));
        lvs_crds::yaml::from_str(&yaml).expect("a valid spec")
    }

    fn key(vip: &str) -> ServiceKey {
        ServiceKey::tcp(SocketAddr::new(vip.parse().unwrap(), 80))
    }

    #[test]
    fn changed_services_are_those_added_removed_or_modified() {
        let old = director_spec(&[("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)], &["192.0.2.1"]);
        // .1 unchanged, .2 removed, .3 modified (a weight), .4 added.
        let new = director_spec(&[("192.0.2.1", 1), ("192.0.2.3", 5), ("192.0.2.4", 1)], &["192.0.2.1"]);
        let expected: BTreeSet<ServiceKey> = [key("192.0.2.2"), key("192.0.2.3"), key("192.0.2.4")].into();
        assert_eq!(changed_services(&old, &new), expected);
        assert_eq!(changed_services(&new, &old), expected, "symmetric");
        assert_eq!(changed_services(&old, &old), BTreeSet::new(), "nothing changed");

        // A change of the host part alone changes no service.
        let other_vips =
            director_spec(&[("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)], &["192.0.2.9"]);
        assert_eq!(changed_services(&old, &other_vips), BTreeSet::new());
        // No director at all: every service of the other is a change.
        let none = LvsNodeSpec { node: "lvs1".into(), ..LvsNodeSpec::default() };
        assert_eq!(
            changed_services(&none, &old),
            [key("192.0.2.1"), key("192.0.2.2"), key("192.0.2.3")].into()
        );
    }

    #[test]
    fn a_change_found_by_comparison_may_concern_the_host() {
        let old = director_spec(&[("192.0.2.1", 1)], &[]);
        let new = director_spec(&[("192.0.2.1", 2)], &[]);
        // The comparison does not look at the host part: it may have changed.
        let between = Changed::between(&old, &new);
        assert_eq!((between.services, between.host), ([key("192.0.2.1")].into(), true));
        assert!(Changed::between(&old, &old).host, "even when nothing did");
        // Named services alone leave the host; a later change that may concern it wins.
        let mut changed = Changed::services([key("192.0.2.2")].into());
        assert!(!changed.host);
        changed.extend(Changed::between(&old, &new));
        assert_eq!((changed.services, changed.host), ([key("192.0.2.1"), key("192.0.2.2")].into(), true));
    }
}
