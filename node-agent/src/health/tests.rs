//! The target list, the jitter and the [`Checker`] with real listeners.
//!
//! Checker tests run with the API's shortest interval (1 s) and rise/fall 1;
//! each waits a few seconds at most.

use std::{
    net::TcpListener,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::Instant,
};

use lvs_crds::virtual_service::HealthCheckType;
use pretty_assertions::assert_eq;

use super::{probe::tests::check, *};
use lvs_ipvs::Protocol;

const DIRECTOR: &str = r#"
services:
  - owner: {namespace: default, name: web}
    key: {family: IPv4, address: 10.0.0.1, port: 80, protocol: TCP}
    scheduler: wlc
    destinations:
      - {address: 192.168.1.1, port: 8080, weight: 1, forwarding: NAT}
      - {address: 192.168.1.2, port: 8080, weight: 2, forwarding: NAT}
    healthCheck: {type: HTTP, path: /healthz, intervalSeconds: 2, timeoutSeconds: 1, rise: 2, fall: 3, onFailure: Quiesce}
    sorryServer: {address: 192.168.1.9, port: 80, weight: 1, forwarding: NAT}
  - owner: {namespace: default, name: unchecked}
    key: {family: IPv4, address: 10.0.0.2, port: 80, protocol: TCP}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 80, weight: 1, forwarding: DirectRouting}
  - owner: {namespace: default, name: none}
    key: {family: IPv4, address: 10.0.0.3, port: 80, protocol: TCP}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 80, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: None}
  - owner: {namespace: default, name: dns}
    key: {family: IPv6, address: "fd00::53", port: 53, protocol: UDP}
    scheduler: rr
    destinations:
      - {address: "fd00::1", port: 53, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: UDP, payload: x}
  - owner: {namespace: default, name: marked}
    key: {family: IPv4, fwmark: 7}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 0, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: TCP}
  - owner: {namespace: default, name: marked-with-port}
    key: {family: IPv4, fwmark: 8}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 0, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: TCP, port: 443}
"#;

#[test]
fn targets_of_a_director() {
    let director: DirectorState = serde_yaml::from_str(DIRECTOR).unwrap();
    let targets = targets(&director);
    let summary: Vec<_> =
        targets.iter().map(|t| (t.service, t.destination.to_string(), t.check.kind)).collect();
    let web = ServiceKey::tcp("10.0.0.1:80".parse().unwrap());
    let dns = ServiceKey::udp("[fd00::53]:53".parse().unwrap());
    let marked = ServiceKey::Fwmark { family: lvs_ipvs::AddressFamily::Ipv4, mark: 8 };
    assert_eq!(
        summary,
        [
            (web, "192.168.1.1:8080".to_owned(), HealthCheckType::HTTP),
            (web, "192.168.1.2:8080".to_owned(), HealthCheckType::HTTP),
            (dns, "[fd00::1]:53".to_owned(), HealthCheckType::UDP),
            (marked, "192.168.1.1:0".to_owned(), HealthCheckType::TCP),
        ]
    );
    assert_eq!(targets[0].check.path.as_deref(), Some("/healthz"));
    assert!(matches!(targets[2].service, ServiceKey::Address { protocol: Protocol::Udp, .. }));
    assert_eq!(
        Probe::new(&targets[3].check, targets[3].destination).address().to_string(),
        "192.168.1.1:443"
    );
}

#[test]
fn first_check_is_within_the_interval_spread_and_on_the_grid() {
    let mut rng = fastrand::Rng::with_seed(7);
    let interval = Duration::from_secs(2);
    let now = Duration::from_millis(12_345) + Duration::from_nanos(678);
    let mut deciles = [0u32; 10];
    for _ in 0..10_000 {
        let first = first_check(now, interval, &mut rng);
        assert!(first >= now && first < now + interval + CHECK_GRID, "{first:?}");
        assert_eq!(first.as_nanos() % CHECK_GRID.as_nanos(), 0, "{first:?}");
        deciles[((first - now).as_nanos() * 10 / interval.as_nanos()).min(9) as usize] += 1;
    }
    // Uniform: about 1,000 per tenth of the interval.
    assert!(deciles.iter().all(|&n| (800..1200).contains(&n)), "{deciles:?}");
    assert_eq!(first_check(Duration::ZERO, Duration::ZERO, &mut rng), Duration::ZERO);
    assert_eq!(first_check(Duration::from_millis(1), Duration::ZERO, &mut rng), CHECK_GRID);
}

#[test]
fn health_map_defaults_to_healthy() {
    let map = HealthMap::default();
    assert!(map.is_healthy(ServiceKey::tcp("10.0.0.1:80".parse().unwrap()), "10.1.1.1:80".parse().unwrap()));
    assert!(map.is_empty());
}

fn service() -> ServiceKey {
    ServiceKey::tcp("10.0.0.1:80".parse().unwrap())
}

fn tcp_target(destination: SocketAddr) -> Target {
    Target {
        service: service(),
        destination,
        check: HealthCheck { rise: 1, fall: 1, ..check(HealthCheckType::TCP) },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// Waits (at most `seconds`) for the next change.
fn next(events: &Receiver<HealthChange>, seconds: u64) -> HealthChange {
    events.recv_timeout(Duration::from_secs(seconds)).expect("a health change")
}

/// Waits until `checker` has run `n` checks of `destination`.
fn wait_checks(checker: &Checker, destination: SocketAddr, n: u64) -> TargetStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = checker.stats().targets.into_iter().find(|t| t.destination == destination).unwrap();
        if status.checks >= n || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn checker_rise_and_fall() {
    let runtime = runtime();
    let (tx, events) = mpsc::channel();
    let mut checker = Checker::new(runtime.handle().clone(), tx);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let destination = listener.local_addr().unwrap();
    checker.set_targets(vec![tcp_target(destination)]);
    assert_eq!(checker.len(), 1);
    assert!(checker.health().is_healthy(service(), destination));

    let status = wait_checks(&checker, destination, 1);
    assert_eq!((status.healthy, status.last_check_passed, status.reason), (true, Some(true), None));

    drop(listener);
    let down = next(&events, 3);
    assert_eq!(
        down,
        HealthChange {
            service: service(),
            destination,
            healthy: false,
            reason: format!("connect {destination}: connection refused"),
        }
    );
    assert!(!checker.health().is_healthy(service(), destination));
    assert_eq!(checker.health().iter().collect::<Vec<_>>(), [(service(), destination, false)]);

    // Listening again on the same port (std sets SO_REUSEADDR).
    let _listener = TcpListener::bind(destination).unwrap();
    let up = next(&events, 3);
    assert!(up.healthy, "{up:?}");
    assert!(checker.health().is_healthy(service(), destination));

    let stats = checker.stats();
    assert_eq!((stats.ups, stats.downs), (1, 1));
    assert!(stats.failures[&FailureKind::Refused] >= 1, "{stats:?}");
    assert_eq!(stats.checks, stats.successes + stats.failures.values().sum::<u64>());
    assert_eq!(stats.targets.len(), 1);
}

#[test]
fn set_targets_keeps_unchanged_targets() {
    let runtime = runtime();
    let (tx, events) = mpsc::channel();
    let mut checker = Checker::new(runtime.handle().clone(), tx);
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_address = up.local_addr().unwrap();
    let down_address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    checker.set_targets(vec![tcp_target(down_address), tcp_target(up_address)]);
    assert_eq!(next(&events, 3).destination, down_address);
    let checks_before = wait_checks(&checker, up_address, 1).checks;
    assert!(checks_before >= 1);

    // The same targets again, plus a new one: nothing restarts.
    let new = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    checker.set_targets(vec![tcp_target(up_address), tcp_target(down_address), tcp_target(new)]);
    assert_eq!(checker.len(), 3);
    let health = checker.health();
    assert!(!health.is_healthy(service(), down_address));
    assert!(health.is_healthy(service(), new));
    let stats = checker.stats();
    let row = |d: SocketAddr| stats.targets.iter().find(|t| t.destination == d).unwrap().clone();
    assert!(row(up_address).checks >= checks_before);
    assert!(row(down_address).checks >= 1);
    assert_eq!(row(down_address).reason, Some(format!("connect {down_address}: connection refused")));

    // A changed check restarts the task: it stays unhealthy (no event), its
    // run starts over.
    let mut changed = tcp_target(down_address);
    changed.check.rise = 2;
    checker.set_targets(vec![tcp_target(up_address), changed]);
    assert_eq!(checker.len(), 2);
    assert!(!checker.health().is_healthy(service(), down_address));
    let row = checker.stats().targets.into_iter().find(|t| t.destination == down_address).unwrap();
    assert_eq!((row.checks, row.healthy), (0, false));

    // A removed target no longer counts: it is healthy as far as the map knows.
    checker.set_targets(vec![tcp_target(up_address)]);
    assert!(checker.health().is_healthy(service(), down_address));
    assert_eq!(checker.health().len(), 1);
    assert!(events.try_recv().is_err(), "no event for kept, restarted or removed targets");
    drop(up);
}

#[test]
fn dropping_the_checker_stops_its_tasks() {
    let runtime = runtime();
    let (tx, events) = mpsc::channel();
    let mut checker = Checker::new(runtime.handle().clone(), tx);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    checker.set_targets(vec![tcp_target(closed)]);
    drop(checker);
    // Every task (and with it every sender) is gone; at most a change made
    // before the drop may be waiting.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("the checker's tasks still run"),
        }
    }
}
