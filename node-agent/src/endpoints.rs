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
//! Names follow Prometheus' conventions: units last (`_bytes_total`), counters
//! rather than the kernel's rate estimates, a service's protocol, address,
//! port and firewall mark as labels of their own (as node_exporter's ipvs
//! collector has them) with the namespace and name of its owner. What is read
//! of the kernel's table is `--metrics-ipvs`: each service's series (the
//! default), each real server's too (over a million lines a scrape at 10,000
//! services of 10 real servers), or none.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use tokio::sync::oneshot;
use tracing::warn;

use crate::{desired, engine::Round, supervisor::Supervisor};
use lvs_crds::{
    lvs_node::{IpvsService, LvsNodeSpec},
    virtual_service::VrrpState,
};
use lvs_health::CheckerStats;
use lvs_ipvs::{DestinationEntry, IpvsHandle, Protocol, ServiceKey, Stats, ipvsadm::TableEntry};

/// What `/metrics` reads of the kernel's IPVS table (`--metrics-ipvs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IpvsMetrics {
    /// Nothing: the agent's own figures only (node_exporter's ipvs collector
    /// has the kernel's counters)
    None,
    /// Each service's counters, and how many real servers it has and how many
    /// pass their health check
    #[default]
    Services,
    /// Each real server's counters, connections, weight and health too (over a
    /// million lines a scrape at 10,000 services of 10 real servers)
    Destinations,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoundLabels {
    /// `change` (a new desired state) or `resync` (a full one).
    kind: &'static str,
}

/// A virtual service: its key in the kernel, each part a label of its own as
/// node_exporter's collector has them, and the object that asked for it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    /// `tcp`, `udp`, `sctp` (another protocol's number); empty for a
    /// firewall-mark service.
    protocol: String,
    /// The VIP; empty for a firewall-mark service.
    address: String,
    port: String,
    /// The firewall mark; empty for a VIP service.
    fwmark: String,
    /// `ipv4` or `ipv6`.
    family: &'static str,
    /// The owning VirtualService (or Service), empty when the agent did not
    /// ask for the service (it is not in the desired state).
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RealServerLabels {
    #[prometheus(flatten)]
    service: ServiceLabels,
    real_server_address: String,
    real_server_port: String,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A VRRP instance's counter: name, help, value.
type VrrpCounter = (&'static str, &'static str, fn(&lvs_vrrp::InstanceStats) -> u64);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The object that asked for a service: (namespace, name).
type Owners = HashMap<ServiceKey, (String, String)>;

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
    vips: Mutex<Arc<HashMap<IpAddr, VrrpState>>>,
    /// The desired services, for their owners: shared, not copied (a
    /// rendering makes the map of owners, below the engine loop's priority).
    services: Mutex<Arc<Vec<Arc<IpvsService>>>>,
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
        let vips = Arc::new(agent.vip_states());
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = Some(health);
        *self.vrrp.lock().unwrap_or_else(PoisonError::into_inner) = Some(vrrp);
        *self.vips.lock().unwrap_or_else(PoisonError::into_inner) = vips;
    }

    /// Takes the services of a new desired state (for their owners).
    pub fn desired(&self, spec: &LvsNodeSpec) {
        let services = spec.director.iter().flat_map(|director| director.services.iter().cloned()).collect();
        *self.services.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(services);
    }

    fn health(&self) -> Option<Arc<CheckerStats>> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn vrrp(&self) -> Option<Arc<lvs_vrrp::Stats>> {
        self.vrrp.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn vips(&self) -> Arc<HashMap<IpAddr, VrrpState>> {
        Arc::clone(&self.vips.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn owners(&self) -> Owners {
        let services = Arc::clone(&self.services.lock().unwrap_or_else(PoisonError::into_inner));
        services
            .iter()
            .filter_map(|service| {
                let owner = (service.owner.namespace.clone(), service.owner.name.clone());
                Some((desired::service_key(&service.key)?, owner))
            })
            .collect()
    }

    fn register_health(&self, registry: &mut Registry, labels: &Labeller, ipvs: IpvsMetrics) {
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
        if ipvs == IpvsMetrics::None {
            return;
        }
        let mut by_service = HashMap::<_, i64>::new();
        for target in &health.targets {
            *by_service.entry(target.service).or_default() += i64::from(target.healthy);
        }
        let healthy = Family::<ServiceLabels, Gauge>::default();
        for (service, count) in by_service {
            healthy.get_or_create(&labels.service(&service)).set(count);
        }
        registry.register(
            "service_healthy_real_servers",
            "Real servers of the service passing their health check",
            healthy,
        );
        if ipvs == IpvsMetrics::Destinations {
            let healthy = Family::<RealServerLabels, Gauge>::default();
            for target in &health.targets {
                healthy
                    .get_or_create(&labels.real_server(&target.service, target.destination))
                    .set(target.healthy.into());
            }
            registry.register(
                "real_server_healthy",
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
                    lvs_vrrp::AddressFamily::IPv4 => "ipv4",
                    lvs_vrrp::AddressFamily::IPv6 => "ipv6",
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
        // By VIP: what an alert on two masters for one address counts across directors.
        let vip_master = Family::<VipLabels, Gauge>::default();
        for (address, state) in self.vips().iter() {
            let labels = VipLabels { address: address.to_string() };
            vip_master.get_or_create(&labels).set(i64::from(*state == VrrpState::Master));
        }
        registry.register("vip_master", "1 while this node holds the VIP as VRRP master", vip_master);
    }
}

/// The labels of services and real servers, with their owners.
struct Labeller {
    owners: Owners,
}

impl Labeller {
    fn service(&self, key: &ServiceKey) -> ServiceLabels {
        let (namespace, name) = self.owners.get(key).cloned().unwrap_or_default();
        let family = |ipv4: bool| if ipv4 { "ipv4" } else { "ipv6" };
        match *key {
            ServiceKey::Address { protocol, address } => ServiceLabels {
                protocol: match protocol {
                    Protocol::Tcp => "tcp".into(),
                    Protocol::Udp => "udp".into(),
                    Protocol::Sctp => "sctp".into(),
                    Protocol::Other(number) => number.to_string(),
                },
                address: address.ip().to_string(),
                port: address.port().to_string(),
                fwmark: String::new(),
                family: family(address.is_ipv4()),
                namespace,
                name,
            },
            ServiceKey::Fwmark { family: f, mark } => ServiceLabels {
                protocol: String::new(),
                address: String::new(),
                port: String::new(),
                fwmark: mark.to_string(),
                family: family(f == lvs_ipvs::AddressFamily::Ipv4),
                namespace,
                name,
            },
        }
    }

    fn real_server(&self, key: &ServiceKey, address: SocketAddr) -> RealServerLabels {
        RealServerLabels {
            service: self.service(key),
            real_server_address: address.ip().to_string(),
            real_server_port: address.port().to_string(),
        }
    }
}

/// One IPVS counter: its metric name (after `service_`/`real_server_`), unit,
/// help, and where it is in [`Stats`]. The kernel's rate estimates are left
/// out: Prometheus' `rate()` of the counters says the same, over any window.
type StatField = (&'static str, Option<Unit>, &'static str, fn(&Stats) -> u64);

const COUNTERS: [StatField; 5] = [
    ("connections", None, "Connections scheduled", |s| s.connections),
    ("incoming_packets", None, "Packets received", |s| s.packets_in),
    ("outgoing_packets", None, "Packets sent", |s| s.packets_out),
    ("incoming", Some(Unit::Bytes), "Bytes received", |s| s.bytes_in),
    ("outgoing", Some(Unit::Bytes), "Bytes sent", |s| s.bytes_out),
];

/// A real server's gauge: name (after `real_server_`), help, value.
type RealServerField = (&'static str, &'static str, fn(&DestinationEntry) -> u32);

const REAL_SERVER_GAUGES: [RealServerField; 3] = [
    ("active_connections", "Active connections", |d| d.active_connections),
    ("inactive_connections", "Inactive connections (e.g. TIME_WAIT)", |d| d.inactive_connections),
    ("weight", "Weight in the kernel", |d| d.destination.weight),
];

/// The OpenMetrics text of the agent's figures and, as `ipvs` says, of
/// `table` (the kernel's IPVS table; `None` when it could not be read, which
/// `lvs_agent_ipvs_up` tells).
pub fn metrics_text(metrics: &AgentMetrics, table: Option<&[TableEntry]>, ipvs: IpvsMetrics) -> String {
    let mut registry = Registry::with_prefix("lvs_agent");
    let build = Family::<BuildLabels, Gauge>::default();
    build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
    registry.register("build_info", "The agent's version (always 1)", build);
    registry.register("reconciles", "Reconcile rounds, by kind", metrics.rounds.clone());
    registry.register("operations", "IPVS operations applied", metrics.operations.clone());
    registry.register("failures", "Failures of reconcile rounds", metrics.failures.clone());
    if let Some(age) = metrics.since_last_round() {
        let at = SystemTime::now().checked_sub(age).and_then(|at| at.duration_since(UNIX_EPOCH).ok());
        let last = Gauge::<f64, AtomicU64>::default();
        last.set(at.unwrap_or_default().as_secs_f64());
        registry.register_with_unit(
            "last_round_timestamp",
            "When the engine loop's last round ended (Unix time)",
            Unit::Seconds,
            last,
        );
    }
    let labels = Labeller { owners: metrics.owners() };
    metrics.register_health(&mut registry, &labels, ipvs);
    metrics.register_vrrp(&mut registry);
    if ipvs != IpvsMetrics::None {
        register_table(&mut registry, &labels, table, ipvs);
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// Each service's counters and real servers in `table`, and each real
/// server's with [`IpvsMetrics::Destinations`].
fn register_table(
    registry: &mut Registry,
    labels: &Labeller,
    table: Option<&[TableEntry]>,
    ipvs: IpvsMetrics,
) {
    let up = Gauge::<i64>::default();
    up.set(i64::from(table.is_some()));
    registry.register("ipvs_up", "1 when the kernel's IPVS table could be read", up);
    let table = table.unwrap_or_default();
    let services: Vec<_> =
        table.iter().map(|(service, _)| (labels.service(&service.service.key), &service.stats)).collect();
    register_counters(registry, "service", &services);
    let in_kernel = Family::<ServiceLabels, Gauge>::default();
    for ((labels, _), (_, destinations)) in services.iter().zip(table) {
        in_kernel.get_or_create(labels).set(i64::try_from(destinations.len()).unwrap_or(i64::MAX));
    }
    registry.register("service_real_servers", "Real servers of the service in the kernel's table", in_kernel);
    if ipvs != IpvsMetrics::Destinations {
        return;
    }
    let real_servers: Vec<_> = table
        .iter()
        .flat_map(|(service, destinations)| {
            destinations.iter().map(|d| (labels.real_server(&service.service.key, d.destination.address), d))
        })
        .collect();
    for (name, help, value) in REAL_SERVER_GAUGES {
        let family = Family::<RealServerLabels, Gauge>::default();
        for (labels, destination) in &real_servers {
            family.get_or_create(labels).set(value(destination).into());
        }
        registry.register(format!("real_server_{name}"), help, family);
    }
    let stats: Vec<_> = real_servers.into_iter().map(|(labels, d)| (labels, &d.stats)).collect();
    register_counters(registry, "real_server", &stats);
}

/// The counters of `rows` as `<what>_<field>_total` families.
fn register_counters<L>(registry: &mut Registry, what: &str, rows: &[(L, &Stats)])
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    for (name, unit, help, value) in COUNTERS {
        let family = Family::<L, Counter>::default();
        for (labels, stats) in rows {
            family.get_or_create(labels).inc_by(value(stats));
        }
        match unit {
            Some(unit) => registry.register_with_unit(format!("{what}_{name}"), help, unit, family),
            None => registry.register(format!("{what}_{name}"), help, family),
        }
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
    ipvs: IpvsMetrics,
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
    pub fn new(metrics: Arc<AgentMetrics>, resync: Duration, ipvs: IpvsMetrics) -> Self {
        let dump: DumpTable = Arc::new(|| {
            IpvsHandle::connect()
                .and_then(|handle| handle.table())
                .map_err(|error| warn!(%error, "metrics: reading the IPVS table"))
                .ok()
        });
        Endpoints {
            metrics,
            stuck_after: resync * 3 + Duration::from_secs(60),
            ipvs,
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

/// Puts the calling thread, and the threads it starts, at
/// [`ENDPOINTS_NICENESS`] (Linux's nice is per thread and inherited; a thread
/// may always lower its own priority).
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
    /// and rendering a large table take a while: on a thread of its own, which
    /// has the endpoints' thread's nice value (a new thread inherits its
    /// creator's), so that scrapes never slow a round.
    fn start_rendering(&self) {
        if self.rendering.swap(true, Ordering::AcqRel) {
            return;
        }
        let Endpoints { dump, metrics, ipvs, latest, rendering, .. } = self.clone();
        let render = move || {
            // Cleared however the rendering ends, a panic too.
            let _done = ClearOnDrop(rendering);
            let read_at = Instant::now();
            // With `--metrics-ipvs none` the table is not read at all.
            let table = if ipvs == IpvsMetrics::None { None } else { dump() };
            let text = metrics_text(&metrics, table.as_deref(), ipvs);
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
    fn one_service_text(metrics: &AgentMetrics, ipvs: IpvsMetrics) -> String {
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
        metrics_text(metrics, Some(&table), ipvs)
    }

    /// Metrics whose desired state has the service of [`one_service_text`],
    /// owned by the VirtualService shop/web.
    fn metrics_of_shop_web() -> AgentMetrics {
        let vs = serde_json::from_value(serde_json::json!({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"vip": "192.0.2.10", "port": 80, "forwarding": "DirectRouting",
                     "realServers": [{"address": "198.51.100.1"}]},
        }))
        .unwrap();
        let (spec, _) =
            crate::standalone::local_state(&[vs], "director1", &[], crate::standalone::Role::Director);
        let metrics = AgentMetrics::default();
        metrics.desired(&spec);
        metrics
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
        let endpoints = Endpoints::new(Arc::clone(&metrics), Duration::from_secs(10), IpvsMetrics::Services);
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
        let mut endpoints = Endpoints::new(Arc::default(), Duration::from_secs(10), IpvsMetrics::Services);
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

    /// Prometheus' conventions: units last (`_bytes_total`), the service's
    /// key in labels of their own with its owner, counters and no rates.
    #[test]
    fn metrics_carry_each_service_and_real_server() {
        let metrics = metrics_of_shop_web();
        metrics.record(&failing_round(), true);
        metrics.heartbeat();
        let text = one_service_text(&metrics, IpvsMetrics::Destinations);
        let service = r#"protocol="tcp",address="192.0.2.10",port="80",fwmark="",family="ipv4",namespace="shop",name="web""#;
        let both = format!(r#"{service},real_server_address="198.51.100.1",real_server_port="80""#);
        has_lines(
            &text,
            &[
                format!(r#"lvs_agent_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION")),
                r#"lvs_agent_reconciles_total{kind="resync"} 1"#.to_string(),
                "lvs_agent_operations_total 1".into(),
                "lvs_agent_failures_total 2".into(),
                "lvs_agent_ipvs_up 1".into(),
                "# UNIT lvs_agent_service_incoming_bytes bytes".into(),
                format!("lvs_agent_service_connections_total{{{service}}} 5"),
                format!("lvs_agent_service_incoming_bytes_total{{{service}}} 1000"),
                format!("lvs_agent_service_real_servers{{{service}}} 1"),
                format!("lvs_agent_real_server_connections_total{{{both}}} 4"),
                format!("lvs_agent_real_server_outgoing_packets_total{{{both}}} 9"),
                format!("lvs_agent_real_server_active_connections{{{both}}} 3"),
                format!("lvs_agent_real_server_inactive_connections{{{both}}} 1"),
                format!("lvs_agent_real_server_weight{{{both}}} 2"),
            ],
        );
        assert!(!text.contains("per_second"), "no rate gauges: {text}");
        let last = text.lines().find_map(|l| l.strip_prefix("lvs_agent_last_round_timestamp_seconds "));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(last.is_some_and(|at| (now - at.parse::<f64>().unwrap()).abs() < 60.0), "{text}");
        assert!(metrics_text(&metrics, None, IpvsMetrics::Services).contains("lvs_agent_ipvs_up 0"));
    }

    /// A service the desired state does not have (another tool's) and a
    /// firewall-mark service: empty labels where they have no value.
    #[test]
    fn services_without_owner_or_address_have_empty_labels() {
        let fwmark = ServiceKey::Fwmark { family: lvs_ipvs::AddressFamily::Ipv6, mark: 7 };
        let labels = Labeller { owners: Owners::new() };
        assert_eq!(
            labels.service(&fwmark),
            ServiceLabels {
                protocol: String::new(),
                address: String::new(),
                port: String::new(),
                fwmark: "7".into(),
                family: "ipv6",
                namespace: String::new(),
                name: String::new(),
            }
        );
        let text = one_service_text(&AgentMetrics::default(), IpvsMetrics::Services);
        assert!(text.contains(r#"port="80",fwmark="",family="ipv4",namespace="",name=""} 5"#), "{text}");
    }

    /// By default the services' series, none per real server; `none` reads
    /// no table at all.
    #[test]
    fn series_per_real_server_are_opt_in() {
        let text = one_service_text(&metrics_of_shop_web(), IpvsMetrics::Services);
        let service = r#"protocol="tcp",address="192.0.2.10",port="80",fwmark="",family="ipv4",namespace="shop",name="web""#;
        has_lines(
            &text,
            &[
                format!("lvs_agent_service_connections_total{{{service}}} 5"),
                format!("lvs_agent_service_real_servers{{{service}}} 1"),
            ],
        );
        assert!(!text.contains("lvs_agent_real_server_"), "{text}");
        let text = one_service_text(&metrics_of_shop_web(), IpvsMetrics::None);
        assert!(!text.contains("lvs_agent_service_") && !text.contains("ipvs_up"), "{text}");
        assert!(text.contains("lvs_agent_build_info"), "{text}");
    }

    /// Metrics with a health check's and a VRRP instance's figures.
    fn metrics_with_health_and_vrrp() -> AgentMetrics {
        use lvs_health::{FailureKind, TargetStatus};
        let metrics = metrics_of_shop_web();
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
        *metrics.vips.lock().unwrap() = Arc::new([("192.0.2.10".parse().unwrap(), VrrpState::Master)].into());
        metrics
    }

    #[test]
    fn metrics_carry_health_checks_and_vrrp() {
        let metrics = metrics_with_health_and_vrrp();
        let text = metrics_text(&metrics, None, IpvsMetrics::Destinations);
        let instance = r#"interface="eth0",vrid="51",family="ipv4""#;
        let service = r#"protocol="tcp",address="192.0.2.10",port="80",fwmark="",family="ipv4",namespace="shop",name="web""#;
        let real_server = format!(r#"{service},real_server_address="198.51.100.1",real_server_port="80""#);
        has_lines(
            &text,
            &[
                r#"lvs_agent_health_checks_total{result="success"} 5"#.to_string(),
                r#"lvs_agent_health_checks_total{result="timeout"} 2"#.into(),
                r#"lvs_agent_health_transitions_total{to="unhealthy"} 2"#.into(),
                format!("lvs_agent_service_healthy_real_servers{{{service}}} 0"),
                format!("lvs_agent_real_server_healthy{{{real_server}}} 0"),
                format!("lvs_agent_vrrp_master{{{instance}}} 1"),
                format!("lvs_agent_vrrp_transitions_total{{{instance}}} 2"),
                format!("lvs_agent_vrrp_adverts_sent_total{{{instance}}} 10"),
                r#"lvs_agent_vrrp_dropped_total{reason="bad_checksum"} 4"#.into(),
                r#"lvs_agent_vip_master{address="192.0.2.10"} 1"#.into(),
            ],
        );
        let text = metrics_text(&metrics, None, IpvsMetrics::Services);
        assert!(text.contains("lvs_agent_service_healthy_real_servers"), "{text}");
        assert!(!text.contains("lvs_agent_real_server_healthy"), "{text}");
    }

    /// The metric names of `text`: each sample's, without its labels.
    fn metric_names(text: &str) -> std::collections::BTreeSet<&str> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect()
    }

    /// Every `lvs_agent_` metric that the monitoring kit (alerts, dashboard)
    /// and the docs use is one the agent serves, all series on.
    #[test]
    fn the_monitoring_kit_and_the_docs_use_metrics_that_exist() {
        let metrics = metrics_with_health_and_vrrp();
        metrics.record(&failing_round(), true);
        metrics.heartbeat();
        let text = one_service_text(&metrics, IpvsMetrics::Destinations);
        let served = metric_names(&text);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let used = [
            "deploy/monitoring/alerts.yaml",
            "deploy/monitoring/dashboard.json",
            "docs/metrics.md",
            "README.md",
        ];
        let mut checked = 0;
        for file in used {
            let content = std::fs::read_to_string(root.join(file)).unwrap();
            for (at, _) in content.match_indices("lvs_agent_") {
                let name: String =
                    content[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(served.contains(name.as_str()), "{file} uses {name}, which the agent does not serve");
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} uses found");
    }
}
