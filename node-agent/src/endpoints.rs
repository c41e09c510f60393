//! The agent's HTTP endpoints, in both modes: `/metrics`, `/healthz` (the
//! engine loop's liveness) and `/readyz` (its first round has ended).
//!
//! `/metrics` is served from a snapshot: the kernel's table is read and
//! rendered in the background, one rendering at a time, on a thread below the
//! engine loop's priority, and the latest rendering answers every scrape. One
//! older than [`FRESH_FOR`] is still served while the next is made: a storm of
//! scrapes costs one reading per [`FRESH_FOR`] and at most two renderings in
//! memory, whatever its size, and only the scrapes before the first rendering
//! wait for the table. Scrapes beyond [`SCRAPES_IN_FLIGHT`] are refused at
//! once. The engine keeps no whole table of its own (it reads the kernel in
//! slices when it resyncs), so the snapshot is the endpoint's.
//!
//! Series per real server (traffic, connections, weight, health) are opt-in
//! (`--metrics-destinations`): at 10,000 services of 10 real servers they are
//! over a million lines a scrape. Per service, the counters and how many real
//! servers are in the kernel and healthy are always there.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::oneshot;
use tracing::warn;

use crate::{engine::Round, supervisor::Supervisor};
use lvs_health::CheckerStats;
use lvs_ipvs::{DestinationEntry, IpvsHandle, Stats, ipvsadm::TableEntry};

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
    /// Shared snapshots: a rendering clones the `Arc` and lets the lock go at
    /// once, so the engine thread never waits for a scrape.
    health: Mutex<Option<Arc<CheckerStats>>>,
    vrrp: Mutex<Option<Arc<lvs_vrrp::Stats>>>,
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

    /// A round of the loop: its liveness, its counts, and the health checks'
    /// and VRRP's figures after it.
    pub fn round(&self, round: &Round, full: bool, agent: &Supervisor) {
        self.heartbeat();
        self.record(round, full);
        self.observe(agent);
    }

    pub fn record(&self, round: &Round, full: bool) {
        self.rounds.get_or_create(&RoundLabels { kind: if full { "resync" } else { "change" } }).inc();
        self.operations.inc_by(round.applied.len() as u64);
        self.failures.inc_by(round.failures.len() as u64);
    }

    /// Takes the health checks' and VRRP's figures from `agent`.
    pub fn observe(&self, agent: &Supervisor) {
        let (health, vrrp) = (Arc::new(agent.health_stats()), Arc::new(agent.vrrp_stats()));
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = Some(health);
        *self.vrrp.lock().unwrap_or_else(PoisonError::into_inner) = Some(vrrp);
    }

    fn health(&self) -> Option<Arc<CheckerStats>> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn vrrp(&self) -> Option<Arc<lvs_vrrp::Stats>> {
        self.vrrp.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn register_health(&self, registry: &mut Registry, per_destination: bool) {
        let Some(health) = self.health() else { return };
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
        let mut by_service = HashMap::<_, i64>::new();
        for target in &health.targets {
            *by_service.entry(target.service).or_default() += i64::from(target.healthy);
        }
        let healthy = Family::<ServiceLabels, Gauge>::default();
        for (service, count) in by_service {
            healthy.get_or_create(&ServiceLabels { service: service.to_string() }).set(count);
        }
        registry.register("service_healthy_destinations", "Real servers passing their health check", healthy);
        if per_destination {
            let healthy = Family::<DestinationLabels, Gauge>::default();
            for target in &health.targets {
                let labels = DestinationLabels {
                    service: target.service.to_string(),
                    destination: target.destination.to_string(),
                };
                healthy.get_or_create(&labels).set(i64::from(target.healthy));
            }
            registry.register(
                "destination_healthy",
                "1 while the real server passes its health check",
                healthy,
            );
        }
    }

    fn register_vrrp(&self, registry: &mut Registry) {
        let Some(vrrp) = self.vrrp() else { return };
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
/// tells); the series of each real server only with `per_destination`.
pub fn metrics_text(metrics: &AgentMetrics, table: Option<&[TableEntry]>, per_destination: bool) -> String {
    let mut registry = Registry::with_prefix("lvs_agent");
    registry.register("reconciles", "Reconcile rounds, by kind", metrics.rounds.clone());
    registry.register("operations", "IPVS operations applied", metrics.operations.clone());
    registry.register("failures", "Failures of reconcile rounds", metrics.failures.clone());
    let up = Gauge::<i64>::default();
    up.set(i64::from(table.is_some()));
    registry.register("ipvs_up", "1 when the kernel's IPVS table could be read", up);
    metrics.register_health(&mut registry, per_destination);
    metrics.register_vrrp(&mut registry);

    let table = table.unwrap_or_default();
    let services = table
        .iter()
        .map(|(service, _)| (ServiceLabels { service: service.service.key.to_string() }, &service.stats));
    register_stats(&mut registry, "service", services.collect());
    let in_kernel = Family::<ServiceLabels, Gauge>::default();
    for (service, destinations) in table {
        let labels = ServiceLabels { service: service.service.key.to_string() };
        in_kernel.get_or_create(&labels).set(i64::try_from(destinations.len()).unwrap_or(i64::MAX));
    }
    registry.register("service_destinations", "Real servers in the kernel's table", in_kernel);
    if per_destination {
        register_destinations(&mut registry, table);
    }

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// The gauges, counters and rates of each real server in `table`.
fn register_destinations(registry: &mut Registry, table: &[TableEntry]) {
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
        registry,
        "destination",
        destinations.iter().map(|(l, d)| (l.clone(), &d.stats)).collect(),
    );
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

/// Scrapes in flight at once; more are answered 503 at once.
const SCRAPES_IN_FLIGHT: usize = 16;

/// How long a rendering of the table is fresh. Prometheus scrapes every 15 s
/// or more: within that, a second reading tells nothing new.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// How long the scrapes before the first rendering wait for it.
const FIRST_RENDERING_WAIT: Duration = Duration::from_secs(60);

/// How far below the engine loop the endpoints and their renderings run (nice
/// +10 weighs a tenth of nice 0 when both want the CPU).
const ENDPOINTS_NICENESS: i32 = 10;

/// Reads the kernel's IPVS table (`None` when it cannot be read).
type DumpTable = Arc<dyn Fn() -> Option<Vec<TableEntry>> + Send + Sync>;

/// A rendering of `/metrics`, and when its table was read.
#[derive(Clone)]
struct Snapshot {
    read_at: Instant,
    text: Bytes,
}

/// What the endpoints answer from: the engine's figures, how long the loop may
/// go without a round before it counts as stuck, and the table's reader.
#[derive(Clone)]
pub struct Endpoints {
    metrics: Arc<AgentMetrics>,
    stuck_after: Duration,
    per_destination: bool,
    dump: DumpTable,
    fresh_for: Duration,
    /// Admission of scrapes ([`SCRAPES_IN_FLIGHT`]).
    scrapes: Arc<tokio::sync::Semaphore>,
    /// The latest rendering (`None` before the first).
    latest: Arc<tokio::sync::watch::Sender<Option<Snapshot>>>,
    /// Set while a rendering is under way: one at a time.
    rendering: Arc<AtomicBool>,
}

impl Endpoints {
    /// The loop rounds at least once per resync (its steps are rounds): three
    /// resyncs without one, and a minute to spare, is a loop that is stuck.
    pub fn new(metrics: Arc<AgentMetrics>, resync: Duration, per_destination: bool) -> Self {
        let dump: DumpTable = Arc::new(|| {
            IpvsHandle::connect()
                .and_then(|handle| handle.table())
                .map_err(|error| warn!(%error, "metrics: reading the IPVS table"))
                .ok()
        });
        Endpoints {
            metrics,
            stuck_after: resync * 3 + Duration::from_secs(60),
            per_destination,
            dump,
            fresh_for: FRESH_FOR,
            scrapes: Arc::new(tokio::sync::Semaphore::new(SCRAPES_IN_FLIGHT)),
            latest: Arc::new(tokio::sync::watch::Sender::new(None)),
            rendering: Arc::default(),
        }
    }

    /// Serves the endpoints on `listener` until the runtime ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, router(self)).await
    }

    /// Serves the endpoints on a thread and runtime of their own, below the
    /// priority of the engine loop and of the VRRP and health-check tasks: a
    /// storm of scrapes (each a copy of a large rendering) takes what CPU they
    /// leave. The receiver gets the error that ends the serving.
    pub fn spawn(
        self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<oneshot::Receiver<std::io::Error>> {
        listener.set_nonblocking(true)?;
        let (failed, ended) = oneshot::channel();
        let serve = move || {
            lower_priority();
            let served =
                tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
                    runtime.block_on(async { self.serve(tokio::net::TcpListener::from_std(listener)?).await })
                });
            if let Err(error) = served {
                let _ = failed.send(error);
            }
        };
        std::thread::Builder::new().name("endpoints".into()).spawn(serve)?;
        Ok(ended)
    }
}

/// Puts the calling thread at [`ENDPOINTS_NICENESS`] (Linux's nice is per
/// thread; a thread may always lower its own priority).
fn lower_priority() {
    if let Err(error) = rustix::process::setpriority_process(None, ENDPOINTS_NICENESS) {
        warn!(%error, "metrics: lowering the endpoints' priority");
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
) -> (StatusCode, [(&'static str, &'static str); 1], Bytes) {
    let text_plain = |status, message: String| (status, [("content-type", "text/plain")], message.into());
    let Ok(_admitted) = endpoints.scrapes.try_acquire() else {
        let busy = format!("{SCRAPES_IN_FLIGHT} scrapes are in flight; try again later\n");
        return text_plain(StatusCode::SERVICE_UNAVAILABLE, busy);
    };
    let latest = endpoints.latest.borrow().clone();
    if latest.as_ref().is_none_or(|s| s.read_at.elapsed() >= endpoints.fresh_for) {
        endpoints.start_rendering();
    }
    // A stale rendering is served while the next one is made: no scrape waits
    // for the kernel's table, but the first.
    let snapshot = match latest {
        Some(snapshot) => snapshot,
        None => {
            let mut first = endpoints.latest.subscribe();
            match tokio::time::timeout(FIRST_RENDERING_WAIT, first.wait_for(Option::is_some)).await {
                Ok(Ok(snapshot)) => snapshot.clone().expect("waited for Some"),
                _ => {
                    let late = "the first rendering of the metrics has not ended\n".to_string();
                    return text_plain(StatusCode::SERVICE_UNAVAILABLE, late);
                }
            }
        }
    };
    (StatusCode::OK, [("content-type", OPENMETRICS)], snapshot.text)
}

impl Endpoints {
    /// Reads and renders the table unless a rendering is under way. Reading
    /// and rendering a large table take a while: on a thread of its own, below
    /// the engine loop's priority, so that scrapes never slow a round.
    fn start_rendering(&self) {
        if self.rendering.swap(true, Ordering::AcqRel) {
            return;
        }
        let Endpoints { dump, metrics, per_destination, latest, rendering, .. } = self.clone();
        let render = move || {
            // Cleared however the rendering ends, a panic too.
            let _done = ClearOnDrop(rendering);
            lower_priority();
            let read_at = Instant::now();
            let text = metrics_text(&metrics, dump().as_deref(), per_destination);
            latest.send_replace(Some(Snapshot { read_at, text: text.into() }));
        };
        if let Err(error) = std::thread::Builder::new().name("metrics".into()).spawn(render) {
            warn!(%error, "metrics: starting a rendering");
            self.rendering.store(false, Ordering::Release);
        }
    }
}

/// Clears its flag when dropped.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::engine::{Failure, Subject};
    use lvs_ipvs::{Destination, ForwardMethod, IpvsError, KernelError, Service, ServiceEntry, ServiceKey};

    fn failing_round() -> Round {
        let service = ServiceKey::tcp("192.0.2.11:80".parse().unwrap());
        Round {
            applied: vec!["-a -t 192.0.2.10:80 -r 198.51.100.1:80 -g -w 1".into()],
            failures: vec![
                Failure::new(
                    Subject::Service(service),
                    IpvsError::Kernel { op: "add destination".into(), error: KernelError::OutOfRange },
                ),
                Failure::new(
                    Subject::DirectorVip("192.0.2.10".parse().unwrap()),
                    "not permitted".to_string(),
                ),
            ],
            next_check: None,
            draining: std::collections::BTreeSet::new(),
            looked_at: crate::engine::LookedAt::default(),
        }
    }

    /// A table of one service with one real server, in OpenMetrics text.
    fn one_service_text(metrics: &AgentMetrics, per_destination: bool) -> String {
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
        metrics_text(metrics, Some(&table), per_destination)
    }

    fn has_lines(text: &str, lines: &[String]) {
        for line in lines {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[tokio::test]
    async fn endpoints_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Arc::new(AgentMetrics::default());
        let endpoints = Endpoints::new(Arc::clone(&metrics), Duration::from_secs(10), false);
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

    /// A scrape storm: a bounded number in flight (the rest refused at once),
    /// one reading of the table for all of them while it is fresh; once it is
    /// stale, it is served while the next reading is made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_storm_reads_the_table_once() {
        use std::sync::atomic::AtomicUsize;
        let (reading, most, reads) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::<AtomicUsize>::default());
        let mut endpoints = Endpoints::new(Arc::default(), Duration::from_secs(10), false);
        endpoints.fresh_for = Duration::from_secs(2);
        let (now, peak, count) = (Arc::clone(&reading), Arc::clone(&most), Arc::clone(&reads));
        endpoints.dump = Arc::new(move || {
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            now.fetch_sub(1, Ordering::SeqCst);
            // Counted once read: the rendering that follows holds this reading.
            count.fetch_add(1, Ordering::SeqCst);
            None
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(endpoints.serve(listener));
        let scrape = move || async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let started = Instant::now();
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            let status = response.get(9..12).unwrap_or_default().to_string();
            (status, response.contains("lvs_agent_ipvs_up 0"), started.elapsed())
        };
        let storm = (0..40).map(|_| tokio::spawn(scrape()));
        let answers: Vec<_> =
            futures::future::join_all(storm).await.into_iter().map(Result::unwrap).collect();
        let served = answers.iter().filter(|(status, text, _)| status == "200" && *text).count();
        let refused = answers.iter().filter(|(status, ..)| status == "503").count();
        assert_eq!((served + refused, most.load(Ordering::SeqCst)), (40, 1), "{answers:?}");
        assert!((1..=SCRAPES_IN_FLIGHT).contains(&served), "{answers:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one reading for the whole storm");
        // Fresh: served from the snapshot, at once.
        assert_eq!(scrape().await.0, "200");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Stale: still served at once (no wait for the reading), and read again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (status, _, took) = scrape().await;
        assert_eq!(status, "200");
        assert!(took < Duration::from_millis(250), "a stale scrape waited {took:?} for the reading");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(most.load(Ordering::SeqCst), 1, "one reading at a time");
    }

    #[test]
    fn metrics_carry_each_service_and_destination() {
        let metrics = AgentMetrics::default();
        metrics.record(&failing_round(), true);
        let text = one_service_text(&metrics, true);
        let service = r#"service="TCP 192.0.2.10:80""#;
        let both = r#"service="TCP 192.0.2.10:80",destination="198.51.100.1:80""#;
        has_lines(
            &text,
            &[
                r#"lvs_agent_reconciles_total{kind="resync"} 1"#.to_string(),
                "lvs_agent_operations_total 1".into(),
                "lvs_agent_failures_total 2".into(),
                "lvs_agent_ipvs_up 1".into(),
                format!("lvs_agent_service_connections_total{{{service}}} 5"),
                format!("lvs_agent_service_bytes_in_total{{{service}}} 1000"),
                format!("lvs_agent_service_bytes_in_per_second{{{service}}} 40"),
                format!("lvs_agent_service_destinations{{{service}}} 1"),
                format!("lvs_agent_destination_connections_total{{{both}}} 4"),
                format!("lvs_agent_destination_packets_out_total{{{both}}} 9"),
                format!("lvs_agent_destination_active_connections{{{both}}} 3"),
                format!("lvs_agent_destination_inactive_connections{{{both}}} 1"),
                format!("lvs_agent_destination_weight{{{both}}} 2"),
            ],
        );
        assert!(metrics_text(&metrics, None, true).contains("lvs_agent_ipvs_up 0"));
    }

    /// Without --metrics-destinations: the services' series, none per real server.
    #[test]
    fn series_per_real_server_are_opt_in() {
        let text = one_service_text(&AgentMetrics::default(), false);
        let service = r#"service="TCP 192.0.2.10:80""#;
        has_lines(
            &text,
            &[
                format!("lvs_agent_service_connections_total{{{service}}} 5"),
                format!("lvs_agent_service_destinations{{{service}}} 1"),
            ],
        );
        assert!(!text.contains("lvs_agent_destination_"), "{text}");
    }

    #[test]
    fn metrics_carry_health_checks_and_vrrp() {
        use lvs_health::{FailureKind, TargetStatus};
        let metrics = AgentMetrics::default();
        let service = ServiceKey::tcp("192.0.2.10:80".parse().unwrap());
        *metrics.health.lock().unwrap() = Some(Arc::new(CheckerStats {
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
        }));
        *metrics.vrrp.lock().unwrap() = Some(Arc::new(lvs_vrrp::Stats {
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
        }));
        let text = metrics_text(&metrics, None, true);
        let instance = r#"interface="eth0",vrid="51",family="IPv4""#;
        has_lines(
            &text,
            &[
                r#"lvs_agent_health_checks_total{result="success"} 5"#.to_string(),
                r#"lvs_agent_health_checks_total{result="timeout"} 2"#.into(),
                r#"lvs_agent_health_transitions_total{to="unhealthy"} 2"#.into(),
                r#"lvs_agent_service_healthy_destinations{service="TCP 192.0.2.10:80"} 0"#.into(),
                r#"lvs_agent_destination_healthy{service="TCP 192.0.2.10:80",destination="198.51.100.1:80"} 0"#
                    .into(),
                format!("lvs_agent_vrrp_master{{{instance}}} 1"),
                format!("lvs_agent_vrrp_transitions_total{{{instance}}} 2"),
                format!("lvs_agent_vrrp_adverts_sent_total{{{instance}}} 10"),
                r#"lvs_agent_vrrp_dropped_total{reason="bad_checksum"} 4"#.into(),
            ],
        );
        let text = metrics_text(&metrics, None, false);
        assert!(text.contains("lvs_agent_service_healthy_destinations"), "{text}");
        assert!(!text.contains("lvs_agent_destination_healthy"), "{text}");
    }
}
