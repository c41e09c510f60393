//! The status path (the engine's reports, the hand-off, the status writer)
//! through an API outage, on paused time: rounds keep coming (health changes
//! every second) while every status write fails with 503. The agent must hold
//! one report waiting and one in hand at most, retry with backoff, and write
//! the latest status once the API server is back; its memory stays flat.
//!
//! `outage_at_1000_services_for_two_minutes` runs in the normal suite; the
//! full size runs with `cargo test -p lvs-agent --test status_outage -- --ignored`:
//! 10,000 services, ten minutes of outage.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use kube::{Api, Client, client::Body};
use lvs_agent::{
    cluster::{Desired, Observed, StatusWriter, report_slot, write_statuses},
    engine::{LookedAt, Round},
};
use lvs_crds::{
    LvsNode, LvsNodeStatus,
    lvs_node::{Destination, DirectorState, IpvsService, IpvsServiceKey, LvsNodeSpec, ServiceOwner},
    virtual_service::{AddressFamily, Forwarding, Protocol, Scheduler},
};
use lvs_ipvs::ServiceKey;
use serde_json::json;

/// Real servers per service.
const DESTINATIONS: u16 = 2;

fn vip(index: usize) -> IpAddr {
    let [_, _, high, low] = u32::try_from(index).unwrap().to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, 100, high, low))
}

/// Node `lvs1`'s state: `services` services, each with [`DESTINATIONS`] real servers.
fn desired(services: usize) -> Arc<Desired> {
    let services = (0..services)
        .map(|index| {
            Arc::new(IpvsService {
                owner: ServiceOwner {
                    namespace: "default".into(),
                    name: format!("web{index}"),
                    uid: format!("u{index}"),
                    generation: 1,
                    ..Default::default()
                },
                key: IpvsServiceKey {
                    family: AddressFamily::IPv4,
                    address: Some(vip(index)),
                    port: 80,
                    protocol: Protocol::TCP,
                    fwmark: None,
                },
                scheduler: Scheduler::Wlc,
                scheduler_flags: vec![],
                persistence: None,
                one_packet: false,
                destinations: (1..=DESTINATIONS)
                    .map(|d| Destination {
                        address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, d.try_into().unwrap())),
                        port: 80,
                        weight: 1,
                        forwarding: Forwarding::DirectRouting,
                        tunnel: None,
                        upper_threshold: 0,
                        lower_threshold: 0,
                    })
                    .collect(),
                health_check: None,
                drain_seconds: 0,
                sorry_server: None,
            })
        })
        .collect();
    let spec = LvsNodeSpec {
        node: "lvs1".into(),
        chunks: 1,
        revision: "r1".into(),
        director: Some(DirectorState { services, ..DirectorState::default() }),
        ..LvsNodeSpec::default()
    };
    let mut object = LvsNode::new("lvs1", spec);
    object.metadata.labels = Some([("lvs.dev/node".to_string(), "lvs1".to_string())].into());
    object.metadata.generation = Some(1);
    Arc::new(Desired::of("lvs1", vec![Arc::new(object)]).expect("one complete chunk"))
}

/// What the agent sees after round `round`: every destination in the kernel,
/// the first service's first destination with weight `round` (a health check
/// flapping: each round's picture differs, and the last must be the one written).
fn observed(services: usize, round: u16) -> Observed {
    let mut kernel = HashMap::with_capacity(services * usize::from(DESTINATIONS));
    for index in 0..services {
        let key = ServiceKey::tcp(SocketAddr::new(vip(index), 80));
        for d in 1..=DESTINATIONS {
            let destination =
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, d.try_into().unwrap())), 80);
            kernel.insert((key, destination), 1);
        }
    }
    let first = (ServiceKey::tcp(SocketAddr::new(vip(0), 80)), "198.51.100.1:80".parse().unwrap());
    kernel.insert(first, round);
    Observed { kernel: Some(kernel), ..Observed::default() }
}

/// The process's resident memory, in KiB (`VmRSS`).
fn resident_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
}

/// An API server that answers every request 503 while `down`, else accepts
/// the status and sends it on `accepted`; counts the requests.
fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    accepted: tokio::sync::mpsc::UnboundedSender<LvsNodeStatus>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            requests.fetch_add(1, Ordering::SeqCst);
            if down.load(Ordering::SeqCst) {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "ServiceUnavailable", "code": 503});
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

/// `minutes` of outage at `services` services, a round a second.
async fn outage(services: usize, minutes: u16) {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (down, requests) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let server = api_server(handle, Arc::clone(&down), Arc::clone(&requests), accepted_tx);
    let (mut reporter, reports) = report_slot();
    let writer =
        tokio::spawn(write_statuses(reports, StatusWriter::new(Api::all(Client::new(mock, "default")))));
    let desired = desired(services);

    let mut resident = Vec::new();
    let mut reported: Vec<Weak<Desired>> = Vec::new();
    let rounds = minutes * 60;
    for round in 1..=rounds {
        // A health change's round: it looked at one service and applied a weight.
        let mut looked_at = LookedAt::default();
        looked_at.services.insert(ServiceKey::tcp(SocketAddr::new(vip(0), 80)));
        reporter.take_in(&Round { looked_at, ..Round::default() });
        // A copy of its own per report (the services shared), to see which
        // reports something still holds.
        let this = Arc::new(Desired::clone(&desired));
        reported.push(Arc::downgrade(&this));
        assert!(reporter.report(&this, observed(services, round)));
        drop(this);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = reported.iter().filter(|r| r.strong_count() > 0).count();
        assert!(held <= 2, "{held} reports held after round {round}");
        if round % 60 == 0 {
            resident.push(resident_kib());
            let writes = requests.load(Ordering::SeqCst);
            eprintln!(
                "minute {}: {} KiB resident, {writes} writes so far",
                round / 60,
                resident.last().unwrap()
            );
        }
    }
    // Backoff: a write a minute at most once it reached its longest wait.
    let writes = requests.load(Ordering::SeqCst);
    assert!(writes <= 7 + usize::from(minutes), "{writes} writes in {minutes} minutes of outage");
    // Flat: the last minute holds no more than the first (and some allocator slack).
    let (first, last) = (resident[0], *resident.last().unwrap());
    assert!(last <= first + 16 * 1024, "resident memory grew from {first} KiB to {last} KiB: {resident:?}");

    // Back: within a minute, the latest picture is written.
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let status = accepted.try_recv().expect("the status written once the API server is back");
    assert_eq!(status.services.len(), services);
    assert_eq!(status.services[0].destinations[0].weight, rounds, "the latest round's weight");
    assert!(accepted.try_recv().is_err(), "one write");
    drop(reporter);
    writer.await.unwrap();
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn outage_at_1000_services_for_two_minutes() {
    outage(1_000, 2).await;
}

#[tokio::test(start_paused = true)]
#[ignore = "ten minutes of outage at 10,000 services: run with --ignored"]
async fn outage_at_10000_services_for_ten_minutes() {
    outage(10_000, 10).await;
}
