//! The jitter and the [`Checker`] with real listeners.
//!
//! Checker tests run with the API's shortest interval (1 s) and rise/fall 1;
//! each waits a few seconds at most.

use std::{
    net::TcpListener,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::Instant,
};

use pretty_assertions::assert_eq;

use super::{probe::tests::check, *};

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
        check: HealthCheck { rise: 1, fall: 1, ..check(CheckKind::Tcp) },
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
