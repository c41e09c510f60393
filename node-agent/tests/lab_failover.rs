//! Health checks, the sorry server and director failover (VRRP with connection
//! sync), with the agent's binary on the lab's classic topology and real traffic
//! from the client namespace. Each test builds its topology from scratch, so they
//! run one at a time. Ignored on the host; `tests/run` runs them in the lab VM.
//!
//! Figures (take-out and failover times) are printed as `FIGURE ...` lines.

mod common;
// The forged VRRP flood of lab_vrrp's chaos test, shared.
#[path = "../vrrp/tests/flood/mod.rs"]
mod flood;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::sh;
use lvs_agent::host::address;

const AGENT: &str = env!("CARGO_BIN_EXE_lvs-agent");
const VIP: &str = "192.168.16.100";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn topology(args: &str) {
    // `down` deletes the lab veths itself, before the namespaces (whose
    // destruction is asynchronous) would keep their names taken.
    sh(&format!(
        "rm -rf /run/lvs-agent-test; {0} down >/dev/null 2>&1; {0} {args} >/dev/null && {0} web >/dev/null",
        repo().join("tests/lab/topology").display()
    ));
}

fn web(action: &str, rs: &str) {
    sh(&format!("{} {action} {rs} >/dev/null", repo().join("tests/lab/topology").display()));
}

fn in_ns(ns: &str, command: &str) -> String {
    sh(&format!("ip netns exec {ns} {command}"))
}

/// Writes `text` to a manifest file named after `name`.
fn manifest(name: &str, text: &str) -> String {
    let path = format!("/tmp/lvs-failover-{name}.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The DR service of the examples (rs1 weight 2, rs2 weight 1) with `extra`
/// spec lines.
fn dr_service(name: &str, port: u16, real_servers: &[&str], extra: &str) -> String {
    let real_servers: String =
        real_servers.iter().map(|rs| format!("    - {{address: {rs}, weight: 1}}\n")).collect();
    format!(
        "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  vip: {VIP}\n  port: {port}\n  scheduler: rr\n  forwarding: DirectRouting\n  realServers:\n\
         {real_servers}{extra}"
    )
}

const BOTH: [&str; 2] = ["192.168.16.21", "192.168.16.22"];

fn apply_once(node: &str, manifest: &str) {
    in_ns(node, &format!("{AGENT} apply -f {manifest} --once --state-dir /run/lvs-agent-test/{node} 2>&1"));
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running agent (`apply` without `--once`), its log in /tmp, stopped when dropped.
struct Agent {
    child: Child,
    log: String,
}

impl Agent {
    fn start(node: &str, manifest: &str, args: &[&str]) -> Self {
        let log = format!("/tmp/lvs-failover-{node}.log");
        let child = Command::new("ip")
            .args(["netns", "exec", node, AGENT, "apply", "-f", manifest])
            .args(["--state-dir", &format!("/run/lvs-agent-test/{node}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    /// Sends `signal` and waits for the agent to exit.
    fn stop(mut self, signal: &str) {
        sh(&format!("kill -{signal} {}", self.child.id()));
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.log, self.log());
        }
    }
}

/// What the lab looks like, for a failure's message.
fn diagnostics() -> String {
    let mut text = String::new();
    for (ns, command) in [
        ("client", "ip neigh"),
        ("director1", "ip -br addr"),
        ("director2", "ip -br addr"),
        ("director1", "ipvsadm -Lnc"),
        ("director2", "ipvsadm -Lnc"),
        ("director1", "ipvsadm -L --daemon"),
        ("director2", "ipvsadm -L --daemon"),
    ] {
        let output = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", command]).output().unwrap();
        text += &format!("--- {ns}: {command}\n{}", String::from_utf8_lossy(&output.stdout));
    }
    text
}

/// Polls `done` every 20 ms; returns how long it took, panics after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Answers of `n` requests from the client to the VIP, counted by body.
fn requests(n: usize) -> BTreeMap<String, usize> {
    let mut answers = BTreeMap::new();
    for _ in 0..n {
        let answer = in_ns("client", &format!("curl -sS --max-time 3 http://{VIP}/ 2>&1 || true"));
        *answers.entry(answer.trim().to_string()).or_default() += 1;
    }
    answers
}

/// `ipvsadm -S -n` of `node` has `rule`.
fn has_rule(node: &str, rule: &str) -> bool {
    in_ns(node, "ipvsadm -S -n").lines().any(|line| line == rule)
}

/// Whether `node` has the VIP on eth0 (looked at from a thread in its
/// namespace: the takeover times are measured with it, every 20 ms).
fn holds_vip(node: &str) -> bool {
    let vip: IpAddr = VIP.parse().unwrap();
    common::in_netns(node, move || address::addresses("eth0").is_ok_and(|a| a.contains(&vip)))
}

/// Health checks every second, a server out after 2 failures and back after 2
/// successes: out within fall x interval + timeout = 3 s.
const CHECK: &str = "  healthCheck: {type: HTTP, path: /, intervalSeconds: 1, timeoutSeconds: 1, rise: 2, fall: 2, onFailure: ON_FAILURE}\n  drainSeconds: 0\n";
const OUT_BOUND: Duration = Duration::from_secs(2 + 1);

fn check(on_failure: &str) -> String {
    CHECK.replace("ON_FAILURE", on_failure)
}

/// Stops rs1's web server and waits until the director's rules match `out`;
/// then restarts it and waits until they match `back`. Prints both times.
fn take_out_and_bring_back(on_failure: &str, out: &dyn Fn() -> bool, back: &dyn Fn() -> bool) {
    let stopped = Instant::now();
    web("stop-web", "rs1");
    wait_until("rs1 taken out", Duration::from_secs(15), out);
    // From before the stop: includes the time the stop itself takes.
    let taken_out = stopped.elapsed();
    println!(
        "FIGURE health {on_failure}: rs1 out of service {:.2} s after it stopped (bound {OUT_BOUND:?})",
        taken_out.as_secs_f64()
    );
    assert!(taken_out <= OUT_BOUND + Duration::from_millis(500), "taken out after {taken_out:?}");
    let answers = requests(6);
    assert_eq!(answers, BTreeMap::from([("web2".to_string(), 6)]), "only rs2 answers");

    web("start-web", "rs1");
    let restarted = Instant::now();
    wait_until("rs1 back", Duration::from_secs(15), back);
    println!(
        "FIGURE health {on_failure}: rs1 back {:.2} s after it restarted (rise 2 x 1 s)",
        restarted.elapsed().as_secs_f64()
    );
    let answers = requests(6);
    assert!(answers.contains_key("web1") && answers.contains_key("web2"), "answers: {answers:?}");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_failing_real_server_is_quiesced_and_comes_back() {
    topology("classic");
    let manifest = manifest("quiesce", &dr_service("web", 80, &BOTH, &check("Quiesce")));
    for rs in ["rs1", "rs2"] {
        apply_once(rs, &manifest);
    }
    let _agent = Agent::start("director1", &manifest, &[]);
    let rule = |weight: u16| format!("-a -t {VIP}:80 -r 192.168.16.21:80 -g -w {weight}");
    wait_until("programmed", Duration::from_secs(20), || has_rule("director1", &rule(1)));
    take_out_and_bring_back("Quiesce", &|| has_rule("director1", &rule(0)), &|| {
        has_rule("director1", &rule(1))
    });
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_failing_real_server_is_removed_and_comes_back() {
    topology("classic");
    let manifest = manifest("remove", &dr_service("web", 80, &BOTH, &check("Remove")));
    for rs in ["rs1", "rs2"] {
        apply_once(rs, &manifest);
    }
    let _agent = Agent::start("director1", &manifest, &[]);
    let rs1 = || in_ns("director1", "ipvsadm -S -n").contains("-r 192.168.16.21:80 -g -w 1");
    wait_until("programmed", Duration::from_secs(20), rs1);
    // drainSeconds 0: the failing destination goes at once.
    let gone = || !in_ns("director1", "ipvsadm -S -n").contains("-r 192.168.16.21:80");
    take_out_and_bring_back("Remove", &gone, &rs1);
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn the_sorry_server_answers_when_no_real_server_is_healthy() {
    topology("classic");
    // director2 stands in as the sorry server: a web server answering "sorry",
    // made a DR real server of the VIP by its own agent.
    let sorry = "  sorryServer: {address: 192.168.16.12}\n";
    let manifest = manifest("sorry", &dr_service("web", 80, &BOTH, &(check("Quiesce") + sorry)));
    for node in ["rs1", "rs2", "director2"] {
        apply_once(node, &manifest);
    }
    sh("mkdir -p /tmp/lvs-sorry && echo sorry > /tmp/lvs-sorry/index.html");
    let server = Command::new("ip")
        .args(["netns", "exec", "director2", "busybox", "httpd", "-f", "-p", "80", "-h", "/tmp/lvs-sorry"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Killed(server);
    let _agent = Agent::start("director1", &manifest, &[]);
    let sorry_rule = format!("-a -t {VIP}:80 -r 192.168.16.12:80 -g -w 1");
    wait_until("programmed", Duration::from_secs(20), || {
        has_rule("director1", &format!("-a -t {VIP}:80 -r 192.168.16.22:80 -g -w 1"))
    });
    assert!(!has_rule("director1", &sorry_rule), "no sorry server while real servers are healthy");

    web("stop-web", "rs1 rs2");
    wait_until("the sorry server stands in", Duration::from_secs(15), || has_rule("director1", &sorry_rule));
    assert_eq!(requests(4), BTreeMap::from([("sorry".to_string(), 4)]));

    web("start-web", "rs2");
    wait_until("the sorry server steps back", Duration::from_secs(15), || {
        !has_rule("director1", &sorry_rule)
    });
    assert_eq!(requests(4), BTreeMap::from([("web2".to_string(), 4)]));
}

/// A streaming TCP server: a line every 100 ms on each connection.
const STREAM_SERVER: &str = "
import socket, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000))
s.listen()
def serve(c):
    n = 0
    while True:
        n += 1
        c.sendall(b'line %d\\n' % n)
        time.sleep(0.1)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
";

/// Two directors of one VIP (VRRP router 51, connection sync) in front of a web
/// service (port 80, rs1 and rs2) and a streaming one (port 9000, rs1), and a
/// client streaming through the VIP.
struct FailoverLab {
    manifest: String,
    advert_ms: u32,
    _server: Killed,
    _client: Killed,
    stream: String,
}

impl FailoverLab {
    fn new(name: &str, advert_ms: u32) -> (Self, Agent, Agent) {
        topology("classic");
        let failover = format!(
            "  failover:\n    vrrp: {{virtualRouterId: 51, advertIntervalMs: {advert_ms}, preempt: true}}\n  connectionSync: true\n"
        );
        let text =
            [dr_service("web", 80, &BOTH, &failover), dr_service("stream", 9000, &BOTH[..1], &failover)]
                .join("---\n");
        let manifest = manifest(name, &text);
        for rs in ["rs1", "rs2"] {
            apply_once(rs, &manifest);
        }
        let server = Command::new("ip")
            .args(["netns", "exec", "rs1", "python3", "-c", STREAM_SERVER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let director1 = Agent::start("director1", &manifest, &["--vrrp-priority", "150"]);
        let director2 = Agent::start("director2", &manifest, &["--vrrp-priority", "100"]);
        wait_until("director1 is master", Duration::from_secs(30), || holds_vip("director1"));
        // Started after director1, director2 may become master before it hears
        // director1's first adverts; it must step down at the next one.
        wait_until("one master (director2 steps down)", Duration::from_secs(5), || !holds_vip("director2"));
        assert!(holds_vip("director1"), "director1 stays master");
        // Hot standby: the backup has the rules too, and the sync daemons their roles.
        let rule = format!("-a -t {VIP}:9000 -r 192.168.16.21:9000 -g -w 1");
        wait_until("rules on both", Duration::from_secs(20), || {
            has_rule("director1", &rule) && has_rule("director2", &rule)
        });
        wait_until("sync daemons", Duration::from_secs(10), || {
            in_ns("director1", "ipvsadm -L --daemon").contains("master sync daemon")
                && in_ns("director2", "ipvsadm -L --daemon").contains("backup sync daemon")
        });

        let stream = format!("/tmp/lvs-failover-{name}.stream");
        // The client's stdin stays open: at its end nc would half-close the connection.
        let client = Command::new("ip")
            .args(["netns", "exec", "client", "busybox", "nc", VIP, "9000"])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&stream).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lab =
            FailoverLab { manifest, advert_ms, _server: Killed(server), _client: Killed(client), stream };
        wait_until("the stream starts", Duration::from_secs(10), || lab.received() >= 5);
        // The backup learns the connection from the master's sync daemon.
        wait_until("the connection is synced", Duration::from_secs(10), || {
            in_ns("director2", "ipvsadm -Lnc").contains("192.168.16.21:9000")
        });
        (lab, director1, director2)
    }

    fn received(&self) -> usize {
        std::fs::read_to_string(&self.stream).unwrap_or_default().lines().count()
    }

    /// RFC 5798's Master_Down_Interval of director2 (priority 100).
    fn master_down_interval(&self) -> Duration {
        let advert = Duration::from_millis(self.advert_ms.into());
        3 * advert + advert * (256 - 100) / 256
    }

    /// Waits for director2 to take the VIP, prints the time since `since`.
    fn takeover(&self, what: &str, since: Instant, bound: Duration) {
        wait_until("director2 takes the VIP", bound + Duration::from_secs(10), || holds_vip("director2"));
        let took = since.elapsed();
        println!(
            "FIGURE failover ({what}, adverts every {} ms): director2 holds the VIP after {:.2} s (bound {:.2} s)",
            self.advert_ms,
            took.as_secs_f64(),
            bound.as_secs_f64()
        );
        assert!(took <= bound, "{what}: takeover after {took:?}, bound {bound:?}");
    }

    /// The stream goes on and new connections succeed.
    fn service_goes_on(&self) {
        let before = self.received();
        let start = Instant::now();
        while self.received() < before + 10 {
            assert!(start.elapsed() < Duration::from_secs(10), "the stream stalled\n{}", diagnostics());
            sleep(Duration::from_millis(50));
        }
        let answers = requests(4);
        assert!(answers.keys().all(|a| a == "web1" || a == "web2"), "answers: {answers:?}");
    }
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn the_backup_takes_over_when_the_master_agent_is_killed() {
    let (lab, director1, _director2) = FailoverLab::new("kill", 1000);
    let killed = Instant::now();
    director1.stop("KILL");
    lab.takeover("master agent killed", killed, lab.master_down_interval() + Duration::from_millis(500));
    assert!(in_ns("director2", "ipvsadm -L --daemon").contains("master sync daemon"));
    lab.service_goes_on();

    // The higher priority comes back and preempts; the stream survives that too.
    let director1 = Agent::start("director1", &lab.manifest, &["--vrrp-priority", "150"]);
    let start = Instant::now();
    while !holds_vip("director1") || holds_vip("director2") {
        assert!(start.elapsed() < Duration::from_secs(15), "director1 did not preempt\n{}", diagnostics());
        sleep(Duration::from_millis(50));
    }
    lab.service_goes_on();
    drop(director1);
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn the_backup_takes_over_when_the_master_link_is_cut() {
    let (lab, director1, _director2) = FailoverLab::new("link", 200);
    let cut = Instant::now();
    in_ns("director1", "ip link set eth0 down");
    lab.takeover("master link cut", cut, lab.master_down_interval() + Duration::from_millis(500));
    lab.service_goes_on();

    // The link comes back: one master again (director1, by priority), and the
    // service still answers.
    in_ns("director1", "ip link set eth0 up");
    wait_until("one master", Duration::from_secs(10), || holds_vip("director1") && !holds_vip("director2"));
    lab.service_goes_on();
    assert!(director1.log().contains("Master"), "{}", director1.log());
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_graceful_stop_hands_over_within_a_second() {
    let (lab, director1, _director2) = FailoverLab::new("term", 1000);
    let stopped = Instant::now();
    director1.stop("TERM");
    lab.takeover("master agent stopped with SIGTERM", stopped, Duration::from_secs(1));
    assert!(!holds_vip("director1"), "a stopping master gives its VIP up");
    lab.service_goes_on();
}

/// keepalived as director2: VRRPv3, router 51, the VIP on eth0, `priority`,
/// preempting or not.
fn start_keepalived(priority: u8, preempt: bool) -> Killed {
    let config = format!(
        "global_defs {{\n  vrrp_version 3\n  router_id director2\n}}\n\
         vrrp_instance VI_51 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n\
         advert_int 1\n{}  virtual_ipaddress {{\n    {VIP}/32 dev eth0\n  }}\n}}\n",
        if preempt { "" } else { "  nopreempt\n" }
    );
    std::fs::write("/tmp/lvs-failover-keepalived.conf", config).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", "director2", "keepalived", "--dont-fork", "--log-console", "--vrrp"])
        .args(["--use-file", "/tmp/lvs-failover-keepalived.conf"])
        .args([
            "--pid",
            "/tmp/lvs-failover-keepalived.pid",
            "--vrrp_pid",
            "/tmp/lvs-failover-keepalived-vrrp.pid",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create("/tmp/lvs-failover-keepalived.log").unwrap())
        .spawn()
        .unwrap();
    Killed(child)
}

/// The advert interval of the keepalived test (both sides).
const ADVERT: Duration = Duration::from_secs(1);
/// What a handover may take beyond RFC 5798's timers: two advert intervals
/// (measured in the lab on a loaded 2-core host: up to 0.66 s beyond them).
const SLACK: Duration = Duration::from_secs(2);
/// How long keepalived takes to start and open its VRRP socket in the lab, at
/// most.
const KEEPALIVED_START: Duration = Duration::from_secs(2);

/// The UTC time of day now, in seconds.
fn seconds_of_day_now() -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    now.as_secs_f64().rem_euclid(86_400.0)
}

/// The UTC time of day of an agent log line (`2026-12-03T16:53:08.989003Z ...`),
/// in seconds.
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
    let mut fields = time.split(':').map(|field| field.parse::<f64>().ok());
    Some(fields.next()?? * 3600.0 + fields.next()?? * 60.0 + fields.next()??)
}

/// RFC 5798's Skew_Time at `priority` for adverts every [`ADVERT`].
fn skew_time(priority: u32) -> Duration {
    ADVERT * (256 - priority) / 256
}

/// RFC 5798's Master_Down_Interval at `priority` for adverts every [`ADVERT`].
fn master_down_interval(priority: u32) -> Duration {
    3 * ADVERT + skew_time(priority)
}

fn keepalived_stop(keepalived: Killed) {
    // SIGTERM: keepalived leaves as master with a priority-0 advertisement.
    sh(&format!("kill -TERM {}", keepalived.0.id()));
    let mut keepalived = keepalived;
    let _ = keepalived.0.wait();
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn the_agent_and_keepalived_share_a_vip() {
    topology("classic");
    let failover = "  failover:\n    vrrp: {virtualRouterId: 51, advertIntervalMs: 1000, preempt: true}\n";
    let manifest = manifest("keepalived", &dr_service("web", 80, &BOTH, failover));
    for rs in ["rs1", "rs2"] {
        apply_once(rs, &manifest);
    }
    let one_master = |master: &str, backup: &str| holds_vip(master) && !holds_vip(backup);

    // The agent has the higher priority: it is master, keepalived backup.
    let agent = Agent::start("director1", &manifest, &["--vrrp-priority", "150"]);
    let keepalived = start_keepalived(100, true);
    wait_until("the agent is master", Duration::from_secs(30), || one_master("director1", "director2"));
    sleep(Duration::from_secs(3)); // keepalived hears the adverts and stays backup
    assert!(one_master("director1", "director2"), "keepalived stays backup");
    let answers = requests(4);
    assert!(answers.keys().all(|a| a == "web1" || a == "web2"), "answers: {answers:?}");

    // The agent goes: keepalived takes over; it comes back and preempts.
    let stopped = Instant::now();
    agent.stop("TERM");
    wait_until("keepalived takes over", Duration::from_secs(10), || one_master("director2", "director1"));
    // keepalived (priority 100) waits its Skew_Time after our priority 0.
    let took = stopped.elapsed();
    let bound = skew_time(100) + SLACK;
    println!(
        "FIGURE keepalived took the VIP {:.2} s after the agent's SIGTERM (bound {:.2} s)",
        took.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(took <= bound, "keepalived took the VIP after {took:?}, bound {bound:?}");
    let agent = Agent::start("director1", &manifest, &["--vrrp-priority", "150"]);
    let restarted = Instant::now();
    // The agent's own start (reading manifests, the first reconcile) took 12-18 s
    // in the lab under a loaded host, before its VRRP instance starts: the wait
    // allows for it, the bound counts from the instance's start.
    while !one_master("director1", "director2") {
        assert!(
            restarted.elapsed() < Duration::from_secs(40),
            "the agent did not preempt keepalived\n{}\n--- keepalived:\n{}\n--- agent:\n{}",
            diagnostics(),
            std::fs::read_to_string("/tmp/lvs-failover-keepalived.log").unwrap_or_default(),
            agent.log()
        );
        sleep(Duration::from_millis(20));
    }
    let preempted = seconds_of_day_now();
    let vrrp_started = agent
        .log()
        .lines()
        .find(|line| line.contains("from=Initialize to=Backup"))
        .and_then(log_seconds_of_day)
        .expect("the agent logged its VRRP start");
    // A starting agent is Backup for its Master_Down_Interval, then preempts.
    let took = Duration::from_secs_f64((preempted - vrrp_started).rem_euclid(86_400.0));
    let bound = master_down_interval(150) + SLACK;
    println!(
        "FIGURE the restarted agent preempted keepalived {:.2} s after its VRRP instance started ({:.2} s \
         after the process; bound {:.2} s)",
        took.as_secs_f64(),
        restarted.elapsed().as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(took <= bound, "the agent preempted after {took:?}, bound {bound:?}");

    // keepalived with the higher priority preempts the agent; when it stops the
    // agent takes over.
    keepalived_stop(keepalived);
    let keepalived = start_keepalived(200, true);
    let started = Instant::now();
    wait_until("keepalived preempts the agent", Duration::from_secs(15), || {
        one_master("director2", "director1")
    });
    let took = started.elapsed();
    let bound = master_down_interval(200) + KEEPALIVED_START + SLACK;
    println!(
        "FIGURE keepalived (priority 200) preempted the agent {:.2} s after it started (bound {:.2} s)",
        took.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(took <= bound, "keepalived preempted after {took:?}, bound {bound:?}");
    let stopped = Instant::now();
    keepalived_stop(keepalived);
    wait_until("the agent takes over", Duration::from_secs(10), || one_master("director1", "director2"));
    let took = stopped.elapsed();
    let bound = skew_time(150) + SLACK;
    println!(
        "FIGURE the agent took the VIP {:.2} s after keepalived's SIGTERM (bound {:.2} s)",
        took.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(took <= bound, "the agent took the VIP after {took:?}, bound {bound:?}");

    // A non-preempting keepalived with a higher priority leaves the master alone.
    let _keepalived = start_keepalived(200, false);
    sleep(Duration::from_secs(5));
    assert!(one_master("director1", "director2"), "nopreempt: the agent stays master");
    drop(agent);
}

/// Writes `text` to `path` the way an editor or `kubectl` would: whole, by
/// rename, so the agent's watch sees one change.
fn replace_manifest(path: &str, text: &str) {
    let temporary = format!("{path}.new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// One round's latency on director1: rs1's weight set to `weight` in the
/// manifest until the kernel has it (polled with ipvsadm every 20 ms).
fn round_latency(path: &str, failover: &str, weight: u32) -> Duration {
    let text =
        dr_service("web", 80, &BOTH, failover).replacen("weight: 1}", &format!("weight: {weight}}}"), 1);
    replace_manifest(path, &text);
    let rule = format!("-a -t {VIP}:80 -r 192.168.16.21:80 -g -w {weight}");
    wait_until("the weight change applied", Duration::from_secs(20), || has_rule("director1", &rule))
}

/// Issue 12's figures: the agent's memory and round latency under a forged
/// VRRP flood (see lab_vrrp's chaos test for the mix) against the same
/// agent idle, in one run; the VIP never lacks its one master for more than
/// one advert interval, during the flood or after it. Prints `VERDICT
/// vrrp-flood-agent: PASS` or `FAIL (...)`.
#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_vrrp_flood_costs_the_agent_little_memory_and_round_latency() {
    topology("classic");
    let failover = "  failover:\n    vrrp: {virtualRouterId: 51, advertIntervalMs: 200, preempt: true}\n";
    let path = manifest("flood", &dr_service("web", 80, &BOTH, failover));
    for rs in ["rs1", "rs2"] {
        apply_once(rs, &path);
    }
    let director1 = Agent::start("director1", &path, &["--vrrp-priority", "150"]);
    let _director2 = Agent::start("director2", &path, &["--vrrp-priority", "100"]);
    let one_master = || holds_vip("director1") && !holds_vip("director2");
    let start = Instant::now();
    while !one_master() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "director1 alone master: not in 30 s\n{}",
            diagnostics()
        );
        sleep(Duration::from_millis(50));
    }
    let pid = director1.child.id().to_string();
    sleep(Duration::from_secs(2));
    let (idle_rss, _) = flood::memory_kib(&pid);
    let idle: Vec<Duration> = (2..5).map(|weight| round_latency(&path, failover, weight)).collect();

    let rate = 10_000;
    let flood =
        flood::Flood::start("client", "192.168.16.2".parse().unwrap(), 51, VIP.parse().unwrap(), rate);
    let started = Instant::now();
    // Samples without director1 as the only holder, and the longest run of them
    // in a row: the VIP may not have two masters (or none) for more than one
    // advert interval (200 ms, the samples' spacing at least); a blip shorter
    // than that (a backup that missed adverts behind the flood and heard the
    // master again at once) is within what VRRP promises.
    let (mut rss, mut lost_master, mut in_a_row, mut longest) = (Vec::new(), 0, 0, 0);
    let mut under: Vec<Duration> = Vec::new();
    let mut weight = 5;
    while started.elapsed() < Duration::from_secs(15) {
        rss.push(flood::memory_kib(&pid).0);
        if one_master() {
            in_a_row = 0;
        } else {
            lost_master += 1;
            in_a_row += 1;
            longest = longest.max(in_a_row);
        }
        if started.elapsed() > Duration::from_secs(2) && under.len() < 3 {
            under.push(round_latency(&path, failover, weight));
            weight += 1;
        }
        sleep(Duration::from_millis(200));
    }
    let report = flood.stop();
    let mut settled = true;
    let after_start = Instant::now();
    while after_start.elapsed() < Duration::from_secs(3) {
        settled &= one_master();
        sleep(Duration::from_millis(50));
    }
    let after: Vec<Duration> =
        (weight..weight + 3).map(|weight| round_latency(&path, failover, weight)).collect();
    let (after_rss, hwm) = flood::memory_kib(&pid);
    let peak_rss = rss.iter().copied().max().unwrap_or(0);
    let half = rss.len() / 2;
    let (early, late) = (rss[..half].iter().max().copied(), rss[half..].iter().max().copied());
    let seconds = |latencies: &[Duration]| {
        latencies.iter().map(|l| format!("{:.2}", l.as_secs_f64())).collect::<Vec<_>>().join(" ")
    };
    println!(
        "FIGURE vrrp flood against the agent: {} packets in {:.1} s = {:.0}/s asked {rate}/s ({} send errors), \
         mix: {}",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.errors,
        flood::MIX
    );
    println!(
        "FIGURE vrrp flood against the agent: RSS idle {idle_rss} KiB, during the flood peak {peak_rss} KiB \
         (first half {early:?}, second half {late:?}), after {after_rss} KiB, VmHWM {hwm} KiB"
    );
    println!(
        "FIGURE vrrp flood against the agent: round latency (manifest change to kernel, ipvsadm polled every \
         20 ms) idle {} s, under the flood {} s, after {} s",
        seconds(&idle),
        seconds(&under),
        seconds(&after)
    );
    println!(
        "FIGURE vrrp flood against the agent: {lost_master} samples without director1 as the only VIP holder, \
         at most {longest} in a row"
    );
    let mut failures = Vec::new();
    if longest > 1 {
        failures.push(format!(
            "director1 was not the only VIP holder in {longest} samples in a row (more than one advert \
             interval; {lost_master} samples in all)"
        ));
    }
    if !settled {
        failures.push("not one master after the flood".to_string());
    }
    let growth = peak_rss.saturating_sub(idle_rss);
    if growth > 4 * 1024 {
        failures.push(format!("the agent's RSS grew by {growth} KiB"));
    }
    let worst_idle = idle.iter().max().copied().unwrap_or_default();
    let worst_under = under.iter().max().copied().unwrap_or_default();
    if worst_under > worst_idle * 3 + Duration::from_secs(1) {
        failures.push(format!("round latency {worst_under:?} under the flood, {worst_idle:?} idle"));
    }
    if failures.is_empty() {
        println!("VERDICT vrrp-flood-agent: PASS");
    } else {
        println!("VERDICT vrrp-flood-agent: FAIL ({})", failures.join("; "));
    }
    assert!(failures.is_empty(), "{failures:?}\n{}", director1.log());
}
