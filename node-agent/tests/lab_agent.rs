//! The agent in standalone mode on the lab's classic topologies, with real
//! traffic: curl from the client namespace through the VIP. Each test builds its
//! topology from scratch (tests/lab/topology), so they run one at a time.
//! Ignored on the host; `tests/run` runs them in the lab VM.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{sh, sorted_lines};

const AGENT: &str = env!("CARGO_BIN_EXE_lvs-agent");
const VIP_URL: &str = "http://192.168.16.100/";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(name: &str) -> String {
    repo().join("deploy/examples").join(name).display().to_string()
}

/// Builds a topology (`classic`, `routed ...`) with web servers on rs1 and rs2,
/// and forgets the agents' state of the previous one.
fn topology(args: &str) {
    let script = repo().join("tests/lab/topology");
    sh(&format!(
        "rm -rf /run/lvs-agent-test; {0} down >/dev/null 2>&1; {0} {args} >/dev/null && {0} web >/dev/null",
        script.display()
    ));
}

fn in_ns(ns: &str, command: &str) -> String {
    sh(&format!("ip netns exec {ns} {command}"))
}

/// The agent as its image runs it: no capability but NET_ADMIN and NET_RAW (the
/// DaemonSet's), no environment but a `PATH` with nothing on it (the image holds
/// no `ip`, `nft` or `modprobe`).
const AS_DEPLOYED: &str = "setpriv --inh-caps=-all,+net_admin,+net_raw --bounding-set=-all,+net_admin,+net_raw \
                           env -i PATH=/nonexistent";

/// `lvs-agent apply --once` of `manifest` on `node`, as deployed; panics with
/// the agent's output if it fails.
fn apply_once(node: &str, manifest: &str) {
    in_ns(
        node,
        &format!(
            "{AS_DEPLOYED} {AGENT} apply -f {manifest} --once --state-dir /run/lvs-agent-test/{node} 2>&1"
        ),
    );
}

/// Unloads the kernel modules named (or prefixed) in `modules`, as on a node
/// where nothing loaded them yet, so that the agent's requests must make the
/// kernel load each one. Retries while the previous topology's namespaces,
/// which hold references, are being torn down.
fn unload_modules(modules: &[&str]) {
    let wanted = |name: &str| modules.iter().any(|m| name == *m || name.starts_with(&format!("{m}_")));
    let start = Instant::now();
    loop {
        let listing = std::fs::read_to_string("/proc/modules").unwrap();
        let loaded: Vec<&str> =
            listing.lines().filter_map(|line| line.split(' ').next()).filter(|name| wanted(name)).collect();
        if loaded.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "cannot unload {loaded:?}:\n{listing}");
        for module in loaded {
            let _ = Command::new("rmmod").arg(module).stderr(Stdio::null()).status();
        }
        sleep(Duration::from_millis(200));
    }
}

/// What a director's IPVS work makes the kernel load.
const IPVS_MODULES: [&str; 1] = ["ip_vs"];

/// What an IPIP real server makes the kernel load, with the modules that hold
/// ip_tunnel once other tests loaded them (fou for GUE, ip_gre for GRE).
const TUNNEL_MODULES: [&str; 6] = ["fou", "ip_gre", "gre", "ipip", "tunnel4", "ip_tunnel"];

/// Answers of `n` requests from the client to the VIP, counted by body (a
/// failed request counts as its curl error text).
fn requests(n: usize) -> BTreeMap<String, usize> {
    let mut answers = BTreeMap::new();
    for _ in 0..n {
        let answer = in_ns("client", &format!("curl -sS --max-time 5 {VIP_URL} 2>&1 || true"));
        *answers.entry(answer.trim().to_string()).or_default() += 1;
    }
    answers
}

/// Every answer is a real server's: no request failed.
fn only_real_servers_answer(answers: &BTreeMap<String, usize>) {
    assert!(answers.keys().all(|answer| answer == "web1" || answer == "web2"), "answers: {answers:?}");
}

fn both_real_servers_answer(answers: &BTreeMap<String, usize>) {
    assert!(answers.contains_key("web1") && answers.contains_key("web2"), "answers: {answers:?}");
    assert_eq!(answers.values().sum::<usize>(), answers["web1"] + answers["web2"], "answers: {answers:?}");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn direct_routing_example_serves_through_the_vip_with_weights_2_to_1() {
    topology("classic");
    unload_modules(&[&IPVS_MODULES[..], &["dummy"]].concat());
    for node in ["rs1", "rs2", "director1"] {
        apply_once(node, &example("dr.yaml"));
    }
    assert_eq!(in_ns("rs1", "sysctl -n net.ipv4.conf.all.arp_ignore").trim(), "1");
    assert!(in_ns("rs1", "ip -br addr show dev lvs0").contains("192.168.16.100/32"));
    let answers = requests(6);
    assert_eq!(answers, BTreeMap::from([("web1".to_string(), 4), ("web2".to_string(), 2)]));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn nat_example_serves_through_the_director() {
    topology("routed");
    unload_modules(&IPVS_MODULES);
    apply_once("director1", &example("nat.yaml"));
    assert_eq!(in_ns("director1", "sysctl -n net.ipv4.ip_forward").trim(), "1");
    both_real_servers_answer(&requests(4));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn tunnel_example_serves_through_ipip() {
    topology("routed --router");
    unload_modules(&[&IPVS_MODULES[..], &TUNNEL_MODULES[..]].concat());
    for node in ["rs1", "rs2", "director1"] {
        apply_once(node, &example("tun.yaml"));
    }
    assert!(in_ns("rs1", "ip -br addr show dev tunl0").contains("192.168.16.100/32"));
    both_real_servers_answer(&requests(4));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn tunnel_example_serves_through_gue() {
    topology("routed --router");
    unload_modules(&[&IPVS_MODULES[..], &TUNNEL_MODULES[..]].concat());
    // fou has no autoload alias: the host's configuration loads it (as
    // /etc/modules-load.d would); the agent opens the port.
    sh("modprobe fou");
    let manifest = "/tmp/lvs-agent-gue.yaml";
    let tun = std::fs::read_to_string(example("tun.yaml")).unwrap();
    let gue = tun.replace("tunnel: {encapsulation: IPIP}", "tunnel: {encapsulation: GUE, port: 5555}");
    assert_ne!(gue, tun);
    std::fs::write(manifest, gue).unwrap();
    for node in ["rs1", "rs2", "director1"] {
        apply_once(node, manifest);
    }
    assert!(in_ns("rs1", "ip fou show").contains("port 5555 gue"));
    let rules = in_ns("director1", "ipvsadm -Ln --tun-info");
    assert!(rules.contains("Tunnel") && rules.contains("5555"), "{rules}");
    both_real_servers_answer(&requests(4));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn full_nat_example_serves_real_servers_without_a_route_back() {
    topology("routed --rs-gateway none");
    unload_modules(&[&IPVS_MODULES[..], &["nft_masq", "nft_chain_nat", "nf_tables"]].concat());
    apply_once("director1", &example("fullnat.yaml"));
    assert!(in_ns("director1", "nft list tables").contains("lvs_agent"));
    both_real_servers_answer(&requests(4));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_bad_manifest_leaves_the_rules_intact_and_names_the_field() {
    topology("classic");
    apply_once("director1", &example("dr.yaml"));
    let before = sorted_lines(&in_ns("director1", "ipvsadm -S -n"));
    let bad = "/tmp/lvs-agent-bad.yaml";
    let manifest = std::fs::read_to_string(example("dr.yaml")).unwrap().replace("port: 80", "port: 70000");
    std::fs::write(bad, manifest).unwrap();
    let output = Command::new("ip")
        .args(["netns", "exec", "director1", AGENT, "apply", "-f", bad, "--once"])
        .args(["--state-dir", "/run/lvs-agent-test/director1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("spec.port") && stderr.contains("70000"), "{stderr}");
    assert_eq!(sorted_lines(&in_ns("director1", "ipvsadm -S -n")), before);
}

/// A streaming TCP server: a line every 100 ms on each connection, for as long as
/// it lasts.
const STREAM_SERVER: &str = "
import socket, sys, threading, time
name = sys.argv[1].encode() + b' ' if len(sys.argv) > 1 else b''
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000))
s.listen()
def serve(c):
    n = 0
    while True:
        n += 1
        c.sendall(name + b'line %d\\n' % n)
        time.sleep(0.1)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
";

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running agent (`apply` without `--once`), stopped when dropped.
struct Agent(Child);

impl Agent {
    fn start(node: &str, manifest: &str, resync_seconds: u32) -> Self {
        let child = Command::new("sh")
            .args([
                "-c",
                &format!("exec ip netns exec {node} {AS_DEPLOYED} \"$@\""),
                "agent",
                AGENT,
                "apply",
                "-f",
                manifest,
            ])
            .args(["--state-dir", &format!("/run/lvs-agent-test/{node}")])
            .args(["--resync-interval", &resync_seconds.to_string()])
            .spawn()
            .unwrap();
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_hand_made_delete_is_repaired_within_one_resync_interval() {
    topology("classic");
    let _agent = Agent::start("director1", &example("dr.yaml"), 2);
    let programmed = || in_ns("director1", "ipvsadm -S -n").contains("-r 192.168.16.22:80");
    wait_until("first apply", Duration::from_secs(20), programmed);
    in_ns("director1", "ipvsadm -d -t 192.168.16.100:80 -r 192.168.16.22:80");
    assert!(!programmed());
    wait_until("repair", Duration::from_secs(2 + 2), programmed);
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_weight_change_and_a_removal_touch_nothing_else() {
    topology("classic");
    let dir = "/tmp/lvs-agent-manifests";
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let dr = std::fs::read_to_string(example("dr.yaml")).unwrap();
    // A second, independent service on another port, with the same real servers.
    let other = dr.replace("name: web-dr", "name: web-dr-8080").replace("port: 80\n", "port: 8080\n");
    std::fs::write(format!("{dir}/web.yaml"), &dr).unwrap();
    std::fs::write(format!("{dir}/other.yaml"), &other).unwrap();
    // A foreign service the agent must leave alone.
    in_ns("director1", "ipvsadm -A -t 10.99.0.1:80 -s rr");
    in_ns("director1", "ipvsadm -a -t 10.99.0.1:80 -r 10.99.0.2:80 -w 3");
    let _agent = Agent::start("director1", dir, 30);
    let rules = || sorted_lines(&in_ns("director1", "ipvsadm -S -n"));
    wait_until("first apply", Duration::from_secs(20), || rules().len() == 2 + 2 * 3);
    let untouched = |rules: &[String]| -> Vec<String> {
        rules.iter().filter(|r| !r.contains("192.168.16.100:80 ")).cloned().collect()
    };
    let before = rules();

    // Weight 2 -> 5 for rs1 of the first service.
    std::fs::write(format!("{dir}/web.yaml"), dr.replace("weight: 2", "weight: 5")).unwrap();
    wait_until("weight change", Duration::from_secs(5), || {
        rules().contains(&"-a -t 192.168.16.100:80 -r 192.168.16.21:80 -g -w 5".to_string())
    });
    assert_eq!(untouched(&rules()), untouched(&before));

    // Removing rs2 from the first service drains it (weight 0, TCP) and leaves the rest.
    let without_rs2: String = dr
        .replace("weight: 2", "weight: 5")
        .lines()
        .filter(|l| !l.contains("192.168.16.22"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(format!("{dir}/web.yaml"), without_rs2).unwrap();
    wait_until("removal", Duration::from_secs(5), || {
        let now = rules();
        !now.iter().any(|r| r == "-a -t 192.168.16.100:80 -r 192.168.16.22:80 -g -w 1")
    });
    assert_eq!(untouched(&rules()), untouched(&before));
    assert!(rules().contains(&"-A -t 10.99.0.1:80 -s rr".to_string()), "the foreign service is left alone");
}

/// A director beside kube-proxy's IPVS mode, as kube-proxy leaves it: its
/// dummy device `kube-ipvs0` holding a ClusterIP, an IPVS service of its own
/// for that ClusterIP, and `strictARP` (arp_ignore=1, arp_announce=2 on every
/// interface). The agent leaves all of it alone and serves the VIP; when
/// kube-proxy's sync deletes our service (its `--ipvs-exclude-cidrs` not
/// listing the VIP range, see docs/architecture.md), the next resync brings
/// it back. What kube-proxy itself does is read from its source, not run here.
#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn beside_kube_proxys_ipvs_mode_each_keeps_its_own() {
    topology("classic");
    for node in ["rs1", "rs2"] {
        apply_once(node, &example("dr.yaml"));
    }
    in_ns(
        "director1",
        "sh -c 'ip link add kube-ipvs0 type dummy && ip addr add 10.96.0.10/32 dev kube-ipvs0 \
         && ipvsadm -A -u 10.96.0.10:53 -s rr && ipvsadm -a -u 10.96.0.10:53 -r 10.244.1.5:53 -m \
         && sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2'",
    );
    let kube_proxys = ["-A -u 10.96.0.10:53 -s rr", "-a -u 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1"];
    let _agent = Agent::start("director1", &example("dr.yaml"), 2);
    let ours = || in_ns("director1", "ipvsadm -S -n").contains("-A -t 192.168.16.100:80");
    wait_until("first apply", Duration::from_secs(20), ours);
    wait_until("the VIP served", Duration::from_secs(20), || {
        requests(1).contains_key("web1") || requests(1).contains_key("web2")
    });
    let answers = requests(6);
    only_real_servers_answer(&answers);
    both_real_servers_answer(&answers);
    let rules = sorted_lines(&in_ns("director1", "ipvsadm -S -n"));
    for rule in kube_proxys {
        assert!(rules.iter().any(|r| r == rule), "kube-proxy's {rule} is left alone: {rules:?}");
    }
    let kube_ipvs0 = in_ns("director1", "ip -br addr show dev kube-ipvs0");
    assert!(kube_ipvs0.contains("10.96.0.10/32") && !kube_ipvs0.contains("192.168.16.100"), "{kube_ipvs0}");
    assert_eq!(in_ns("director1", "sysctl -n net.ipv4.conf.all.arp_ignore").trim(), "1");

    // kube-proxy's sync deletes the service it did not create.
    in_ns("director1", "ipvsadm -D -t 192.168.16.100:80");
    wait_until("the resync brings our service back", Duration::from_secs(2 + 3), ours);
    only_real_servers_answer(&requests(3));
    let rules = sorted_lines(&in_ns("director1", "ipvsadm -S -n"));
    assert!(rules.iter().any(|r| r == kube_proxys[0]), "{rules:?}");
}

/// The value of `key=` in the systemd unit (its one line).
fn unit_setting<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    let mut values = unit.lines().filter_map(|line| line.strip_prefix(prefix.as_str()));
    let value = values.next().unwrap_or_else(|| panic!("the unit has no {key}="));
    assert!(values.next().is_none(), "the unit sets {key}= twice");
    value
}

/// The Debian package's unit (deploy/debian/build, deploy/systemd) run on a
/// director as systemd runs it: the packaged binary, a user of its own
/// (DynamicUser), only the unit's capabilities (bounding, ambient), no new
/// privileges, no environment, the lab's root read-only but for the state
/// directory (ProtectSystem), the package's paths under a directory of the
/// test's. The lab has no systemd: the namespace and seccomp directives are not
/// exercised here.
#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn the_systemd_units_command_serves_as_the_unit_runs_it() {
    topology("classic");
    let root = "/run/lvs-unit-test";
    sh(&format!("rm -rf {root} && mkdir -p {root}/etc-lvs {root}/state && chmod 755 {root}"));
    let build = repo().join("deploy/debian/build");
    let package = sh(&format!("{} --binary {AGENT} --compression none --out {root}/deb", build.display()));
    sh(&format!("dpkg-deb --extract {} {root}/package", package.trim()));
    let unit =
        std::fs::read_to_string(format!("{root}/package/usr/lib/systemd/system/lvs-agent.service")).unwrap();
    for (key, value) in [("DynamicUser", "yes"), ("NoNewPrivileges", "yes"), ("StateDirectory", "lvs-agent")]
    {
        assert_eq!(unit_setting(&unit, key), value, "{key}");
    }
    let capabilities = unit_setting(&unit, "AmbientCapabilities");
    assert_eq!(unit_setting(&unit, "CapabilityBoundingSet"), capabilities);
    let caps: Vec<String> = capabilities
        .split_whitespace()
        .map(|c| format!("+{}", c.strip_prefix("CAP_").unwrap().to_lowercase()))
        .collect();
    let caps = format!("-all,{}", caps.join(","));

    // The package's paths: the binary, /etc/lvs/ with the DR example, the state directory.
    std::fs::copy(example("dr.yaml"), format!("{root}/etc-lvs/dr.yaml")).unwrap();
    // systemd gives the dynamic user an unused uid and chowns StateDirectory to it.
    let uid = 61_234;
    sh(&format!("chown {uid}:{uid} {root}/state"));
    let command = unit_setting(&unit, "ExecStart")
        .replace("/usr/bin/lvs-agent", &format!("{root}/package/usr/bin/lvs-agent"))
        .replace("/etc/lvs/", &format!("{root}/etc-lvs/"))
        .replace("/var/lib/lvs-agent", &format!("{root}/state"));
    for node in ["rs1", "rs2"] {
        apply_once(node, &example("dr.yaml"));
    }
    let mut agent = Command::new("ip")
        .args(["netns", "exec", "director1", "setpriv"])
        .args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups", "--no-new-privs"])
        .args([
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
        ])
        .args(["env", "-i", "sh", "-c", &format!("exec {command}")])
        .spawn()
        .unwrap();
    let served = || {
        let answers = requests(3);
        answers.contains_key("web1") || answers.contains_key("web2")
    };
    let result = std::panic::catch_unwind(|| {
        wait_until("the VIP served", Duration::from_secs(30), served);
        let answers = requests(6);
        only_real_servers_answer(&answers);
        both_real_servers_answer(&answers);
        let metrics = in_ns("director1", "curl -sS --max-time 5 http://127.0.0.1:9101/metrics");
        assert!(metrics.lines().any(|l| l == "lvs_agent_ipvs_up 1"), "{metrics}");
        let state = sh(&format!("ls -n {root}/state"));
        assert!(state.contains(&format!(" {uid} {uid} ")), "the state is the unit user's: {state}");
    });
    let _ = agent.kill();
    let _ = agent.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The DR example with other scheduling, written to a temporary file.
fn dr_variant(name: &str, edit: impl Fn(String) -> String) -> String {
    let path = format!("/tmp/lvs-agent-{name}.yaml");
    std::fs::write(&path, edit(std::fs::read_to_string(example("dr.yaml")).unwrap())).unwrap();
    path
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn round_robin_alternates() {
    topology("classic");
    let manifest = dr_variant("rr", |m| m.replace("scheduler: wrr", "scheduler: rr"));
    for node in ["rs1", "rs2", "director1"] {
        apply_once(node, &manifest);
    }
    assert_eq!(requests(6), BTreeMap::from([("web1".to_string(), 3), ("web2".to_string(), 3)]));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn source_hashing_keeps_a_client_on_one_server() {
    topology("classic");
    let manifest = dr_variant("sh", |m| m.replace("scheduler: wrr", "scheduler: sh"));
    for node in ["rs1", "rs2", "director1"] {
        apply_once(node, &manifest);
    }
    let answers = requests(6);
    only_real_servers_answer(&answers);
    assert_eq!(answers.len(), 1, "one client, one server: {answers:?}");
    assert_eq!(answers.values().sum::<usize>(), 6);
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn persistence_keeps_a_client_on_one_server() {
    topology("classic");
    let manifest = dr_variant("persistent", |m| {
        m.replace("scheduler: wrr", "scheduler: rr\n  persistence: {timeoutSeconds: 60}")
    });
    for node in ["rs1", "rs2", "director1"] {
        apply_once(node, &manifest);
    }
    assert!(in_ns("director1", "ipvsadm -S -n").contains("-s rr -p 60"));
    let answers = requests(6);
    only_real_servers_answer(&answers);
    assert_eq!(answers.len(), 1, "rr alone would alternate: {answers:?}");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn an_agent_restart_keeps_established_connections_and_rules() {
    topology("classic");
    // A TCP service on port 9000 whose only real server streams a line every
    // 100 ms for as long as the connection lasts.
    let manifest = dr_variant("stream", |m| {
        m.replace("port: 80\n", "port: 9000\n")
            .lines()
            .filter(|l| !l.contains("192.168.16.22") && !l.contains("healthCheck"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    apply_once("rs1", &manifest);
    let server = Command::new("ip")
        .args(["netns", "exec", "rs1", "python3", "-c", STREAM_SERVER])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Killed(server);
    let agent = Agent::start("director1", &manifest, 2);
    wait_until("programmed", Duration::from_secs(20), || {
        in_ns("director1", "ipvsadm -S -n").contains("-r 192.168.16.21:9000")
    });
    // The example fails over with VRRP: a lone director holds the VIP once it has
    // heard no master for a master down interval (about 3.6 s).
    wait_until("director1 holds the VIP", Duration::from_secs(20), || {
        in_ns("director1", "ip -br addr show eth0").contains("192.168.16.100")
    });
    let rules = sorted_lines(&in_ns("director1", "ipvsadm -S -n"));
    // The client's stdin stays open: at its end nc would half-close the connection.
    let stream = std::fs::File::create("/tmp/lvs-stream").unwrap();
    let client = Command::new("ip")
        .args(["netns", "exec", "client", "busybox", "nc", "192.168.16.100", "9000"])
        .stdin(Stdio::piped())
        .stdout(stream)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _client = Killed(client);
    let received = || std::fs::read_to_string("/tmp/lvs-stream").unwrap_or_default().lines().count();
    wait_until("the stream starts", Duration::from_secs(10), || received() >= 5);

    // Kill the agent hard and start another with the same state.
    drop(agent);
    let _agent = Agent::start("director1", &manifest, 2);
    sleep(Duration::from_secs(5)); // two resyncs
    let before = received();
    sleep(Duration::from_secs(2));
    assert!(received() >= before + 10, "the connection stalled: {before} -> {} lines", received());
    assert_eq!(sorted_lines(&in_ns("director1", "ipvsadm -S -n")), rules, "no rule was flushed or replaced");
    // The director still tracks the connection.
    let connections = in_ns("director1", "ipvsadm -Lnc");
    assert!(
        connections.contains("192.168.16.2:") && connections.contains("192.168.16.21:9000"),
        "{connections}"
    );
}

/// A streaming server on port 9000 of `node`, each line prefixed with its name.
fn stream_server(node: &str) -> Killed {
    let server = Command::new("ip")
        .args(["netns", "exec", node, "python3", "-c", STREAM_SERVER, node])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Killed(server)
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_removed_real_server_drains_its_connections_then_goes() {
    // Long enough for the checks made during the drain, under a slow emulated lab.
    const DRAIN: Duration = Duration::from_secs(12);
    topology("classic");
    let dir = "/tmp/lvs-agent-drain";
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let manifest = |without: Option<&str>| -> String {
        std::fs::read_to_string(example("dr.yaml"))
            .unwrap()
            .replace("port: 80\n", "port: 9000\n")
            .replace("drainSeconds: 30", &format!("drainSeconds: {}", DRAIN.as_secs()))
            .lines()
            .filter(|l| !l.contains("healthCheck") && without.is_none_or(|rs| !l.contains(rs)))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    std::fs::write(format!("{dir}/web.yaml"), manifest(None)).unwrap();
    apply_once("rs1", &format!("{dir}/web.yaml"));
    apply_once("rs2", &format!("{dir}/web.yaml"));
    let _servers = [stream_server("rs1"), stream_server("rs2")];
    let _agent = Agent::start("director1", dir, 2);
    let rules = || sorted_lines(&in_ns("director1", "ipvsadm -S -n"));
    wait_until("programmed", Duration::from_secs(40), || rules().len() == 3);
    wait_until("director1 holds the VIP", Duration::from_secs(20), || {
        in_ns("director1", "ip -br addr show eth0").contains("192.168.16.100")
    });
    // A long connection, and the real server it went to.
    let stream = std::fs::File::create("/tmp/lvs-drain-stream").unwrap();
    let client = Command::new("ip")
        .args(["netns", "exec", "client", "busybox", "nc", "192.168.16.100", "9000"])
        .stdin(Stdio::piped())
        .stdout(stream)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _client = Killed(client);
    let lines = || std::fs::read_to_string("/tmp/lvs-drain-stream").unwrap_or_default();
    wait_until("the stream starts", Duration::from_secs(10), || lines().lines().count() >= 5);
    let (drained, kept) = if lines().starts_with("rs1 ") { ("rs1", "rs2") } else { ("rs2", "rs1") };
    let address = |rs: &str| if rs == "rs1" { "192.168.16.21" } else { "192.168.16.22" };

    // Removed from the manifest: weight 0 at once, not deleted.
    std::fs::write(format!("{dir}/web.yaml"), manifest(Some(address(drained)))).unwrap();
    let removed = Instant::now();
    let weight_zero = format!("-a -t 192.168.16.100:9000 -r {}:9000 -g -w 0", address(drained));
    wait_until("weight 0", Duration::from_secs(5), || rules().contains(&weight_zero));
    // New connections go to the other real server only (one shell for the four:
    // each `ip netns exec` costs a noticeable part of the drain under emulation).
    let firsts = in_ns(
        "client",
        "sh -c 'for i in 1 2 3 4; do timeout 2 busybox nc 192.168.16.100 9000 | head -1; done'",
    );
    assert_eq!(firsts.lines().count(), 4, "{firsts:?}");
    for first in firsts.lines() {
        assert!(first.starts_with(&format!("{kept} line")), "a new connection answered by {first:?}");
    }
    // The established connection keeps streaming through the drain (a line
    // every 100 ms; a stalled one would never get 10 more).
    let before = lines().lines().count();
    wait_until("the draining connection streams", Duration::from_secs(5), || {
        lines().lines().count() >= before + 10
    });
    assert!(rules().contains(&weight_zero), "deleted {:?} after the removal", removed.elapsed());
    // Deleted once the drain period has passed: not before, and within a resync
    // interval (2 s) and a second of it.
    wait_until("deleted", DRAIN * 2, || !rules().iter().any(|r| r.contains(address(drained))));
    let after = removed.elapsed();
    let on_time = DRAIN - Duration::from_secs(1)..=DRAIN + Duration::from_secs(3);
    assert!(on_time.contains(&after), "deleted after {after:?}");
    assert_eq!(rules().len(), 2, "{:?}", rules());
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_block_of_vips_is_one_local_route_that_serves_and_answers_arp_for_each() {
    topology("classic");
    // Eight services on 192.168.16.104-111: the block 192.168.16.104/29.
    let manifest = "/tmp/lvs-agent-block.yaml";
    let dr = std::fs::read_to_string(example("dr.yaml")).unwrap();
    let documents: Vec<String> = (104..112)
        .map(|host| {
            dr.replace("name: web-dr", &format!("name: web-{host}"))
                .replace("192.168.16.100", &format!("192.168.16.{host}"))
        })
        .collect();
    std::fs::write(manifest, documents.join("---\n")).unwrap();
    for node in ["rs1", "rs2", "director1"] {
        apply_once(node, manifest);
    }
    let local = in_ns("director1", "ip -4 route show table local");
    assert!(local.contains("local 192.168.16.104/29 dev eth0"), "{local}");
    let addresses = in_ns("director1", "ip -4 -br addr show");
    assert!(!addresses.contains("192.168.16.10"), "no address per VIP: {addresses}");
    for host in [104, 107, 111] {
        let answer = in_ns("client", &format!("curl -sS --max-time 5 http://192.168.16.{host}/"));
        assert!(["web1", "web2"].contains(&answer.trim()), "192.168.16.{host}: {answer}");
        let neighbour = in_ns("client", &format!("ip neigh show 192.168.16.{host}"));
        let mac = in_ns("director1", "cat /sys/class/net/eth0/address");
        assert!(neighbour.contains(mac.trim()), "the director answers ARP for {host}: {neighbour}");
    }
    // Removing one VIP splits the block; the others keep being served.
    std::fs::write(manifest, documents[..7].join("---\n")).unwrap();
    apply_once("director1", manifest);
    let local = in_ns("director1", "ip -4 route show table local");
    assert!(!local.contains("192.168.16.104/29"), "{local}");
    assert!(local.contains("local 192.168.16.104/30 dev eth0"), "{local}");
    let answer = in_ns("client", "curl -sS --max-time 5 http://192.168.16.110/");
    assert!(["web1", "web2"].contains(&answer.trim()), "{answer}");
    assert!(in_ns("director1", "ip -4 -br addr show dev eth0").contains("192.168.16.110/32"));
}

/// Services of every forwarding method on one director (Tunnel with IPIP and
/// GUE), with VRRP, connection sync and health checks on the first
/// (tests/lab/topology routed --router).
const EVERY_KIND: &str = "\
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: web-dr, namespace: default}
spec:
  vip: 192.168.16.100
  port: 80
  scheduler: wrr
  forwarding: DirectRouting
  realServers: [{address: 192.168.17.21, weight: 2}]
  healthCheck: {type: HTTP, path: /, intervalSeconds: 2, timeoutSeconds: 1, rise: 2, fall: 3}
  failover:
    vrrp: {virtualRouterId: 51, advertIntervalMs: 1000, preempt: true}
  connectionSync: true
---
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: web-nat, namespace: default}
spec:
  vip: 192.168.16.101
  port: 80
  forwarding: NAT
  realServers: [{address: 192.168.17.21, port: 8080}]
  healthCheck: {type: TCP, intervalSeconds: 3, timeoutSeconds: 1}
---
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: web-tun, namespace: default}
spec:
  vip: 192.168.16.102
  port: 80
  forwarding: Tunnel
  tunnel: {encapsulation: IPIP}
  realServers: [{address: 192.168.17.21}]
---
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: web-fullnat, namespace: default}
spec:
  vip: 192.168.16.103
  port: 80
  forwarding: FullNAT
  realServers: [{address: 192.168.17.22, port: 80}]
---
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: web-gue, namespace: default}
spec:
  vip: 192.168.16.104
  port: 80
  forwarding: Tunnel
  tunnel: {encapsulation: GUE, port: 5555}
  realServers: [{address: 192.168.17.21}]
";

/// What a dry run must leave as it is in `node`: the IPVS table and sync
/// daemons, links, addresses, local routes, nftables and the IPv4 sysctls.
fn host_state(node: &str) -> String {
    [
        "ipvsadm-save -n",
        "ipvsadm -L -n --daemon",
        "ip -d link show",
        "ip -br addr show",
        "ip route show table local",
        "ip fou show",
        "nft list ruleset",
        "grep -r . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf /proc/sys/net/ipv4/vs",
    ]
    .iter()
    .map(|command| format!("$ {command}\n{}", in_ns(node, &format!("sh -c '{command} 2>&1 || true'"))))
    .collect()
}

/// The lines of `section` (`## <section>` to the next heading) of a dry run's output.
fn dry_run_section<'a>(output: &'a str, section: &str) -> Vec<&'a str> {
    let heading = format!("## {section}");
    let mut lines = output.lines().skip_while(|line| *line != heading);
    assert!(lines.next().is_some(), "no {heading} in:\n{output}");
    lines.take_while(|line| !line.starts_with("## ")).collect()
}

fn assert_lists(output: &str, section: &str, expected: &[&str]) {
    let lines = dry_run_section(output, section);
    for line in expected {
        assert!(lines.iter().any(|l| l.starts_with(line)), "## {section} lacks {line:?}:\n{output}");
    }
}

/// `apply --dry-run` lists every change of each kind, on a director (as the
/// DaemonSet runs it) and on a real server (as the systemd unit's user runs
/// it), and changes nothing; after a real apply, the same dry run finds
/// nothing left to change.
#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_dry_run_lists_every_change_and_makes_none() {
    topology("routed --router");
    // fou has no autoload alias: loaded as the host's configuration would.
    sh("modprobe fou");
    let manifest = "/tmp/lvs-agent-dry-run.yaml";
    std::fs::write(manifest, EVERY_KIND).unwrap();
    let state = "/run/lvs-agent-test/director1";
    let dry_run = |extra: &str| {
        in_ns(
            "director1",
            &format!(
                "{AS_DEPLOYED} {AGENT} apply --dry-run {extra} -f {manifest} --role director --state-dir {state}"
            ),
        )
    };

    let before = host_state("director1");
    let output = dry_run("");
    assert_eq!(host_state("director1"), before, "the director changed; the dry run said:\n{output}");
    assert_lists(
        &output,
        "sysctls",
        &[
            "# sysctl net.ipv4.ip_forward: 0 -> 1",
            "# sysctl net.ipv4.conf.all.send_redirects: 1 -> 0",
            "# sysctl net.ipv4.conf.eth0.send_redirects: 1 -> 0",
            "# sysctl net.ipv4.vs.conntrack: ",
        ],
    );
    assert_eq!(dry_run_section(&output, "devices"), ["# (no change)"], "{output}");
    assert_lists(
        &output,
        "addresses",
        &[
            "# ip addr add 192.168.16.101/32 dev eth0",
            "# ip addr add 192.168.16.102/32 dev eth0",
            "# ip addr add 192.168.16.103/32 dev eth0",
            "# ip addr add 192.168.16.104/32 dev eth0",
            "# announce 192.168.16.101 dev eth0 (gratuitous ARP)",
        ],
    );
    // The VRRP VIP is VRRP's to take.
    assert!(!output.contains("192.168.16.100/32"), "{output}");
    assert_lists(
        &output,
        "nftables",
        &["# nft load table inet lvs_agent (new):", "# nft |         ip daddr 192.168.17.22 masquerade"],
    );
    assert_lists(
        &output,
        "vrrp",
        &["# vrrp instance eth0 vrid 51 IPv4: priority 100, advert 1000 ms, preempt, vips 192.168.16.100"],
    );
    assert_lists(
        &output,
        "sync daemon",
        &["# ipvsadm --start-daemon backup --mcast-interface eth0 --syncid 51"],
    );
    assert_lists(
        &output,
        "health checks",
        &[
            "# health check HTTP 192.168.17.21:80 path / of TCP 192.168.16.100:80: every 2 s, timeout 1 s, rise 2, fall 3",
            "# health check TCP 192.168.17.21:8080 of TCP 192.168.16.101:80: every 3 s",
        ],
    );
    assert_lists(
        &output,
        "ipvs",
        &[
            "-A -t 192.168.16.100:80 -s wrr",
            "-a -t 192.168.16.100:80 -r 192.168.17.21:80 -g -w 2",
            "-a -t 192.168.16.101:80 -r 192.168.17.21:8080 -m -w 1",
            "-a -t 192.168.16.102:80 -r 192.168.17.21:80 -i",
            "-a -t 192.168.16.103:80 -r 192.168.17.22:80 -m",
            "-a -t 192.168.16.104:80 -r 192.168.17.21:80 -i",
        ],
    );
    assert!(!output.contains("## problems"), "{output}");

    // A real server, as the systemd unit's user (its own uid, NET_ADMIN and
    // NET_RAW as ambient capabilities), without a state directory.
    let before = host_state("rs1");
    let caps = "-all,+net_admin,+net_raw";
    let output = in_ns(
        "rs1",
        &format!(
            "setpriv --reuid=61234 --regid=61234 --clear-groups --inh-caps={caps} --ambient-caps={caps} \
             --bounding-set={caps} env -i {AGENT} apply --dry-run -f {manifest} --role real-server \
             --state-dir /run/lvs-agent-test/none"
        ),
    );
    assert_eq!(host_state("rs1"), before, "rs1 changed; the dry run said:\n{output}");
    assert_lists(
        &output,
        "sysctls",
        &[
            "# sysctl net.ipv4.conf.all.arp_ignore: 0 -> 1",
            "# sysctl net.ipv4.conf.all.arp_announce: 0 -> 2",
            "# sysctl net.ipv4.conf.lvs0.arp_ignore: (absent) -> 1",
            "# sysctl net.ipv4.conf.lvs0.arp_announce: (absent) -> 2",
            "# sysctl net.ipv4.conf.tunl0.arp_ignore: ",
        ],
    );
    assert_lists(
        &output,
        "devices",
        &[
            "# ip link add lvs0 type dummy",
            "# ip link set lvs0 up",
            "# ip link set tunl0 up",
            "# ip fou add port 5555 gue",
        ],
    );
    assert_lists(
        &output,
        "addresses",
        &[
            "# ip addr add 192.168.16.100/32 dev lvs0",
            "# ip addr add 192.168.16.102/32 dev tunl0",
            "# ip addr add 192.168.16.104/32 dev tunl0",
        ],
    );
    assert!(!output.contains("## problems"), "{output}");
    for section in ["nftables", "vrrp", "sync daemon", "health checks", "ipvs"] {
        assert_eq!(dry_run_section(&output, section), ["# (no change)"], "{section}: {output}");
    }

    // Applied for real: the same dry run finds nothing left to change, and the
    // table loaded as it would load it.
    apply_once("director1", manifest);
    let output = dry_run("--once");
    for section in ["sysctls", "devices", "addresses", "ipvs"] {
        assert_eq!(dry_run_section(&output, section), ["# (no change)"], "{section}: {output}");
    }
    assert_eq!(dry_run_section(&output, "nftables"), ["# nft table inet lvs_agent: unchanged"], "{output}");
    assert_eq!(dry_run_section(&output, "vrrp"), ["# (none with --once)"], "{output}");
}
