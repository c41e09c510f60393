//! Load test of the health checker, for tests/bench/health-checks.
//!
//!   health_load serve N                   listeners on 127.1.x.y:8080 (N of them)
//!   health_load check N tcp|http [SECONDS] [WARMUP] [WORKERS]
//!
//! `serve` binds N listeners, one per address 127.1.(i / 250).(i % 250 + 1),
//! port 8080 (the whole 127/8 is local on Linux, so no port range is needed),
//! prints `READY` and answers every connection with a small HTTP 200 (a TCP
//! check just connects and closes). It runs until killed.
//!
//! `check` runs a [`Checker`] over the same N addresses with intervalSeconds 1
//! (timeout 1, rise 2, fall 3), TCP or HTTP (`GET /`, status 200-399), on a
//! multi-thread tokio runtime with WORKERS worker threads (default: one per
//! CPU, as the agent's). After WARMUP seconds (default 5: every target has
//! started) it measures SECONDS seconds (default 30) and prints one line:
//!
//!   RESULT kind=tcp targets=5000 seconds=30.0 cpu_percent=12.3 checks_per_second=4999.8
//!     failures=0 unhealthy=0 changes=0 per_target=30..31 rss_kib=12345
//!
//! cpu_percent is utime+stime of this process (/proc/self/stat) over the window,
//! as a percentage of one core (user_percent and system_percent: its two parts). Both sides raise RLIMIT_NOFILE to its hard limit.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::mpsc,
    time::{Duration, Instant},
};

use lvs_health::{CheckKind, Checker, FailureKind, HealthCheck, Target};
use lvs_ipvs::ServiceKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 8080;

fn address(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)), PORT)
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: health_load serve N | health_load check N tcp|http [SECONDS] [WARMUP] [WORKERS]";
    raise_fd_limit();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", n] => serve(n.parse().expect(usage)),
        ["check", n, kind, ref rest @ ..] => {
            let number = |i: usize, default: f64| rest.get(i).map_or(default, |s| s.parse().expect(usage));
            let kind = match kind {
                "tcp" => CheckKind::Tcp,
                "http" => CheckKind::Http,
                _ => panic!("{usage}"),
            };
            let workers = rest.get(2).map(|s| s.parse().expect(usage));
            check(n.parse().expect(usage), kind, number(0, 30.0), number(1, 5.0), workers);
        }
        _ => panic!("{usage}"),
    }
}

fn serve(n: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut listeners = Vec::with_capacity(n);
        for i in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(address(i)).unwrap_or_else(|e| panic!("bind {}: {e}", address(i)));
            listeners.push(socket.listen(1024).unwrap());
        }
        for listener in listeners {
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else { continue };
                    tokio::spawn(async move {
                        let mut request = [0u8; 1024];
                        // A TCP check closes at once (0 bytes); an HTTP check's
                        // request fits in one read on loopback.
                        if let Ok(1..) = stream.read(&mut request).await {
                            let response =
                                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
                            let _ = stream.write_all(response).await;
                        }
                    });
                }
            });
        }
        println!("READY");
        std::future::pending::<()>().await;
    });
}

/// utime and stime of this process, in seconds.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may contain spaces): state is field 3,
    // utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
    let seconds = |i: usize| fields[i].parse::<u64>().unwrap() as f64 / per_second as f64;
    (seconds(11), seconds(12))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn check(n: usize, kind: CheckKind, seconds: f64, warmup: f64, workers: Option<usize>) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build().unwrap();
    let (tx, events) = mpsc::channel();
    let mut checker = Checker::new(runtime.handle().clone(), tx);
    let check = HealthCheck {
        kind,
        path: None,
        host: None,
        port: None,
        expected_status: None,
        body_contains: None,
        payload: None,
        interval_seconds: 1,
        timeout_seconds: 1,
        rise: 2,
        fall: 3,
    };
    // 100 real servers per service, as a director with 50 services would have.
    let targets = (0..n)
        .map(|i| Target {
            service: ServiceKey::tcp(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i / 100) as u8)),
                80,
            )),
            destination: address(i),
            check: check.clone(),
        })
        .collect();
    checker.set_targets(targets);

    std::thread::sleep(Duration::from_secs_f64(warmup));
    let (start, start_cpu, start_stats) = (Instant::now(), cpu_seconds(), checker.stats());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (wall, end_cpu, stats) = (start.elapsed().as_secs_f64(), cpu_seconds(), checker.stats());
    let (user, system) = (end_cpu.0 - start_cpu.0, end_cpu.1 - start_cpu.1);

    let checks = stats.checks - start_stats.checks;
    // Checks per target in the window: about SECONDS each when they run once a second.
    let per_target: Vec<u64> = stats
        .targets
        .iter()
        .zip(&start_stats.targets)
        .map(|(end, start)| end.checks - start.checks)
        .collect();
    let (min, max) = (per_target.iter().min().copied(), per_target.iter().max().copied());
    let failures = stats.failures.values().sum::<u64>() - start_stats.failures.values().sum::<u64>();
    let changes = events.try_iter().count();
    let unhealthy = checker.health().iter().filter(|(_, _, healthy)| !healthy).count();
    let kinds: Vec<String> = FailureKind::ALL
        .iter()
        .map(|k| (k, stats.failures[k] - start_stats.failures[k]))
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{}:{n}", k.label()))
        .collect();
    let reasons: Vec<&str> = stats.targets.iter().filter_map(|t| t.reason.as_deref()).take(3).collect();
    println!(
        "RESULT kind={} targets={n} seconds={wall:.1} cpu_percent={:.1} user_percent={:.1} \
         system_percent={:.1} checks_per_second={:.1} failures={failures} \
         unhealthy={unhealthy} changes={changes} per_target={}..{} rss_kib={}",
        format!("{kind:?}").to_lowercase(),
        (user + system) / wall * 100.0,
        user / wall * 100.0,
        system / wall * 100.0,
        checks as f64 / wall,
        min.unwrap_or(0),
        max.unwrap_or(0),
        rss_kib(),
    );
    if failures > 0 {
        println!("FAILURES {} e.g. {reasons:?}", kinds.join(" "));
    }
    drop(checker);
}
