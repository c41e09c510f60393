//! Cluster mode (`lvs-agent run`): the node's desired state comes from its
//! LvsNode objects, and the agent reports back in their status.
//!
//! ```text
//! watch LvsNodes (label lvs.dev/node=<node>) ─> assemble chunks ─> agent loop ─> kernel, host
//!                                                                   │ Round
//!                                status of each chunk (if changed) <┘
//! kernel table at scrape time ─> /metrics
//! ```
//!
//! Cluster mode is a source and a sink of the agent's loop
//! ([`crate::supervisor`]): the watch sends each version of the node's desired
//! state as an input, and each round goes to the status writer. The loop is
//! synchronous and owns the netlink socket, so it runs on its own thread;
//! everything that talks to the API server is async.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use axum::{Router, extract::State, http::StatusCode, routing::get};
use futures::StreamExt;
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use lvs_crds::{
    LvsNode, LvsNodeStatus,
    lvs_node::{DestinationReport, LvsNodeSpec, NODE_LABEL, ServiceReport, VipReport},
    translate::assemble,
    virtual_service::VrrpState,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::json;

use crate::{
    engine::{Changed, Engine, Round, Subject},
    supervisor::{DesiredState, Input, Sink, Supervisor, Why},
};
use lvs_health::{CheckerStats, HealthMap};
use lvs_ipvs::{DestinationEntry, IpvsHandle, ServiceKey, Stats, ipvsadm::TableEntry};
use tracing::{info, warn};

/// The field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "lvs-agent";

/// `lvs-agent run`'s options.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub node_name: String,
    pub state_dir: PathBuf,
    pub sysctl_root: PathBuf,
    pub exclusive: bool,
    pub resync: Duration,
    pub metrics_address: SocketAddr,
    /// Absent: `KUBECONFIG`, `~/.kube/config`, or the in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
}

/// One version of the node's desired state: the objects it came from and their
/// assembled spec.
#[derive(Debug, Clone)]
pub struct Desired {
    pub objects: Vec<Arc<LvsNode>>,
    pub spec: LvsNodeSpec,
}

/// Each version from the watch replaces the last.
impl DesiredState for Arc<Desired> {
    type Update = Arc<Desired>;

    fn spec(&self) -> &LvsNodeSpec {
        &self.spec
    }

    fn update(&mut self, new: Arc<Desired>) -> Changed {
        let changed = Changed::between(&self.spec, &new.spec);
        *self = new;
        changed
    }
}

impl Desired {
    /// The node's state from `objects` (any node's): `None` while its chunks do
    /// not form one revision; no object at all is the empty state, which makes
    /// the engine remove what it owns and restore the host.
    pub fn of(node: &str, objects: Vec<Arc<LvsNode>>) -> Option<Desired> {
        let mut objects: Vec<Arc<LvsNode>> = objects.into_iter().filter(|o| o.spec.node == node).collect();
        objects.sort_by_key(|o| o.spec.chunk);
        let spec = if objects.is_empty() {
            LvsNodeSpec { node: node.into(), chunks: 1, ..LvsNodeSpec::default() }
        } else {
            assemble(objects.iter().map(|o| &o.spec))?
        };
        Some(Desired { objects, spec })
    }

    /// What tells two versions apart: the revision and each object's generation.
    fn version(&self) -> (&str, Vec<(String, Option<i64>)>) {
        let generations = self.objects.iter().map(|o| (o.name_any(), o.metadata.generation)).collect();
        (&self.spec.revision, generations)
    }
}

/// Runs the agent until SIGTERM or SIGINT. Stopping leaves the kernel and the
/// host as they are: a restarted agent takes over without a flush.
pub async fn run(options: RunOptions) -> Result<()> {
    let client = client(options.kubeconfig.as_ref()).await?;
    let engine = Engine::open(&options.state_dir, &options.sysctl_root, options.exclusive)?;
    let metrics = Arc::new(AgentMetrics::default());
    let (inputs_tx, inputs) = mpsc::channel();
    let (reporter, reports) = report_slot();
    let engine_metrics = Arc::clone(&metrics);
    let resync = options.resync;
    // Health checks and VRRP run on this runtime, the loop on its own thread.
    let handle = tokio::runtime::Handle::current();
    let agent = Supervisor::new(engine, handle, &inputs_tx);
    let engine_thread = std::thread::Builder::new().name("engine".into()).spawn(move || {
        let mut sink = StatusSink { reporter, metrics: engine_metrics };
        // Replaced by the first version the watch sends, before any round.
        let none_yet = Arc::new(Desired { objects: Vec::new(), spec: LvsNodeSpec::default() });
        agent.run(none_yet, &inputs, &mut sink, resync);
    })?;

    let api: Api<LvsNode> = Api::all(client);
    let write_statuses = write_statuses(reports, StatusWriter::new(api.clone()));
    let listener = tokio::net::TcpListener::bind(options.metrics_address)
        .await
        .with_context(|| format!("listening on {}", options.metrics_address))?;
    info!(node = %options.node_name, metrics = %options.metrics_address, "started");
    let result = tokio::select! {
        result = watch_desired(api, &options.node_name, inputs_tx.clone()) => result,
        () = write_statuses => Err(anyhow::anyhow!("the engine thread stopped")),
        result = axum::serve(listener, router(Endpoints::new(metrics, resync))) => result.context("serving /metrics"),
        () = shutdown_signal() => Ok(()),
    };
    // A graceful exit: VRRP masters hand their VIPs over at once.
    let _ = inputs_tx.send(Input::Stop);
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    result
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Watches the node's LvsNode objects and sends each new version of its desired
/// state to the engine. Returns (an error) only when the engine or the watch
/// is gone; watch errors are logged and retried with backoff.
async fn watch_desired(
    api: Api<LvsNode>,
    node: &str,
    engine: mpsc::Sender<Input<Arc<Desired>>>,
) -> Result<()> {
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{NODE_LABEL}={node}"));
    let mut events = watcher(api, config).default_backoff().reflect(writer).boxed();
    let mut sent: Option<Arc<Desired>> = None;
    while let Some(event) = events.next().await {
        match event {
            // Until the list is complete the store is partial: an absent chunk
            // must not read as a deletion.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
            Err(error) => {
                warn!(%error, "watching LvsNodes");
                continue;
            }
        }
        let Some(desired) = Desired::of(node, store.state()).map(Arc::new) else { continue };
        // Status writes come back as events: only a new version goes on.
        if sent.as_ref().is_some_and(|s| s.version() == desired.version()) {
            continue;
        }
        // A whole version: the loop compares it with the one it applies.
        if engine.send(Input::Desired(Arc::clone(&desired))).is_err() {
            anyhow::bail!("the engine thread stopped");
        }
        sent = Some(desired);
    }
    anyhow::bail!("the LvsNode watch ended")
}

/// The node's whole picture after a round, for the status writer: the desired
/// state, the failures that stand (this round's and the earlier ones of what it
/// did not look at), what the agent observed after it. A report stands alone,
/// so the latest replaces any the writer has not taken yet.
#[derive(Debug)]
pub struct Report {
    pub desired: Arc<Desired>,
    pub standing: Standing,
    pub observed: Observed,
}

/// The failures that stand after the rounds so far. A round replaces those of
/// what it looked at ([`crate::engine::LookedAt`]): a change round its services, a resync
/// step its slice, a round that configured the host the host's, and also those
/// of the IPVS table, the state file and failover (which the next look at the
/// host, at the latest at the end of a resync, reports again if they last).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// Each service's failures, by service.
    services: BTreeMap<ServiceKey, Vec<String>>,
    /// Failures of the host part (VIPs, sysctls, devices, the masquerade).
    host: Vec<(Subject, String)>,
    /// The rest: the IPVS table, the state file, failover.
    other: Vec<(Subject, String)>,
}

impl Standing {
    /// The failures of `round` alone.
    pub fn after(round: &Round) -> Self {
        let mut standing = Standing::default();
        standing.update(round);
        standing
    }

    /// Takes `round` in; returns whether what stands changed.
    pub fn update(&mut self, round: &Round) -> bool {
        let before = self.clone();
        let looked = &round.looked_at;
        if looked.all_services {
            self.services.clear();
        } else {
            for key in &looked.services {
                self.services.remove(key);
            }
        }
        if looked.host {
            self.host.clear();
            self.other.clear();
        }
        let mut services: BTreeMap<ServiceKey, Vec<String>> = BTreeMap::new();
        let (mut host, mut other) = (Vec::new(), Vec::new());
        for failure in &round.failures {
            let text = failure.to_string();
            match &failure.subject {
                Subject::Service(key) => services.entry(*key).or_default().push(text),
                subject if is_host(subject) => host.push((subject.clone(), text)),
                subject => other.push((subject.clone(), text)),
            }
        }
        // A subject this round failed stands with this round's failures alone:
        // repeated failures of what a round did not look at do not pile up.
        self.services.extend(services);
        for (list, new) in [(&mut self.host, host), (&mut self.other, other)] {
            list.retain(|(subject, _)| !new.iter().any(|(s, _)| s == subject));
            list.extend(new);
        }
        *self != before
    }

    /// The failures of service `key`.
    fn of_service(&self, key: ServiceKey) -> &[String] {
        self.services.get(&key).map_or(&[], Vec::as_slice)
    }
}

/// Whether a failure of `subject` comes from configuring the host.
fn is_host(subject: &Subject) -> bool {
    matches!(
        subject,
        Subject::DirectorVip(_)
            | Subject::RealServerVip(_)
            | Subject::GuePort(_)
            | Subject::DirectorSysctls(_)
            | Subject::Masquerade
            | Subject::HostAddresses
            | Subject::HostRestore
    )
}

/// The latest report, not yet taken by the status writer; `None` before the first.
pub type Reports = tokio::sync::watch::Receiver<Option<Arc<Report>>>;

/// The engine thread's end of the hand-off to the status writer: one slot, in
/// which the latest report replaces the one waiting (each stands alone, see
/// [`Report`]), so that however long the API server is away the agent holds
/// one report waiting and one being written, never a queue of them.
pub struct Reporter {
    slot: tokio::sync::watch::Sender<Option<Arc<Report>>>,
    standing: Standing,
}

/// The hand-off from the engine thread to [`write_statuses`].
pub fn report_slot() -> (Reporter, Reports) {
    let (slot, reports) = tokio::sync::watch::channel(None);
    (Reporter { slot, standing: Standing::default() }, reports)
}

impl Reporter {
    /// Takes `round` into what stands; returns whether that changed.
    pub fn take_in(&mut self, round: &Round) -> bool {
        self.standing.update(round)
    }

    /// Puts the node's picture after the rounds taken in so far into the slot.
    /// Returns false when the writer is gone.
    pub fn report(&mut self, desired: &Arc<Desired>, observed: Observed) -> bool {
        let report = Report { desired: Arc::clone(desired), standing: self.standing.clone(), observed };
        self.slot.send(Some(Arc::new(report))).is_ok()
    }
}

/// The loop's sink in cluster mode: metrics, logs, and each round to the status
/// writer (a resync step only when it applied or failed something, changed
/// what stands, or ended).
struct StatusSink {
    reporter: Reporter,
    metrics: Arc<AgentMetrics>,
}

impl Sink<Arc<Desired>> for StatusSink {
    fn round(&mut self, why: Why, desired: &Arc<Desired>, round: Round, agent: &Supervisor) -> bool {
        self.metrics.heartbeat();
        let full = matches!(why, Why::Startup | Why::Repaired { finished: true });
        // A step that clears an earlier failure changes the status too.
        let standing_changed = self.reporter.take_in(&round);
        if matches!(why, Why::Repaired { finished: false })
            && round.applied.is_empty()
            && round.failures.is_empty()
            && !standing_changed
        {
            return true;
        }
        self.metrics.record(&round, full);
        self.metrics.observe(agent);
        log_round(&round, &desired.spec.revision);
        self.reporter.report(desired, Observed::of(agent))
    }
}

/// What the agent sees besides a round's result: health verdicts, the kernel's
/// weights and connections, VRRP states.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub health: HealthMap,
    /// (service, destination) -> (weight, active, inactive connections) in the
    /// kernel as the engine last saw it; `None` when it has not seen the table.
    pub kernel: Option<HashMap<(ServiceKey, SocketAddr), KernelDestination>>,
    /// The VRRP state of each VIP with a VRRP instance.
    pub vips: HashMap<IpAddr, VrrpState>,
}

/// A destination in the kernel: weight, active and inactive connections.
pub type KernelDestination = (u16, u64, u64);

impl Observed {
    pub fn of(agent: &Supervisor) -> Self {
        let kernel = agent.table().map(|table| {
            table
                .iter()
                .flat_map(|(key, observed)| {
                    observed.destinations.iter().map(move |d| {
                        let weight = u16::try_from(d.destination.weight).unwrap_or(u16::MAX);
                        let connections = (d.active_connections.into(), d.inactive_connections.into());
                        ((*key, d.destination.address), (weight, connections.0, connections.1))
                    })
                })
                .collect()
        });
        Observed { health: agent.health(), kernel, vips: agent.vip_states() }
    }
}

fn log_round(round: &Round, revision: &str) {
    for line in &round.applied {
        info!(revision, rule = %line, "applied");
    }
    for failure in &round.failures {
        warn!(revision, subject = %failure.subject, error = %failure, "failed");
    }
}

/// The first wait after a failed status write; it doubles after each failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts while writes fail.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long one status write may take: an API server that does not answer is
/// one that failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the latest report until the engine thread is gone. After a failed
/// write it waits (1 s, doubling up to a minute) and tries again with the
/// report latest by then, not with every round: through an API outage the
/// agent holds two reports at most and sends a request a minute.
pub async fn write_statuses(mut reports: Reports, mut writer: StatusWriter) {
    let mut retry = RETRY_FIRST;
    loop {
        if reports.changed().await.is_err() {
            return; // the engine thread is gone
        }
        loop {
            // The guard is not held across the write: the engine thread puts
            // the next report in meanwhile.
            let Some(report) = reports.borrow_and_update().clone() else { break };
            if writer.write(&report).await {
                retry = RETRY_FIRST;
                break;
            }
            drop(report);
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
            if reports.has_changed().is_err() {
                return;
            }
        }
    }
}

/// Writes the chunks' statuses, each only when it differs from what the object
/// holds or what was last written.
pub struct StatusWriter {
    api: Api<LvsNode>,
    written: HashMap<String, LvsNodeStatus>,
}

impl StatusWriter {
    pub fn new(api: Api<LvsNode>) -> Self {
        StatusWriter { api, written: HashMap::new() }
    }

    /// Reports `report` on the objects of its desired state. Returns whether
    /// every status is in place (written now or before); a failure is logged.
    pub async fn write(&mut self, report: &Report) -> bool {
        let now = Time(Timestamp::now());
        let desired = &report.desired;
        // Only the current objects' last writes are kept.
        self.written.retain(|name, _| desired.objects.iter().any(|o| o.meta().name.as_ref() == Some(name)));
        let mut in_place = true;
        for (object, status) in statuses(desired, &report.standing, &report.observed) {
            let name = object.name_any();
            // What the object holds as far as this agent knows: its own last
            // write, or what the watch saw (after a restart).
            let old = self.written.get(&name).or(object.status.as_ref());
            let status = with_conditions(status, old, &now);
            if old == Some(&status) {
                continue;
            }
            let patch = json!({
                "apiVersion": LvsNode::api_version(&()),
                "kind": LvsNode::kind(&()),
                "status": status,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let patch = Patch::Apply(patch);
            match tokio::time::timeout(WRITE_TIMEOUT, self.api.patch_status(&name, &params, &patch)).await {
                Ok(Ok(_)) => {
                    self.written.insert(name, status);
                }
                Ok(Err(error)) => {
                    warn!(lvs_node = %name, %error, "writing the status of an LvsNode");
                    in_place = false;
                }
                Err(_) => {
                    warn!(lvs_node = %name, timeout = ?WRITE_TIMEOUT, "writing the status of an LvsNode: no answer");
                    in_place = false;
                }
            }
        }
        in_place
    }
}

/// The status of each object of `desired` with the failures that `standing`:
/// its services and VIPs, a service programmed unless a failure names it.
/// Failures that name no desired service go to the first chunk's `errors`.
pub fn statuses<'a>(
    desired: &'a Desired,
    standing: &Standing,
    observed: &Observed,
) -> Vec<(&'a LvsNode, LvsNodeStatus)> {
    let desired_keys: BTreeSet<ServiceKey> = desired
        .spec
        .director
        .iter()
        .flat_map(|d| &d.services)
        .filter_map(|s| crate::desired::service_key(&s.key))
        .collect();
    let general: Vec<String> = standing
        .services
        .iter()
        .filter(|(key, _)| !desired_keys.contains(key))
        .flat_map(|(_, texts)| texts.iter().cloned())
        .chain(standing.host.iter().chain(&standing.other).map(|(_, text)| text.clone()))
        .collect();
    desired
        .objects
        .iter()
        .enumerate()
        .map(|(index, object)| {
            let director = object.spec.director.as_ref();
            let services = director
                .iter()
                .flat_map(|d| &d.services)
                .map(|service| {
                    let service_key = crate::desired::service_key(&service.key);
                    let errors = service_key.map_or(&[][..], |key| standing.of_service(key));
                    ServiceReport {
                        owner: service.owner.clone(),
                        key: service.key.clone(),
                        programmed: errors.is_empty(),
                        error: (!errors.is_empty()).then(|| errors.join("; ")),
                        destinations: service
                            .destinations
                            .iter()
                            .map(|d| {
                                let address = SocketAddr::new(d.address, d.port);
                                let healthy =
                                    service_key.is_none_or(|key| observed.health.is_healthy(key, address));
                                // Absent from the kernel: removed (failed check) or not
                                // programmed; without a table, as specified.
                                let (weight, active_connections, inactive_connections) =
                                    match (&observed.kernel, service_key) {
                                        (Some(kernel), Some(key)) => {
                                            kernel.get(&(key, address)).copied().unwrap_or_default()
                                        }
                                        _ => (d.weight, 0, 0),
                                    };
                                DestinationReport {
                                    address: d.address,
                                    port: d.port,
                                    healthy,
                                    weight,
                                    active_connections,
                                    inactive_connections,
                                }
                            })
                            .collect(),
                    }
                })
                .collect();
            let vips = director
                .iter()
                .flat_map(|d| &d.vips)
                .map(|vip| {
                    let failed = standing
                        .host
                        .iter()
                        .any(|(subject, _)| *subject == Subject::DirectorVip(vip.address));
                    // Without a VRRP instance, a director holds its VIPs.
                    let vrrp_state = observed.vips.get(&vip.address).copied().unwrap_or(VrrpState::Master);
                    VipReport {
                        address: vip.address,
                        vrrp_state,
                        held: vrrp_state == VrrpState::Master && !failed,
                    }
                })
                .collect();
            let status = LvsNodeStatus {
                applied_generation: object.metadata.generation,
                applied_revision: Some(desired.spec.revision.clone()),
                conditions: vec![],
                services,
                vips,
                errors: if index == 0 { general.clone() } else { vec![] },
            };
            (object.as_ref(), status)
        })
        .collect()
}

/// Condition types of an LvsNode's status.
pub mod conditions {
    /// True when the kernel and the host match the object.
    pub const APPLIED: &str = "Applied";
    /// True when some part of the object failed.
    pub const DEGRADED: &str = "Degraded";
}

/// `status` with its `Applied` and `Degraded` conditions. A condition keeps its
/// `lastTransitionTime` from `old` while its status stays, so that an unchanged
/// result gives an identical status (and no write).
pub fn with_conditions(mut status: LvsNodeStatus, old: Option<&LvsNodeStatus>, now: &Time) -> LvsNodeStatus {
    // A VIP not held has its failure in `errors`.
    let failures = status.services.iter().filter(|s| !s.programmed).count() + status.errors.len();
    let revision = status.applied_revision.clone().unwrap_or_default();
    let (applied, degraded) = if failures == 0 {
        (("True", "Applied", format!("revision {revision} applied")), ("False", "NoFailures", String::new()))
    } else {
        let message = format!("revision {revision}: {failures} failure(s)");
        (("False", "Failed", message.clone()), ("True", "Failed", message))
    };
    let generation = status.applied_generation;
    let condition = |type_: &str, (state, reason, message): (&str, &str, String)| Condition {
        type_: type_.into(),
        status: state.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: old
            .into_iter()
            .flat_map(|o| &o.conditions)
            .find(|c| c.type_ == type_ && c.status == state)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    };
    status.conditions =
        vec![condition(conditions::APPLIED, applied), condition(conditions::DEGRADED, degraded)];
    status
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoundLabels {
    /// `change` (a new desired state) or `resync` (a full one).
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    service: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    /// `success`, or the kind of failure (`timeout`, `refused`, `status`, ...).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthTransitionLabels {
    /// `healthy` or `unhealthy`.
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VrrpLabels {
    interface: String,
    vrid: u8,
    family: &'static str,
}

/// A VRRP instance's counter: name, help, value.
type VrrpCounter = (&'static str, &'static str, fn(&lvs_vrrp::InstanceStats) -> u64);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The agent's own counters, and the latest health-check and VRRP figures the
/// engine thread saw; the IPVS figures are read at scrape time.
#[derive(Default)]
pub struct AgentMetrics {
    /// When the engine loop's last round ended: its liveness (see [`Endpoints`]).
    last_round: Mutex<Option<Instant>>,
    rounds: Family<RoundLabels, Counter>,
    operations: Counter,
    failures: Counter,
    health: Mutex<Option<CheckerStats>>,
    vrrp: Mutex<Option<lvs_vrrp::Stats>>,
}

impl AgentMetrics {
    /// The loop ran a round (any, a silent resync step too).
    pub fn heartbeat(&self) {
        *self.last_round.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// How long ago the loop's last round ended; `None` before the first.
    fn since_last_round(&self) -> Option<Duration> {
        self.last_round.lock().unwrap_or_else(PoisonError::into_inner).map(|at| at.elapsed())
    }

    pub fn record(&self, round: &Round, full: bool) {
        self.rounds.get_or_create(&RoundLabels { kind: if full { "resync" } else { "change" } }).inc();
        self.operations.inc_by(round.applied.len() as u64);
        self.failures.inc_by(round.failures.len() as u64);
    }

    /// Takes the health checks' and VRRP's figures from `agent`.
    pub fn observe(&self, agent: &Supervisor) {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = Some(agent.health_stats());
        *self.vrrp.lock().unwrap_or_else(PoisonError::into_inner) = Some(agent.vrrp_stats());
    }

    fn register_health(&self, registry: &mut Registry) {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(health) = health.as_ref() else { return };
        let checks = Family::<CheckLabels, Counter>::default();
        checks.get_or_create(&CheckLabels { result: "success" }).inc_by(health.successes);
        for (kind, count) in &health.failures {
            checks.get_or_create(&CheckLabels { result: kind.label() }).inc_by(*count);
        }
        registry.register("health_checks", "Health checks completed, by result", checks);
        let transitions = Family::<HealthTransitionLabels, Counter>::default();
        transitions.get_or_create(&HealthTransitionLabels { to: "healthy" }).inc_by(health.ups);
        transitions.get_or_create(&HealthTransitionLabels { to: "unhealthy" }).inc_by(health.downs);
        registry.register("health_transitions", "Real servers turning healthy or unhealthy", transitions);
        let healthy = Family::<DestinationLabels, Gauge>::default();
        for target in &health.targets {
            let labels = DestinationLabels {
                service: target.service.to_string(),
                destination: target.destination.to_string(),
            };
            healthy.get_or_create(&labels).set(i64::from(target.healthy));
        }
        registry.register("destination_healthy", "1 while the real server passes its health check", healthy);
    }

    fn register_vrrp(&self, registry: &mut Registry) {
        let vrrp = self.vrrp.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(vrrp) = vrrp.as_ref() else { return };
        let master = Family::<VrrpLabels, Gauge>::default();
        let counters: [VrrpCounter; 4] = [
            ("vrrp_transitions", "VRRP state transitions", |i| i.transitions),
            ("vrrp_adverts_sent", "VRRP advertisements sent", |i| i.adverts_sent),
            ("vrrp_adverts_received", "VRRP advertisements received", |i| i.adverts_received),
            ("vrrp_send_errors", "VRRP advertisements that could not be sent", |i| i.send_errors),
        ];
        let families: Vec<Family<VrrpLabels, Counter>> = counters.iter().map(|_| Family::default()).collect();
        for instance in &vrrp.instances {
            let labels = VrrpLabels {
                interface: instance.key.interface.clone(),
                vrid: instance.key.vrid,
                family: match instance.key.family {
                    lvs_vrrp::AddressFamily::IPv4 => "IPv4",
                    lvs_vrrp::AddressFamily::IPv6 => "IPv6",
                },
            };
            master.get_or_create(&labels).set(i64::from(instance.state == lvs_vrrp::VrrpState::Master));
            for ((_, _, value), family) in counters.iter().zip(&families) {
                family.get_or_create(&labels).inc_by(value(instance));
            }
        }
        registry.register("vrrp_master", "1 while this node is the VRRP master", master);
        for ((name, help, _), family) in counters.iter().zip(families) {
            registry.register(*name, *help, family);
        }
        let drops = Family::<DropLabels, Counter>::default();
        for (reason, count) in vrrp.drops.by_reason() {
            drops.get_or_create(&DropLabels { reason }).inc_by(count);
        }
        registry.register("vrrp_dropped", "Received VRRP packets ignored, by reason", drops);
    }
}

/// One IPVS counter or rate: its metric name (after `service_`/`destination_`),
/// help, and where it is in [`Stats`].
type StatField = (&'static str, &'static str, fn(&Stats) -> u64);

const COUNTERS: [StatField; 5] = [
    ("connections", "Connections scheduled", |s| s.connections),
    ("packets_in", "Packets received", |s| s.packets_in),
    ("packets_out", "Packets sent", |s| s.packets_out),
    ("bytes_in", "Bytes received", |s| s.bytes_in),
    ("bytes_out", "Bytes sent", |s| s.bytes_out),
];

const RATES: [StatField; 5] = [
    ("connections_per_second", "Connections per second (kernel estimate, 2 s)", |s| s.connections_rate),
    ("packets_in_per_second", "Packets received per second", |s| s.packets_in_rate),
    ("packets_out_per_second", "Packets sent per second", |s| s.packets_out_rate),
    ("bytes_in_per_second", "Bytes received per second", |s| s.bytes_in_rate),
    ("bytes_out_per_second", "Bytes sent per second", |s| s.bytes_out_rate),
];

/// A destination's gauge: name (after `destination_`), help, value.
type DestinationField = (&'static str, &'static str, fn(&DestinationEntry) -> u32);

const DESTINATION_GAUGES: [DestinationField; 3] = [
    ("active_connections", "Active connections", |d| d.active_connections),
    ("inactive_connections", "Inactive connections (e.g. TIME_WAIT)", |d| d.inactive_connections),
    ("weight", "Weight in the kernel", |d| d.destination.weight),
];

/// The OpenMetrics text of the agent's counters and of `table` (the kernel's
/// IPVS table; `None` when it could not be read, which `lvs_agent_ipvs_up`
/// tells).
pub fn metrics_text(metrics: &AgentMetrics, table: Option<&[TableEntry]>) -> String {
    let mut registry = Registry::with_prefix("lvs_agent");
    registry.register("reconciles", "Reconcile rounds, by kind", metrics.rounds.clone());
    registry.register("operations", "IPVS operations applied", metrics.operations.clone());
    registry.register("failures", "Failures of reconcile rounds", metrics.failures.clone());
    let up = Gauge::<i64>::default();
    up.set(i64::from(table.is_some()));
    registry.register("ipvs_up", "1 when the kernel's IPVS table could be read", up);
    metrics.register_health(&mut registry);
    metrics.register_vrrp(&mut registry);

    let table = table.unwrap_or_default();
    let services = table
        .iter()
        .map(|(service, _)| (ServiceLabels { service: service.service.key.to_string() }, &service.stats));
    register_stats(&mut registry, "service", services.collect());
    let destinations: Vec<_> = table
        .iter()
        .flat_map(|(service, destinations)| {
            let service = service.service.key.to_string();
            destinations.iter().map(move |d| {
                let labels = DestinationLabels {
                    service: service.clone(),
                    destination: d.destination.address.to_string(),
                };
                (labels, d)
            })
        })
        .collect();
    for (name, help, value) in DESTINATION_GAUGES {
        let family = Family::<DestinationLabels, Gauge>::default();
        for (labels, destination) in &destinations {
            family.get_or_create(labels).set(value(destination).into());
        }
        registry.register(format!("destination_{name}"), help, family);
    }
    register_stats(
        &mut registry,
        "destination",
        destinations.iter().map(|(l, d)| (l.clone(), &d.stats)).collect(),
    );

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// The counters and rates of `rows` as `<what>_<field>` families.
fn register_stats<L>(registry: &mut Registry, what: &str, rows: Vec<(L, &Stats)>)
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    for (name, help, value) in COUNTERS {
        let family = Family::<L, Counter>::default();
        for (labels, stats) in &rows {
            family.get_or_create(labels).inc_by(value(stats));
        }
        registry.register(format!("{what}_{name}"), help, family);
    }
    for (name, help, value) in RATES {
        let family = Family::<L, Gauge>::default();
        for (labels, stats) in &rows {
            family.get_or_create(labels).set(i64::try_from(value(stats)).unwrap_or(i64::MAX));
        }
        registry.register(format!("{what}_{name}"), help, family);
    }
}

/// Scrapes in flight at once; more are answered 503 at once. One of them reads
/// the kernel's table at a time, the others wait their turn: a scrape storm
/// holds one table and one rendering, and takes one core at most.
const SCRAPES_IN_FLIGHT: usize = 4;

/// Reads the kernel's IPVS table (`None` when it cannot be read).
type DumpTable = Arc<dyn Fn() -> Option<Vec<TableEntry>> + Send + Sync>;

/// What the endpoints answer from: the engine's figures, how long the loop may
/// go without a round before it counts as stuck, and the table reader.
#[derive(Clone)]
struct Endpoints {
    metrics: Arc<AgentMetrics>,
    stuck_after: Duration,
    dump: DumpTable,
    /// Admission of scrapes ([`SCRAPES_IN_FLIGHT`]), and the turn to read the table.
    scrapes: Arc<tokio::sync::Semaphore>,
    reading: Arc<tokio::sync::Mutex<()>>,
}

impl Endpoints {
    /// The loop rounds at least once per resync (its steps are rounds): three
    /// resyncs without one, and a minute to spare, is a loop that is stuck.
    fn new(metrics: Arc<AgentMetrics>, resync: Duration) -> Self {
        let dump: DumpTable = Arc::new(|| {
            IpvsHandle::connect()
                .and_then(|handle| handle.table())
                .map_err(|error| warn!(%error, "metrics: reading the IPVS table"))
                .ok()
        });
        Endpoints {
            metrics,
            stuck_after: resync * 3 + Duration::from_secs(60),
            dump,
            scrapes: Arc::new(tokio::sync::Semaphore::new(SCRAPES_IN_FLIGHT)),
            reading: Arc::default(),
        }
    }
}

fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoints)
}

/// Liveness: the engine loop's last round is recent (or the first has not
/// ended yet: the startup round of a large table takes a while, and the first
/// desired state may take a while to come).
async fn healthz(State(endpoints): State<Endpoints>) -> (StatusCode, String) {
    match endpoints.metrics.since_last_round() {
        None => (StatusCode::OK, "ok: starting\n".into()),
        Some(age) if age <= endpoints.stuck_after => {
            (StatusCode::OK, format!("ok: last round {}s ago\n", age.as_secs()))
        }
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the engine loop's last round was {}s ago (stuck after {}s)\n",
                age.as_secs(),
                endpoints.stuck_after.as_secs()
            ),
        ),
    }
}

/// Readiness: the first round has ended (the node's desired state is applied).
async fn readyz(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    match endpoints.metrics.since_last_round() {
        Some(_) => (StatusCode::OK, "ready\n"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the first round has not ended\n"),
    }
}

async fn scrape(
    State(endpoints): State<Endpoints>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let Ok(_admitted) = endpoints.scrapes.try_acquire() else {
        let busy = format!("{SCRAPES_IN_FLIGHT} scrapes are in flight; try again later\n");
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "text/plain")], busy);
    };
    let _turn = endpoints.reading.lock().await;
    // Reading and rendering a large table take a while: off the async threads.
    let (dump, metrics) = (Arc::clone(&endpoints.dump), Arc::clone(&endpoints.metrics));
    let text = tokio::task::spawn_blocking(move || metrics_text(&metrics, dump().as_deref())).await;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    match text {
        Ok(text) => (StatusCode::OK, [("content-type", content_type)], text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "text/plain")], format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::engine::{Failure, LookedAt};
    use lvs_crds::{
        lvs_node::IpvsServiceKey,
        virtual_service::{AddressFamily, Protocol},
    };
    use lvs_ipvs::{Destination, ForwardMethod, IpvsError, KernelError, Service, ServiceEntry, ServiceKey};

    /// Chunk `chunk` of node `lvs1`'s state at `revision`, generation 3: one
    /// service `default/<name>` on VIP 192.0.2.<chunk + 10>:80 with two real
    /// servers; chunk 0 also holds the VIP.
    fn chunk(chunk: u32, chunks: u32, revision: &str) -> Arc<LvsNode> {
        let name = LvsNode::object_name("lvs1", chunk);
        let vip = format!("192.0.2.{}", chunk + 10);
        let vips = if chunk == 0 { format!("vips: [{{address: '{vip}'}}]") } else { String::new() };
        let object: LvsNode = serde_yaml::from_str(&format!(
            "apiVersion: lvs.dev/v1alpha1
kind: LvsNode
metadata: {{name: {name}, generation: 3, labels: {{lvs.dev/node: lvs1}}}}
spec:
  node: lvs1
  chunk: {chunk}
  chunks: {chunks}
  revision: {revision}
  director:
    {vips}
    services:
      - owner: {{namespace: default, name: web{chunk}, uid: u{chunk}, generation: 7}}
        key: {{family: IPv4, address: '{vip}', port: 80, protocol: TCP}}
        scheduler: rr
        destinations:
          - {{address: 198.51.100.1, port: 80, weight: 1, forwarding: DirectRouting}}
          - {{address: 198.51.100.2, port: 80, weight: 2, forwarding: DirectRouting}}"
        ))
        .expect("a valid LvsNode");
        Arc::new(object)
    }

    fn other_node() -> Arc<LvsNode> {
        let mut object = (*chunk(0, 1, "r9")).clone();
        object.metadata.name = Some("lvs2".into());
        object.spec.node = "lvs2".into();
        Arc::new(object)
    }

    #[test]
    fn the_node_state_is_its_complete_chunks() {
        let desired = Desired::of("lvs1", vec![chunk(1, 2, "r1"), other_node(), chunk(0, 2, "r1")]).unwrap();
        let names: Vec<String> = desired.objects.iter().map(|o| o.name_any()).collect();
        assert_eq!(names, ["lvs1", "lvs1-1"]);
        assert_eq!(desired.spec.director.unwrap().services.len(), 2);

        // A chunk of another revision: not yet.
        assert!(Desired::of("lvs1", vec![chunk(0, 2, "r2"), chunk(1, 2, "r1")]).is_none());
        assert!(Desired::of("lvs1", vec![chunk(0, 2, "r1")]).is_none());

        // No object: the empty state.
        let empty = Desired::of("lvs1", vec![other_node()]).unwrap();
        assert!(empty.objects.is_empty());
        assert_eq!(empty.spec, LvsNodeSpec { node: "lvs1".into(), chunks: 1, ..LvsNodeSpec::default() });
    }

    fn tcp_service(address: &str) -> ServiceKey {
        let address: SocketAddr = address.parse().unwrap();
        let key = IpvsServiceKey {
            family: AddressFamily::IPv4,
            protocol: Protocol::TCP,
            address: Some(address.ip()),
            port: address.port(),
            fwmark: None,
        };
        crate::desired::service_key(&key).unwrap()
    }

    fn failing_round() -> Round {
        Round {
            applied: vec!["-a -t 192.0.2.10:80 -r 198.51.100.1:80 -g -w 1".into()],
            failures: vec![
                Failure::new(
                    Subject::Service(tcp_service("192.0.2.11:80")),
                    IpvsError::Kernel {
                        op: "add destination 198.51.100.2:80 to TCP 192.0.2.11:80".into(),
                        error: KernelError::OutOfRange,
                    },
                ),
                Failure::new(
                    Subject::DirectorVip("192.0.2.10".parse().unwrap()),
                    "adding 192.0.2.10 to eth0: operation not permitted".to_string(),
                ),
            ],
            next_check: None,
            draining: std::collections::BTreeSet::new(),
            // A full round.
            looked_at: LookedAt { all_services: true, services: BTreeSet::new(), host: true },
        }
    }

    #[test]
    fn statuses_report_each_chunk_its_services() {
        let desired = Desired::of("lvs1", vec![chunk(0, 2, "r1"), chunk(1, 2, "r1")]).unwrap();
        let statuses = statuses(&desired, &Standing::after(&failing_round()), &Observed::default());
        let [(first, chunk0), (_, chunk1)] = &statuses[..] else { panic!("two statuses") };
        assert_eq!(first.name_any(), "lvs1");
        for status in [chunk0, chunk1] {
            assert_eq!(status.applied_generation, Some(3));
            assert_eq!(status.applied_revision.as_deref(), Some("r1"));
            assert_eq!(status.services.len(), 1);
        }
        let web0 = &chunk0.services[0];
        assert_eq!((web0.owner.name.as_str(), web0.owner.generation), ("web0", 7));
        assert!(web0.programmed && web0.error.is_none());
        assert_eq!(web0.destinations.iter().map(|d| d.weight).collect::<Vec<_>>(), [1, 2]);
        assert!(web0.destinations.iter().all(|d| d.healthy));
        let web1 = &chunk1.services[0];
        assert!(!web1.programmed);
        assert_eq!(
            web1.error.as_deref(),
            Some("add destination 198.51.100.2:80 to TCP 192.0.2.11:80: value out of range")
        );
        // The VIP failure names no service: an error of the first chunk.
        assert_eq!(
            chunk0.errors,
            ["director VIP 192.0.2.10: adding 192.0.2.10 to eth0: operation not permitted"]
        );
        assert!(chunk1.errors.is_empty());
        assert_eq!(chunk0.vips.len(), 1);
        assert!(!chunk0.vips[0].held);
        assert_eq!(chunk0.vips[0].vrrp_state, VrrpState::Master);
    }

    #[test]
    fn a_status_change_is_not_a_new_version() {
        let desired = Desired::of("lvs1", vec![chunk(0, 1, "r1")]).unwrap();
        let mut reported = (*chunk(0, 1, "r1")).clone();
        reported.status = Some(statuses(&desired, &Standing::default(), &Observed::default()).remove(0).1);
        let again = Desired::of("lvs1", vec![Arc::new(reported)]).unwrap();
        assert_eq!(again.version(), desired.version());
        let next = Desired::of("lvs1", vec![chunk(0, 1, "r2")]).unwrap();
        assert_ne!(next.version(), desired.version());
    }

    /// The watch against a mock API server: the list holds both chunks of one
    /// revision (and nothing is sent before it is complete), then a watch event
    /// deletes them, which is the empty state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_sends_each_version_of_the_node_state() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<LvsNode> = Api::all(Client::new(mock, "default"));
        let (engine, versions) = mpsc::channel();
        let watch = tokio::spawn(async move { watch_desired(api, "lvs1", engine).await });
        let object = |chunk: &Arc<LvsNode>| {
            let mut value = serde_json::to_value(chunk.as_ref()).unwrap();
            value["metadata"]["resourceVersion"] = json!("5");
            value
        };
        let (first, second) = (chunk(0, 2, "r1"), chunk(1, 2, "r1"));

        let (request, send) = handle.next_request().await.expect("a list");
        let uri = request.uri().to_string();
        assert!(uri.starts_with("/apis/lvs.dev/v1alpha1/lvsnodes?"), "{uri}");
        assert!(uri.contains("labelSelector=lvs.dev%2Fnode%3Dlvs1"), "{uri}");
        assert!(!uri.contains("watch=true"), "{uri}");
        let list = json!({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "LvsNodeList",
            "metadata": {"resourceVersion": "5"},
            "items": [object(&first), object(&second)],
        });
        send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));

        let (request, send) = handle.next_request().await.expect("a watch");
        assert!(request.uri().to_string().contains("watch=true"), "{}", request.uri());
        let events: Vec<u8> = [&first, &second]
            .into_iter()
            .flat_map(|chunk| {
                let mut line =
                    serde_json::to_vec(&json!({"type": "DELETED", "object": object(chunk)})).unwrap();
                line.push(b'\n');
                line
            })
            .collect();
        send.send_response(Response::new(Body::from(events)));

        let receive = || match versions.recv_timeout(Duration::from_secs(5)).expect("a version") {
            // Each version for the loop to compare with the last.
            Input::Desired(desired) => desired,
            other => panic!("not a version: {other:?}"),
        };
        let listed = tokio::task::block_in_place(receive);
        assert_eq!(listed.spec.revision, "r1");
        assert_eq!(listed.objects.len(), 2);
        assert_eq!(listed.spec.director.as_ref().unwrap().services.len(), 2);
        // Deleting the first chunk leaves an incomplete state (not sent); then none.
        let deleted = tokio::task::block_in_place(receive);
        assert!(deleted.objects.is_empty());
        assert_eq!(*deleted.spec(), LvsNodeSpec { node: "lvs1".into(), chunks: 1, ..LvsNodeSpec::default() });
        watch.abort();
    }

    fn time(at: &str) -> Time {
        Time(at.parse().unwrap())
    }

    #[test]
    fn conditions_move_only_when_their_status_changes() {
        let desired = Desired::of("lvs1", vec![chunk(0, 1, "r1")]).unwrap();
        let ok = statuses(&desired, &Standing::default(), &Observed::default()).remove(0).1;
        let (t0, t1, t2) =
            (time("2026-01-01T00:00:00Z"), time("2026-01-01T00:01:00Z"), time("2026-01-01T00:02:00Z"));

        let first = with_conditions(ok.clone(), None, &t0);
        let applied = &first.conditions[0];
        assert_eq!((applied.type_.as_str(), applied.status.as_str()), ("Applied", "True"));
        assert_eq!(applied.message, "revision r1 applied");
        assert_eq!(applied.observed_generation, Some(3));
        // Unchanged: identical, so nothing is written.
        assert_eq!(with_conditions(ok, Some(&first), &t1), first);

        let failed = statuses(&desired, &Standing::after(&failing_round()), &Observed::default()).remove(0).1;
        let second = with_conditions(failed, Some(&first), &t2);
        let states: Vec<_> = second
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), &c.last_transition_time))
            .collect();
        assert_eq!(states, [("Applied", "False", &t2), ("Degraded", "True", &t2)]);
        assert_eq!(second.conditions[1].message, "revision r1: 2 failure(s)");
    }

    #[tokio::test]
    async fn endpoints_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Arc::new(AgentMetrics::default());
        let endpoints = Endpoints::new(Arc::clone(&metrics), Duration::from_secs(10));
        assert_eq!(endpoints.stuck_after, Duration::from_secs(90));
        tokio::spawn(async move { axum::serve(listener, router(endpoints)).await.unwrap() });
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let answers = |response: &str, status: &str, text: &str| {
            response.starts_with(&format!("HTTP/1.1 {status}")) && response.contains(text)
        };
        // Before the first round: live (starting), not ready.
        let response = get("/healthz").await;
        assert!(answers(&response, "200", "starting"), "{response}");
        let response = get("/readyz").await;
        assert!(answers(&response, "503", "first round"), "{response}");
        let response = get("/metrics").await;
        assert!(answers(&response, "200", "lvs_agent_operations_total 0"), "{response}");
        // A round: live and ready.
        metrics.heartbeat();
        assert!(answers(&get("/healthz").await, "200", "last round 0s ago"));
        assert!(answers(&get("/readyz").await, "200", "ready"));
        // No round for longer than three resyncs and a minute: stuck.
        *metrics.last_round.lock().unwrap() = Some(Instant::now() - Duration::from_secs(91));
        let response = get("/healthz").await;
        assert!(answers(&response, "503", "last round was 91s ago"), "{response}");
    }

    /// A scrape storm: a few scrapes in flight, the rest refused at once, and
    /// one table read at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_storm_reads_one_table_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (reading, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut endpoints = Endpoints::new(Arc::default(), Duration::from_secs(10));
        let (now, peak) = (Arc::clone(&reading), Arc::clone(&most));
        endpoints.dump = Arc::new(move || {
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            now.fetch_sub(1, Ordering::SeqCst);
            None
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(endpoints)).await.unwrap() });
        let scrapes = (0..20).map(|_| {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
                let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).await.unwrap();
                response.get(9..12).unwrap_or_default().to_string()
            })
        });
        let statuses: Vec<String> =
            futures::future::join_all(scrapes).await.into_iter().map(Result::unwrap).collect();
        let served = statuses.iter().filter(|s| *s == "200").count();
        let refused = statuses.iter().filter(|s| *s == "503").count();
        assert_eq!((served + refused, most.load(Ordering::SeqCst)), (20, 1), "{statuses:?}");
        assert!((1..=SCRAPES_IN_FLIGHT).contains(&served), "{statuses:?}");
    }

    #[test]
    fn metrics_carry_each_service_and_destination() {
        let key = ServiceKey::tcp("192.0.2.10:80".parse().unwrap());
        let stats = Stats { connections: 5, bytes_in: 1000, bytes_in_rate: 40, ..Stats::default() };
        let destination = DestinationEntry {
            destination: Destination::new("198.51.100.1:80".parse().unwrap(), ForwardMethod::DirectRoute, 2),
            active_connections: 3,
            inactive_connections: 1,
            persistent_connections: 0,
            stats: Stats { connections: 4, packets_out: 9, ..Stats::default() },
        };
        let table = vec![(ServiceEntry { service: Service::new(key, "rr"), stats }, vec![destination])];
        let metrics = AgentMetrics::default();
        metrics.record(&failing_round(), true);
        let text = metrics_text(&metrics, Some(&table));
        let service = r#"service="TCP 192.0.2.10:80""#;
        let both = r#"service="TCP 192.0.2.10:80",destination="198.51.100.1:80""#;
        for line in [
            r#"lvs_agent_reconciles_total{kind="resync"} 1"#.to_string(),
            "lvs_agent_operations_total 1".into(),
            "lvs_agent_failures_total 2".into(),
            "lvs_agent_ipvs_up 1".into(),
            format!("lvs_agent_service_connections_total{{{service}}} 5"),
            format!("lvs_agent_service_bytes_in_total{{{service}}} 1000"),
            format!("lvs_agent_service_bytes_in_per_second{{{service}}} 40"),
            format!("lvs_agent_destination_connections_total{{{both}}} 4"),
            format!("lvs_agent_destination_packets_out_total{{{both}}} 9"),
            format!("lvs_agent_destination_active_connections{{{both}}} 3"),
            format!("lvs_agent_destination_inactive_connections{{{both}}} 1"),
            format!("lvs_agent_destination_weight{{{both}}} 2"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(metrics_text(&metrics, None).contains("lvs_agent_ipvs_up 0"));
    }

    #[test]
    fn metrics_carry_health_checks_and_vrrp() {
        use lvs_health::{FailureKind, TargetStatus};
        let metrics = AgentMetrics::default();
        let service = ServiceKey::tcp("192.0.2.10:80".parse().unwrap());
        *metrics.health.lock().unwrap() = Some(CheckerStats {
            checks: 7,
            successes: 5,
            failures: [(FailureKind::Timeout, 2)].into(),
            ups: 1,
            downs: 2,
            targets: vec![TargetStatus {
                service,
                destination: "198.51.100.1:80".parse().unwrap(),
                healthy: false,
                last_check_passed: Some(false),
                reason: Some("timeout after 1 s".into()),
                checks: 7,
            }],
        });
        *metrics.vrrp.lock().unwrap() = Some(lvs_vrrp::Stats {
            instances: vec![lvs_vrrp::InstanceStats {
                key: lvs_vrrp::InstanceKey {
                    interface: "eth0".into(),
                    family: lvs_vrrp::AddressFamily::IPv4,
                    vrid: 51,
                },
                state: lvs_vrrp::VrrpState::Master,
                adverts_sent: 10,
                adverts_received: 3,
                send_errors: 0,
                transitions: 2,
            }],
            drops: lvs_vrrp::Drops { bad_checksum: 4, ..Default::default() },
        });
        let text = metrics_text(&metrics, None);
        let instance = r#"interface="eth0",vrid="51",family="IPv4""#;
        for line in [
            r#"lvs_agent_health_checks_total{result="success"} 5"#.to_string(),
            r#"lvs_agent_health_checks_total{result="timeout"} 2"#.into(),
            r#"lvs_agent_health_transitions_total{to="unhealthy"} 2"#.into(),
            r#"lvs_agent_destination_healthy{service="TCP 192.0.2.10:80",destination="198.51.100.1:80"} 0"#
                .into(),
            format!("lvs_agent_vrrp_master{{{instance}}} 1"),
            format!("lvs_agent_vrrp_transitions_total{{{instance}}} 2"),
            format!("lvs_agent_vrrp_adverts_sent_total{{{instance}}} 10"),
            r#"lvs_agent_vrrp_dropped_total{reason="bad_checksum"} 4"#.into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn statuses_report_health_kernel_weights_and_vrrp() {
        let desired = Desired::of("lvs1", vec![chunk(0, 1, "r1")]).unwrap();
        let service = ServiceKey::tcp("192.0.2.10:80".parse().unwrap());
        let (rs1, rs2): (SocketAddr, SocketAddr) =
            ("198.51.100.1:80".parse().unwrap(), "198.51.100.2:80".parse().unwrap());
        // rs1 failed its check and is quiesced; rs2 carries two connections.
        let health = [((service, rs1), false)].into_iter().collect();
        let observed = Observed {
            health,
            kernel: Some([((service, rs1), (0, 0, 1)), ((service, rs2), (2, 2, 0))].into()),
            vips: [("192.0.2.10".parse().unwrap(), VrrpState::Backup)].into(),
        };
        let status = statuses(&desired, &Standing::default(), &observed).remove(0).1;
        let rows: Vec<(u16, u64, u64)> = status.services[0]
            .destinations
            .iter()
            .map(|d| (d.weight, d.active_connections, d.inactive_connections))
            .collect();
        assert_eq!(rows, [(0, 0, 1), (2, 2, 0)]);
        let healthy: Vec<bool> = status.services[0].destinations.iter().map(|d| d.healthy).collect();
        assert_eq!(healthy, [false, true]);
        assert_eq!(status.vips[0].vrrp_state, VrrpState::Backup);
        assert!(!status.vips[0].held, "a backup does not hold the VIP");
    }

    type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// Plays the API server for one status write of LvsNode `name`: checks the
    /// request and returns the status it carried.
    async fn expect_status_patch(handle: &mut ApiServerHandle, name: &str) -> LvsNodeStatus {
        let (request, send) = handle.next_request().await.expect("a status write");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().to_string(),
            format!("/apis/lvs.dev/v1alpha1/lvsnodes/{name}/status?&force=true&fieldManager=lvs-agent")
        );
        assert_eq!(request.headers().get("content-type").unwrap(), "application/apply-patch+yaml");
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((&body["apiVersion"], &body["kind"]), (&json!("lvs.dev/v1alpha1"), &json!("LvsNode")));
        let answer = json!({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "LvsNode",
            "metadata": {"name": name}, "spec": {"node": "lvs1"}, "status": body["status"],
        });
        send.send_response(
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        serde_json::from_value(body["status"].clone()).unwrap()
    }

    #[tokio::test]
    async fn statuses_are_written_once_by_server_side_apply() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut writer = StatusWriter::new(Api::all(Client::new(mock, "default")));
        let mut done = (*chunk(1, 2, "r1")).clone();
        // Chunk 1 already reports this round: only chunk 0 is written.
        let both = Desired::of("lvs1", vec![chunk(0, 2, "r1"), chunk(1, 2, "r1")]).unwrap();
        let reported = statuses(&both, &Standing::after(&failing_round()), &Observed::default())[1].1.clone();
        done.status = Some(with_conditions(reported, None, &time("2026-01-01T00:00:00Z")));
        let desired = Arc::new(Desired::of("lvs1", vec![chunk(0, 2, "r1"), Arc::new(done)]).unwrap());
        let standing = Standing::after(&failing_round());
        let report = Report {
            desired: Arc::clone(&desired),
            standing: standing.clone(),
            observed: Observed::default(),
        };

        let server = tokio::spawn(async move {
            let status = expect_status_patch(&mut handle, "lvs1").await;
            (status, handle)
        });
        let written = tokio::time::timeout(Duration::from_secs(5), writer.write(&report)).await.unwrap();
        assert!(written);
        let (mut status, mut handle) = server.await.unwrap();
        let conditions: Vec<(&str, &str)> =
            status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(conditions, [("Applied", "False"), ("Degraded", "True")]);
        status.conditions.clear();
        assert_eq!(status, statuses(&desired, &standing, &Observed::default())[0].1);
        assert_eq!(status.applied_revision.as_deref(), Some("r1"));
        assert!(status.services[0].programmed);

        // The same round again (a resync): nothing to write.
        assert!(writer.write(&report).await);
        drop(writer);
        assert!(handle.next_request().await.is_none(), "no second write");
    }

    /// A round that looked at `looked_at` and failed `services` (by VIP, port 80).
    fn round_of(looked_at: LookedAt, services: &[&str]) -> Round {
        let failures = services
            .iter()
            .map(|vip| {
                let key = tcp_service(&format!("{vip}:80"));
                Failure::new(Subject::Service(key), "refused".to_string())
            })
            .collect();
        Round { failures, looked_at, ..Round::default() }
    }

    fn looked_at(services: &[&str], host: bool) -> LookedAt {
        let services = services.iter().map(|vip| tcp_service(&format!("{vip}:80"))).collect();
        LookedAt { all_services: false, services, host }
    }

    /// A round that looks at some services only (a change, a resync step)
    /// leaves the failures of the others standing, so that its report is still
    /// the node's whole picture; a later look clears what it finds fixed.
    #[test]
    fn partial_rounds_leave_the_failures_of_what_they_did_not_look_at() {
        let desired = Desired::of("lvs1", vec![chunk(0, 2, "r1"), chunk(1, 2, "r1")]).unwrap();
        let programmed = |standing: &Standing| -> Vec<bool> {
            statuses(&desired, standing, &Observed::default())
                .iter()
                .map(|(_, status)| status.services[0].programmed)
                .collect()
        };
        let held = |standing: &Standing| statuses(&desired, standing, &Observed::default())[0].1.vips[0].held;
        // Startup: both services (web0 on .10, web1 on .11) and the VIP .10 failed.
        let mut startup = failing_round();
        startup.failures.extend(round_of(LookedAt::default(), &["192.0.2.10"]).failures);
        let mut standing = Standing::after(&startup);
        assert_eq!(programmed(&standing), [false, false]);
        assert!(!held(&standing), "the VIP's failure from the startup round");

        // A change of web1 alone, which succeeds: web0's failure and the VIP's stand.
        assert!(standing.update(&round_of(looked_at(&["192.0.2.11"], false), &[])));
        assert_eq!(programmed(&standing), [false, true]);
        assert!(!held(&standing));
        // The same again changes nothing (a silent resync step is not reported).
        assert!(!standing.update(&round_of(looked_at(&["192.0.2.11"], false), &[])));
        // The resync's slice with web0 finds it fixed; its last step, the host.
        assert!(standing.update(&round_of(looked_at(&["192.0.2.10"], false), &[])));
        assert_eq!(programmed(&standing), [true, true]);
        assert!(standing.update(&round_of(looked_at(&[], true), &[])));
        assert!(held(&standing));
        assert_eq!(standing, Standing::default());

        // Failures of a service a round did not look at replace, never pile up.
        for _ in 0..3 {
            standing.update(&round_of(LookedAt::default(), &["192.0.2.10"]));
        }
        assert_eq!(standing.of_service(tcp_service("192.0.2.10:80")), ["TCP 192.0.2.10:80: refused"]);
        // A full round that finds nothing wrong clears everything.
        assert!(standing.update(&round_of(LookedAt { all_services: true, ..LookedAt::default() }, &[])));
        assert_eq!(standing, Standing::default());
    }

    /// Plays an API server that answers every status write 503 while `down`,
    /// and 200 otherwise, sending each status it accepted on `accepted`.
    /// Counts the requests in `requests`.
    fn api_server(
        mut handle: ApiServerHandle,
        down: Arc<std::sync::atomic::AtomicBool>,
        requests: Arc<std::sync::atomic::AtomicUsize>,
        accepted: tokio::sync::mpsc::UnboundedSender<LvsNodeStatus>,
    ) -> tokio::task::JoinHandle<()> {
        use std::sync::atomic::Ordering;
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                requests.fetch_add(1, Ordering::SeqCst);
                if down.load(Ordering::SeqCst) {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcdserver: request timed out", "reason": "ServiceUnavailable", "code": 503});
                    let body = Body::from(serde_json::to_vec(&status).unwrap());
                    send.send_response(
                        Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(body).unwrap(),
                    );
                    continue;
                }
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let answer = json!({
                    "apiVersion": "lvs.dev/v1alpha1", "kind": "LvsNode",
                    "metadata": {"name": "lvs1"}, "spec": {"node": "lvs1"}, "status": body["status"],
                });
                send.send_response(Response::new(Body::from(serde_json::to_vec(&answer).unwrap())));
                let _ = accepted.send(serde_json::from_value(body["status"].clone()).unwrap());
            }
        })
    }

    /// Rounds keep coming while the API server answers 503: the writer holds
    /// the latest report and one in hand at most (older ones are dropped at
    /// once), retries with backoff rather than per round, and once the server
    /// is back writes the latest status.
    #[tokio::test(start_paused = true)]
    async fn through_an_outage_the_latest_report_waits_alone_and_is_written_once_back() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (down, requests) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let server = api_server(handle, Arc::clone(&down), Arc::clone(&requests), accepted_tx);
        let (mut reporter, reports) = report_slot();
        let writer =
            tokio::spawn(write_statuses(reports, StatusWriter::new(Api::all(Client::new(mock, "default")))));

        // A round a second for 200 s, each with a new revision.
        let mut sent = Vec::new();
        for revision in 0..200 {
            let desired = Arc::new(Desired::of("lvs1", vec![chunk(0, 1, &format!("r{revision}"))]).unwrap());
            reporter.take_in(&round_of(LookedAt::default(), &[]));
            assert!(reporter.report(&desired, Observed::default()));
            sent.push(Arc::downgrade(&desired));
            drop(desired);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let alive = sent.iter().filter(|d| d.strong_count() > 0).count();
            assert!(alive <= 2, "{alive} reports held after round {revision}");
        }
        // Backoff: 1, 2, 4, ... 64 s, then a minute: 8 attempts in 200 s, not 200.
        let attempts = requests.load(Ordering::SeqCst);
        assert!((5..=10).contains(&attempts), "{attempts} writes during the outage");
        assert!(accepted.try_recv().is_err());

        // Back: within a minute, the latest status and no other.
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(RETRY_MAX).await;
        let written = accepted.try_recv().expect("the status written once the API server is back");
        assert_eq!(written.applied_revision.as_deref(), Some("r199"));
        assert!(accepted.try_recv().is_err(), "one write");
        drop(reporter);
        writer.await.unwrap();
        server.abort();
    }

    /// An API server that takes each write and never answers: each write is
    /// given up after its timeout, and the retries back off as after errors.
    #[tokio::test(start_paused = true)]
    async fn a_write_never_answered_is_given_up_and_retried_with_backoff() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (mut reporter, reports) = report_slot();
        let writer =
            tokio::spawn(write_statuses(reports, StatusWriter::new(Api::all(Client::new(mock, "default")))));
        let start = tokio::time::Instant::now();
        let server = tokio::spawn(async move {
            let mut taken = Vec::new();
            while let Some((_request, never)) = handle.next_request().await {
                taken.push((tokio::time::Instant::now() - start, never));
            }
            taken
        });
        let mut sent = Vec::new();
        for revision in 0..200 {
            let desired = Arc::new(Desired::of("lvs1", vec![chunk(0, 1, &format!("r{revision}"))]).unwrap());
            assert!(reporter.report(&desired, Observed::default()));
            sent.push(Arc::downgrade(&desired));
            drop(desired);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let alive = sent.iter().filter(|d| d.strong_count() > 0).count();
            assert!(alive <= 2, "{alive} reports held after round {revision}");
        }
        drop(reporter);
        writer.await.unwrap();
        let taken: Vec<u64> = server.await.unwrap().iter().map(|(at, _)| at.as_secs()).collect();
        // Each attempt: the 10 s timeout, then 1, 2, 4, ... s.
        assert_eq!(taken, [0, 11, 23, 37, 55, 81, 123, 193]);
    }
}
