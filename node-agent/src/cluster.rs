//! Cluster mode (`lvs-agent run`): the node's desired state comes from its
//! LvsNode objects, and the agent reports back in their status.
//!
//! ```text
//! watch LvsNodes (label lvs.dev/node=<node>) ─> assemble chunks ─> agent loop ─> kernel, host
//!                                                                   │ Round
//!                                status of each chunk (if changed) <┘
//! kernel table at scrape time ─> /metrics (crate::endpoints)
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
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
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
use serde_json::json;

use crate::{
    endpoints::{AgentMetrics, Endpoints, IpvsMetrics},
    engine::{Changed, Engine, Round, Subject},
    reconcile::KernelTable,
    supervisor::{DesiredState, InboxSender, Input, Sink, Supervisor, Why, inbox},
};
use lvs_health::HealthMap;
use lvs_ipvs::ServiceKey;
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
    /// What /metrics reads of the kernel's IPVS table: nothing, services, or real servers too.
    pub metrics_ipvs: IpvsMetrics,
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
    let (inputs_tx, inputs) = inbox();
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
    let cache = DesiredCache::new(&options.state_dir, &options.node_name);
    let write_statuses = write_statuses(reports, StatusWriter::new(api.clone()));
    let listener = std::net::TcpListener::bind(options.metrics_address)
        .with_context(|| format!("listening on {}", options.metrics_address))?;
    let endpoints_ended =
        Endpoints::new(metrics, resync, options.metrics_ipvs).spawn(listener).context("serving /metrics")?;
    info!(node = %options.node_name, metrics = %options.metrics_address, "started");
    let result = tokio::select! {
        result = watch_desired(api, &options.node_name, cache, inputs_tx.clone()) => result,
        () = write_statuses => Err(anyhow::anyhow!("the engine thread stopped")),
        Ok(error) = endpoints_ended => Err(anyhow::Error::new(error).context("serving /metrics")),
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
///
/// Each version is also cached on disk ([`DesiredCache`]), and the cached one
/// goes to the engine first: an agent restarted while the API server is away
/// applies it, runs its health checks and VRRP, until the watch's first version
/// replaces it.
async fn watch_desired(
    api: Api<LvsNode>,
    node: &str,
    cache: DesiredCache,
    engine: InboxSender<Arc<Desired>>,
) -> Result<()> {
    let cache = Arc::new(cache);
    let reader = Arc::clone(&cache);
    let cached = tokio::task::spawn_blocking(move || reader.read()).await?;
    if let Some(cached) = cached {
        info!(revision = %cached.spec.revision, "applying the desired state cached on disk until the API server answers");
        if engine.send(Input::Desired(Arc::new(cached))).is_err() {
            anyhow::bail!("the engine thread stopped");
        }
    }
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{NODE_LABEL}={node}"));
    let mut events = watcher(api, config).default_backoff().reflect(writer).boxed();
    // Not the cached version: the API's first version always goes on (its
    // objects carry the statuses the writer compares with).
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
        let (writer, version) = (Arc::clone(&cache), Arc::clone(&desired));
        if let Err(error) = tokio::task::spawn_blocking(move || writer.write(&version)).await? {
            warn!(error = format!("{error:#}"), "caching the desired state on disk");
        }
        sent = Some(desired);
    }
    anyhow::bail!("the LvsNode watch ended")
}

/// The most a desired-state cache file may hold; a larger one is ignored. A
/// node's state is split into chunks of at most 1 MiB, so this is 64 chunks.
const CACHE_MAX_BYTES: u64 = 64 << 20;

/// The node's last desired state from the API server, in
/// `<state-dir>/desired.json`: its LvsNode objects (without managedFields).
/// Written durably like the state file at each new version; read at start.
/// A file that cannot be used (unreadable, corrupt, too large, of another
/// node, chunks of no one revision) is ignored with a warning: the agent
/// then waits for the API server, as without a cache.
pub struct DesiredCache {
    file: PathBuf,
    node: String,
}

/// The cache file's content.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedDesired {
    node: String,
    objects: Vec<LvsNode>,
}

impl DesiredCache {
    pub fn new(state_dir: &std::path::Path, node: &str) -> Self {
        DesiredCache { file: state_dir.join("desired.json"), node: node.into() }
    }

    /// The cached desired state, if there is a usable one.
    pub fn read(&self) -> Option<Desired> {
        use std::io::Read;
        let file = match std::fs::File::open(&self.file) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return self.unusable(format_args!("cannot be read: {e}")),
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.take(CACHE_MAX_BYTES + 1).read_to_end(&mut bytes) {
            return self.unusable(format_args!("cannot be read: {e}"));
        }
        if bytes.len() as u64 > CACHE_MAX_BYTES {
            return self.unusable(format_args!("is larger than {CACHE_MAX_BYTES} bytes"));
        }
        let cached: CachedDesired = match serde_json::from_slice(&bytes) {
            Ok(cached) => cached,
            Err(e) => return self.unusable(format_args!("is not a desired-state cache ({e})")),
        };
        if cached.node != self.node {
            return self.unusable(format_args!("is node {}'s, not {}'s", cached.node, self.node));
        }
        let objects = cached.objects.into_iter().map(Arc::new).collect();
        Desired::of(&self.node, objects)
            .or_else(|| self.unusable(format_args!("holds no one revision's chunks")))
    }

    fn unusable(&self, why: std::fmt::Arguments<'_>) -> Option<Desired> {
        warn!(file = %self.file.display(), "the desired-state cache {why}: ignored");
        None
    }

    /// Replaces the cached state with `desired`.
    pub fn write(&self, desired: &Desired) -> Result<()> {
        let objects = desired
            .objects
            .iter()
            .map(|o| {
                let mut object = LvsNode::clone(o);
                object.metadata.managed_fields = None;
                object
            })
            .collect();
        let cached = CachedDesired { node: self.node.clone(), objects };
        crate::engine::write_durably(&self.file, &serde_json::to_vec(&cached)?)
    }
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
        if matches!(why, Why::Startup | Why::Applied) {
            self.metrics.desired(&desired.spec);
        }
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
/// weights, VRRP states.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub health: HealthMap,
    /// (service, destination) -> weight in the kernel as the engine last saw
    /// it; `None` when it has not seen the table.
    pub kernel: Option<HashMap<(ServiceKey, SocketAddr), u16>>,
    /// The VRRP state of each VIP with a VRRP instance.
    pub vips: HashMap<IpAddr, VrrpState>,
}

impl Observed {
    pub fn of(agent: &Supervisor) -> Self {
        Observed {
            health: agent.health(),
            kernel: agent.table().map(kernel_weights),
            vips: agent.vip_states(),
        }
    }
}

/// The weight of each destination of `table`. Not its connection counts: they
/// change with every connection, and a status is written when it changes
/// (the counts are in `/metrics`).
pub fn kernel_weights(table: &KernelTable) -> HashMap<(ServiceKey, SocketAddr), u16> {
    (table.iter())
        .flat_map(|(key, observed)| {
            observed.destinations.iter().map(move |d| {
                ((*key, d.destination.address), u16::try_from(d.destination.weight).unwrap_or(u16::MAX))
            })
        })
        .collect()
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
                                let weight = match (&observed.kernel, service_key) {
                                    (Some(kernel), Some(key)) => {
                                        kernel.get(&(key, address)).copied().unwrap_or_default()
                                    }
                                    _ => d.weight,
                                };
                                DestinationReport { address: d.address, port: d.port, healthy, weight }
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
    use lvs_ipvs::{IpvsError, KernelError, ServiceKey};

    /// Chunk `chunk` of node `lvs1`'s state at `revision`, generation 3: one
    /// service `default/<name>` on VIP 192.0.2.<chunk + 10>:80 with two real
    /// servers; chunk 0 also holds the VIP.
    fn chunk(chunk: u32, chunks: u32, revision: &str) -> Arc<LvsNode> {
        let name = LvsNode::object_name("lvs1", chunk);
        let vip = format!("192.0.2.{}", chunk + 10);
        let vips = if chunk == 0 { format!("vips: [{{address: '{vip}'}}]") } else { String::new() };
        let object: LvsNode = lvs_crds::yaml::from_str(&format!(
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

    /// The watch against a mock API server: the version cached on disk goes
    /// first, before the API server answers; then the list holds both chunks
    /// of one revision (and nothing is sent before it is complete), then a
    /// watch event deletes them, which is the empty state; the cache follows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_sends_each_version_of_the_node_state() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<LvsNode> = Api::all(Client::new(mock, "default"));
        let (engine, versions) = inbox();
        let dir = std::env::temp_dir().join(format!("lvs-agent-watch-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        DesiredCache::new(&dir, "lvs1")
            .write(&Desired::of("lvs1", vec![chunk(0, 1, "r0")]).unwrap())
            .unwrap();
        let cache = DesiredCache::new(&dir, "lvs1");
        let watch = tokio::spawn(async move { watch_desired(api, "lvs1", cache, engine).await });
        // The cached version comes first, alone (taken before the list is answered:
        // versions not yet taken would be one, the newest).
        let cached =
            tokio::task::block_in_place(|| versions.take(Some(Duration::from_secs(5))).unwrap().desired);
        assert_eq!(cached.expect("a version").spec.revision, "r0", "the cached version, first");
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

        // The versions not yet taken are one (the newest): each is taken before
        // the next can come.
        let receive = || {
            let batch = versions.take(Some(Duration::from_secs(5))).expect("the watch is running");
            batch.desired.expect("a version")
        };
        let listed = tokio::task::block_in_place(receive);
        assert_eq!(listed.spec.revision, "r1");
        assert_eq!(listed.objects.len(), 2);
        assert_eq!(listed.spec.director.as_ref().unwrap().services.len(), 2);

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

        // Deleting the first chunk leaves an incomplete state (not sent); then none.
        let deleted = tokio::task::block_in_place(receive);
        assert!(deleted.objects.is_empty());
        assert_eq!(*deleted.spec(), LvsNodeSpec { node: "lvs1".into(), chunks: 1, ..LvsNodeSpec::default() });
        // The cache holds the last version sent.
        let cache = DesiredCache::new(&dir, "lvs1");
        for _ in 0..100 {
            if cache.read().is_some_and(|d| d.objects.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(cache.read().expect("a cache").spec, deleted.spec);
        watch.abort();
        std::fs::remove_dir_all(&dir).unwrap();
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
            kernel: Some([((service, rs1), 0), ((service, rs2), 2)].into()),
            vips: [("192.0.2.10".parse().unwrap(), VrrpState::Backup)].into(),
        };
        let status = statuses(&desired, &Standing::default(), &observed).remove(0).1;
        let weights: Vec<u16> = status.services[0].destinations.iter().map(|d| d.weight).collect();
        assert_eq!(weights, [0, 2]);
        let healthy: Vec<bool> = status.services[0].destinations.iter().map(|d| d.healthy).collect();
        assert_eq!(healthy, [false, true]);
        assert_eq!(status.vips[0].vrrp_state, VrrpState::Backup);
        assert!(!status.vips[0].held, "a backup does not hold the VIP");
    }

    /// The cache gives back the version written, whole; an unusable file
    /// (corrupt, truncated, too large, another node's, half a revision) is
    /// ignored, never an error.
    #[test]
    fn the_desired_state_cache_round_trips_and_ignores_what_it_cannot_use() {
        let dir = std::env::temp_dir().join(format!("lvs-agent-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = DesiredCache::new(&dir, "lvs1");
        assert!(cache.read().is_none(), "no file: no cache");
        let desired = Desired::of("lvs1", vec![chunk(0, 2, "r1"), chunk(1, 2, "r1")]).unwrap();
        cache.write(&desired).unwrap();
        let read = cache.read().expect("the cached version");
        assert_eq!(read.spec, desired.spec);
        assert_eq!(read.version(), desired.version());

        assert!(DesiredCache::new(&dir, "lvs2").read().is_none(), "another node's cache");
        let file = dir.join("desired.json");
        let whole = std::fs::read(&file).unwrap();
        std::fs::write(&file, &whole[..whole.len() / 2]).unwrap();
        assert!(cache.read().is_none(), "truncated");
        std::fs::write(&file, b"\x00garbage").unwrap();
        assert!(cache.read().is_none(), "corrupt");
        let half = Desired { objects: vec![chunk(0, 2, "r1")], spec: desired.spec.clone() };
        cache.write(&half).unwrap();
        assert!(cache.read().is_none(), "one chunk of two");
        let large = std::fs::File::create(&file).unwrap();
        large.set_len(CACHE_MAX_BYTES + 1).unwrap();
        assert!(cache.read().is_none(), "too large");
        std::fs::remove_dir_all(&dir).unwrap();
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

    /// A steady minute on a busy director: a report a second (rounds,
    /// resyncs), each with the kernel's connection counts moved on, and
    /// nothing else changed. The status is written once, not sixty times:
    /// counts belong in `/metrics`.
    #[tokio::test]
    async fn a_steady_minute_of_traffic_writes_the_status_once() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut writer = StatusWriter::new(Api::all(Client::new(mock, "default")));
        let desired = Arc::new(Desired::of("lvs1", vec![chunk(0, 1, "r1")]).unwrap());
        let wanted = crate::desired::desired_services(desired.spec.director.as_ref().unwrap());
        let report_at = |second: u32| {
            let table: KernelTable = (wanted.iter())
                .map(|service| {
                    let destinations = (service.destinations.iter())
                        .map(|&destination| crate::reconcile::ObservedDestination {
                            destination,
                            active_connections: 100 + second * 7,
                            inactive_connections: 1000 + second * 13,
                        })
                        .collect();
                    let observed =
                        crate::reconcile::ObservedService { service: service.service.clone(), destinations };
                    (service.service.key, observed)
                })
                .collect();
            let observed = Observed { kernel: Some(kernel_weights(&table)), ..Observed::default() };
            Report { desired: Arc::clone(&desired), standing: Standing::default(), observed }
        };
        let server = tokio::spawn(async move {
            expect_status_patch(&mut handle, "lvs1").await;
            handle
        });
        for second in 0..60 {
            assert!(writer.write(&report_at(second)).await, "second {second}");
        }
        let mut handle = server.await.unwrap();
        drop(writer);
        assert!(handle.next_request().await.is_none(), "one write in a steady minute");
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
