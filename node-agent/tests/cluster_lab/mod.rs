//! The lab's cluster path, shared by the lab test (lab_cluster) and the
//! benchmark (bench_cluster): the API server stand-in and requests to it,
//! `lvs-controller` and `lvs-agent run` started as deploy/ runs them, the
//! routed topology, traffic through a VIP and the kernels' rules. See
//! lab_cluster.rs for what is real and what stands in.
#![allow(dead_code, unreachable_pub)]

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{sh, sorted_lines};

pub const AGENT: &str = env!("CARGO_BIN_EXE_lvs-agent");

pub const API_ADDRESS: &str = "192.168.17.250";

pub const API_PORT: u16 = 6443;

/// The client's address for the NAT service: the real servers route it back
/// through director1.
pub const NAT_CLIENT: &str = "192.168.16.3";

pub const VS_PATH: &str = "/apis/lvs.dev/v1alpha1/namespaces/default/virtualservices";

pub const SLICE_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

pub const POOL_PATH: &str = "/apis/lvs.dev/v1alpha1/vippools";

pub const K8S_SERVICE_PATH: &str = "/api/v1/namespaces/default/services";

/// The nodes: name, InternalIPs, the address the agent's endpoints bind.
pub const NODES: [(&str, &[&str], &str); 4] = [
    ("director1", &["192.168.16.11", "192.168.17.11"], "192.168.17.11"),
    ("director2", &["192.168.16.12", "192.168.17.12"], "192.168.17.12"),
    ("rs1", &["192.168.17.21"], "192.168.17.21"),
    ("rs2", &["192.168.17.22"], "192.168.17.22"),
];

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The lvs-agent under test: this build's, or the one in LAB_BIN_DIR (a
/// benchmark's baseline, built from an earlier commit).
pub fn agent_binary() -> PathBuf {
    std::env::var_os("LAB_BIN_DIR")
        .map_or_else(|| PathBuf::from(AGENT), |dir| Path::new(&dir).join("lvs-agent"))
}

/// lvs-controller, built beside lvs-agent (`cargo build -p lvs-controller`;
/// `cargo test --workspace --no-run`, as tests/run does, builds it).
pub fn controller_binary() -> PathBuf {
    let path = agent_binary().with_file_name("lvs-controller");
    assert!(path.exists(), "{} is missing: cargo build -p lvs-controller", path.display());
    path
}

/// Where the processes' logs, state and kubeconfig go.
pub fn work_dir() -> PathBuf {
    std::env::var_os("LAB_CLUSTER_LOGS").map_or_else(|| PathBuf::from("/run/lvs-cluster-test"), PathBuf::from)
}

pub fn in_ns(ns: &str, command: &str) -> String {
    sh(&format!("ip netns exec {ns} {command}"))
}

/// A process killed when dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Runs `command` (a shell command line) with its output to `log`.
    pub fn start(command: &str, log: &Path) -> Self {
        let file = File::options().create(true).append(true).open(log).unwrap();
        let child = Command::new("sh")
            .args(["-c", &format!("exec {command}")])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        Process { child, log: log.to_path_buf() }
    }

    pub fn signal(&mut self, signal: &str) {
        let _ = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn api_url(path: &str) -> String {
    format!("http://{API_ADDRESS}:{API_PORT}{path}")
}

/// Starts the stand-in (with its saved objects, if any) and waits until it answers.
pub fn start_api_server() -> Process {
    let dir = work_dir();
    let script = repo().join("tests/apiserver/apiserver.py");
    let server = Process::start(
        &format!(
            "python3 {} --address {API_ADDRESS} --port {API_PORT} --log {} --state {}",
            script.display(),
            dir.join("apiserver-requests.log").display(),
            dir.join("apiserver-state.json").display()
        ),
        &dir.join("apiserver.log"),
    );
    // Python starts in seconds under TCG on a busy machine.
    wait_until("the API server stand-in answers", Duration::from_secs(120), || {
        request("GET", "/healthz", None, "").0 == 200
    });
    server
}

/// One request with curl: (HTTP status, body as JSON or a string).
pub fn request(method: &str, path: &str, body: Option<&Value>, content_type: &str) -> (u16, Value) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "5", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        command.args(["-H", &format!("Content-Type: {content_type}"), "--data-binary", &body.to_string()]);
    }
    let output = command.arg(api_url(path)).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (code.trim().parse().unwrap_or(0), body)
}

/// A request that must succeed; its answer.
pub fn api(method: &str, path: &str, body: Option<&Value>, content_type: &str) -> Value {
    let (code, answer) = request(method, path, body, content_type);
    assert!((200..300).contains(&code), "{method} {path}: {code} {answer}");
    answer
}

pub fn create(collection: &str, object: &Value) -> Value {
    api("POST", collection, Some(object), "application/json")
}

pub fn get(path: &str) -> Option<Value> {
    let (code, answer) = request("GET", path, None, "");
    match code {
        200 => Some(answer),
        404 => None,
        _ => panic!("GET {path}: {code} {answer}"),
    }
}

pub fn merge_patch(path: &str, patch: &Value) -> Value {
    api("PATCH", path, Some(patch), "application/merge-patch+json")
}

pub fn node(name: &str, addresses: &[&str]) -> Value {
    let addresses: Vec<Value> =
        addresses.iter().map(|a| json!({"type": "InternalIP", "address": a})).collect();
    let mut labels = json!({"kubernetes.io/hostname": name});
    if name.starts_with("director") {
        labels["lvs.dev/director"] = json!("true");
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": addresses},
    })
}

pub fn endpoint_slice(addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> =
        addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// The condition `type_` of `object`'s status: (status, reason).
pub fn condition(object: &Value, type_: &str) -> Option<(String, String)> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
        )
    })
}

pub fn kubeconfig() -> PathBuf {
    let path = work_dir().join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster: {{server: 'http://{API_ADDRESS}:{API_PORT}'}}\n\
         users:\n- name: standin\n  user: {{}}\ncontexts:\n- name: standin\n  context: {{cluster: standin, user: standin, namespace: default}}\n\
         current-context: standin\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// lvs-agent run on `node`, as deploy/agent.yaml runs it (KUBECONFIG for the
/// service account, /proc/sys of the node's namespace for the host's).
pub fn start_agent(node: &str) -> Process {
    let (_, _, host_ip) = NODES.iter().find(|(name, _, _)| *name == node).unwrap();
    let dir = work_dir();
    let command = format!(
        "ip netns exec {node} \
         setpriv --inh-caps=-all,+net_admin,+net_raw --bounding-set=-all,+net_admin,+net_raw \
         env -i PATH=/nonexistent NODE_NAME={node} HOST_IP={host_ip} KUBECONFIG={kubeconfig} \
         {agent} run --log-format=json --state-dir={state} --sysctl-root=/proc/sys --metrics-address={host_ip}:9101",
        agent = agent_binary().display(),
        kubeconfig = kubeconfig().display(),
        state = dir.join(node).display(),
    );
    Process::start(&command, &dir.join(format!("agent-{node}.log")))
}

/// lvs-controller as deploy/controller.yaml runs it: user 65532, no
/// capability, POD_NAME and LEASE_NAMESPACE from the pod.
pub fn start_controller() -> Process {
    let command = format!(
        "setpriv --reuid=65532 --regid=65532 --clear-groups --inh-caps=-all --bounding-set=-all \
         env -i POD_NAME=lvs-controller-0 LEASE_NAMESPACE=lvs-system KUBECONFIG={} {} --log-format=json",
        kubeconfig().display(),
        controller_binary().display()
    );
    Process::start(&command, &work_dir().join("controller.log"))
}

pub fn setup_lab() {
    let topology = repo().join("tests/lab/topology");
    let dir = work_dir();
    sh(&format!(
        "{0} down >/dev/null 2>&1; rm -rf {1}/director* {1}/rs* {1}/apiserver-state.json; mkdir -p {1} && chmod 755 {1}; \
         {0} routed --router >/dev/null && {0} web >/dev/null",
        topology.display(),
        dir.display()
    ));
    // The stand-in's address on the back bridge, where every node is.
    sh(&format!("ip addr add {API_ADDRESS}/24 dev br1"));
    // NAT's replies must pass director1: for the client's .3 the real servers
    // route through it (DR's replies to .2 take the router).
    in_ns("client", &format!("ip addr add {NAT_CLIENT}/24 dev eth0"));
    for rs in ["rs1", "rs2"] {
        in_ns(rs, &format!("ip route add {NAT_CLIENT}/32 via 192.168.17.11"));
    }
}

pub fn teardown_lab() {
    let _ = Command::new("ip").args(["addr", "del", &format!("{API_ADDRESS}/24"), "dev", "br1"]).status();
    let topology = repo().join("tests/lab/topology");
    let _ = Command::new(topology).arg("down").stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// One request through `vip` from the client (from `source` if given): the
/// answer ("web1", "web2") or the failure.
pub fn fetch(vip: &str, source: Option<&str>) -> Result<String, String> {
    let interface = source.map(|s| format!("--interface {s}")).unwrap_or_default();
    let output = Command::new("ip")
        .args(["netns", "exec", "client", "sh", "-c"])
        .arg(format!("curl -sS --max-time 2 {interface} http://{vip}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        Ok(text)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

pub fn rules(node: &str) -> Vec<String> {
    sorted_lines(&in_ns(node, "ipvsadm -S -n"))
}

pub fn rules_of(node: &str, vip: &str) -> Vec<String> {
    rules(node).into_iter().filter(|line| line.contains(&format!(" {vip}:"))).collect()
}

pub fn addresses(node: &str) -> String {
    in_ns(node, "ip -br addr")
}

pub fn figure(text: &str) {
    println!("FIGURE {text}");
}

pub fn millis(d: Duration) -> u128 {
    d.as_millis()
}
