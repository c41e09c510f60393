//! Benchmark of the cluster path, run by `tests/bench/cluster-path` in the lab
//! (not by the suite: it is `#[ignore]`d and its name is not `lab_*`).
//!
//! `lvs-controller` and `lvs-agent run` as lab_cluster starts them (the
//! arguments deploy/ gives them, the API server stand-in), director1
//! directing. Each round times, for the same NAT service with two endpoints
//! from an EndpointSlice and its VIP asked for by name:
//! - the baseline, our own CRD: a VirtualService with `backendService`;
//! - a Service of type LoadBalancer (the VIP by `lvs.dev/vip`, from a pool);
//!
//! from the object's creation to the first answer through its VIP (polled
//! with a 250 ms connect timeout), and from an endpoint's removal from the
//! EndpointSlice to the kernel without it (`ipvsadm -S -n` polled). Each
//! object is deleted, and gone from the kernel, before the next round. Prints
//! the samples and a table of median, min and max (BENCH_ROUNDS, default 5).
//!
//! `status_writes_in_a_steady_minute`, run by `tests/bench/status-writes`:
//! the status writes the API server receives over one steady minute with
//! traffic through every VirtualService (see its doc).

mod cluster_lab;
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use cluster_lab::*;
use serde_json::{Value, json};

/// The VIPs: .16.100 + 2 × round for the VirtualService, one more for the Service.
const VIP_BASE: u8 = 100;

#[test]
#[ignore = "a benchmark: run tests/bench/cluster-path"]
fn cluster_path_latencies() {
    in_lab(run);
}

/// `bench` in the routed lab, torn down whatever happens.
fn in_lab(bench: fn()) {
    setup_lab();
    let result = std::panic::catch_unwind(bench);
    teardown_lab();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The stand-in with the lab's nodes and a NAT pool of .16.100-149 directed
/// by director1 (its addresses shared between services on other ports if
/// `shared`), the controller and an agent on every node: the processes, kept
/// running until dropped.
fn start_cluster(shared: bool) -> Vec<Process> {
    let mut processes = vec![start_api_server()];
    for (name, addresses, _) in NODES {
        create("/api/v1/nodes", &node(name, addresses));
    }
    create(
        POOL_PATH,
        &json!({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VipPool",
            "metadata": {"name": "bench"},
            "spec": {
                "addresses": ["192.168.16.100-192.168.16.149"], "namespaces": ["default"],
                "directors": {"nodeSelector": {"kubernetes.io/hostname": "director1"}},
                "forwardingMethods": ["NAT"], "allowSharedVip": shared,
            },
        }),
    );
    processes.push(start_controller());
    processes.extend(NODES.iter().map(|(name, _, _)| start_agent(name)));
    processes
}

/// The samples of one kind of object, in ms.
#[derive(Default)]
struct Samples {
    to_traffic: Vec<u128>,
    removal_to_kernel: Vec<u128>,
}

fn run() {
    let rounds: u8 = std::env::var("BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(5).min(20);
    let _processes = start_cluster(false);
    wait_until("the controller holds its lease", Duration::from_secs(240), || {
        get("/apis/coordination.k8s.io/v1/namespaces/lvs-system/leases/lvs-controller")
            .is_some_and(|lease| lease["spec"]["holderIdentity"] == "lvs-controller-0")
    });

    let (mut baseline, mut services) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        let vip = format!("192.168.16.{}", VIP_BASE + 2 * round);
        let name = format!("vs-{round}");
        let object = json!({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "vip": vip, "port": 80, "forwarding": "NAT", "scheduler": "rr",
                "backendService": {"name": name},
                "directors": {"nodeSelector": {"kubernetes.io/hostname": "director1"}},
            },
        });
        measure(&name, &vip, &format!("{VS_PATH}/{name}"), || create(VS_PATH, &object), &mut baseline);

        let vip = format!("192.168.16.{}", VIP_BASE + 2 * round + 1);
        let name = format!("svc-{round}");
        let object = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"lvs.dev/forwarding": "NAT", "lvs.dev/scheduler": "rr",
                                         "lvs.dev/vip": vip, "lvs.dev/pool": "bench"}},
            "spec": {
                "type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}],
            },
        });
        measure(
            &name,
            &vip,
            &format!("{K8S_SERVICE_PATH}/{name}"),
            || create(K8S_SERVICE_PATH, &object),
            &mut services,
        );
    }

    println!();
    println!("{:<56} {:>8} {:>8} {:>8}   (ms, {rounds} rounds)", "", "median", "min", "max");
    for (what, samples) in
        [("VirtualService (baseline)", &baseline), ("Service of type LoadBalancer", &services)]
    {
        row(&format!("{what}: creation to traffic"), &samples.to_traffic);
        row(&format!("{what}: endpoint removal to kernel"), &samples.removal_to_kernel);
    }
}

/// One object's round: its EndpointSlice (`name`'s, rs1 and rs2), then the
/// object made by `create`, timed to traffic through `vip`; rs2 removed from
/// the slice, timed to the kernel; the object (at `path`) and slice deleted.
fn measure(name: &str, vip: &str, path: &str, create_object: impl FnOnce() -> Value, samples: &mut Samples) {
    let mut slice = endpoint_slice(&["192.168.17.21", "192.168.17.22"]);
    slice["metadata"]["name"] = json!(format!("{name}-1"));
    slice["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
    create(SLICE_PATH, &slice);

    let start = Instant::now();
    create_object();
    wait_until(&format!("traffic through {name}'s VIP {vip}"), Duration::from_secs(120), || {
        quick_fetch(vip).is_some()
    });
    let to_traffic = start.elapsed().as_millis();

    let start = Instant::now();
    merge_patch(
        &format!("{SLICE_PATH}/{name}-1"),
        &json!({"endpoints": [{"addresses": ["192.168.17.21"], "conditions": {"ready": true}}]}),
    );
    wait_until(&format!("{name}'s removed endpoint leaves the kernel"), Duration::from_secs(120), || {
        let rules = rules_of("director1", vip);
        !rules.is_empty() && !rules.iter().any(|l| l.contains("192.168.17.22"))
    });
    let removal = start.elapsed().as_millis();
    println!("SAMPLE {name}: creation to traffic {to_traffic} ms, endpoint removal to kernel {removal} ms");
    samples.to_traffic.push(to_traffic);
    samples.removal_to_kernel.push(removal);

    api("DELETE", path, None, "");
    api("DELETE", &format!("{SLICE_PATH}/{name}-1"), None, "");
    wait_until(&format!("{name} leaves director1"), Duration::from_secs(120), || {
        rules_of("director1", vip).is_empty() && !addresses("director1").contains(&format!("{vip}/"))
    });
    wait_until(&format!("{name} is gone"), Duration::from_secs(120), || get(path).is_none());
}

/// One request through `vip` from the NAT client, giving up on a connection
/// not made within 250 ms (a VIP not yet held drops the SYN): the answer.
fn quick_fetch(vip: &str) -> Option<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", "client", "curl", "-sS", "--connect-timeout", "0.25", "--max-time", "2"])
        .args(["--interface", NAT_CLIENT, &format!("http://{vip}/")])
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn row(what: &str, samples: &[u128]) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let (min, max) =
        (sorted.first().copied().unwrap_or_default(), sorted.last().copied().unwrap_or_default());
    println!("{what:<56} {median:>8} {min:>8} {max:>8}");
}

/// The status writes (PATCHes of a status subresource, in the stand-in's
/// request log) over one minute at BENCH_SERVICES VirtualServices (default
/// 200; 1,000 at most: 50 NAT VIPs of the pool × 20 ports, rs1 and rs2, director1
/// directing), all programmed and their statuses settled, while the client
/// opens connections through every one of them in turn, so that connection
/// counts keep moving. The binaries are this build's, or LAB_BIN_DIR's (the
/// baseline that tests/bench/status-writes builds).
#[test]
#[ignore = "a benchmark: run tests/bench/status-writes"]
fn status_writes_in_a_steady_minute() {
    in_lab(steady_minute);
}

fn steady_minute() {
    let services: usize =
        std::env::var("BENCH_SERVICES").ok().and_then(|n| n.parse().ok()).unwrap_or(200).clamp(1, 1000);
    let target = |i: usize| (format!("192.168.16.{}", VIP_BASE as usize + i / 20), 8000 + i % 20);
    let _processes = start_cluster(true);
    for i in 0..services {
        let (vip, port) = target(i);
        create(
            VS_PATH,
            &json!({
                "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
                "metadata": {"name": format!("vs-{i}"), "namespace": "default"},
                "spec": {
                    "vip": vip, "port": port, "forwarding": "NAT", "scheduler": "rr",
                    "realServers": [{"address": "192.168.17.21", "port": 80}, {"address": "192.168.17.22", "port": 80}],
                    "directors": {"nodeSelector": {"kubernetes.io/hostname": "director1"}},
                },
            }),
        );
    }
    let took = wait_until("every service programmed on director1", Duration::from_secs(600), || {
        rules("director1").iter().filter(|rule| rule.starts_with("-A ")).count() == services
    });
    println!("{services} services programmed {} s after the last creation", took.as_secs());
    wait_until("every VirtualService's status says Programmed", Duration::from_secs(600), || {
        let list = get(VS_PATH).unwrap_or_default();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items.len() == services
            && items.iter().all(|vs| condition(vs, "Programmed").is_some_and(|(status, _)| status == "True"))
    });
    // Two resyncs (10 s each) for the statuses to settle.
    std::thread::sleep(Duration::from_secs(20));

    let targets: Vec<String> = (0..services).map(|i| format!("{}:{}", target(i).0, target(i).1)).collect();
    let traffic = Process::start(
        &format!("ip netns exec client python3 -c '{TRAFFIC}' {NAT_CLIENT} {}", targets.join(" ")),
        &work_dir().join("traffic.log"),
    );
    let log = work_dir().join("apiserver-requests.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    std::thread::sleep(Duration::from_secs(60));
    let minute: Vec<String> =
        std::fs::read_to_string(&log).unwrap().lines().skip(before).map(str::to_owned).collect();
    drop(traffic);
    let traffic_log = std::fs::read_to_string(work_dir().join("traffic.log")).unwrap_or_default();
    // The paths of status writes; a log line is `HH:MM:SS METHOD PATH?QUERY -> CODE`.
    let status_writes: Vec<&str> = minute
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            let (method, path) = (words.next()?, words.next()?.split('?').next()?);
            (method == "PATCH" && path.ends_with("/status")).then_some(path)
        })
        .collect();
    let writes = |plural: &str| status_writes.iter().filter(|p| p.contains(&format!("/{plural}/"))).count();
    figure(&format!(
        "status writes in a steady minute at {services} VirtualServices: {} in all, LvsNode {}, VirtualService {} ({})",
        status_writes.len(),
        writes("lvsnodes"),
        writes("virtualservices"),
        traffic_log.lines().last().unwrap_or("no traffic report"),
    ));
}

/// The client's traffic: a connection through each `address:port` in turn,
/// from the first argument's address, until killed; prints how many answered.
const TRAFFIC: &str = r#"
import socket, sys, time
source, targets, answered, failed, last = sys.argv[1], sys.argv[2:], 0, 0, time.time()
while True:
    for target in targets:
        host, port = target.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=1, source_address=(source, 0)) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                answered += bool(s.recv(64))
        except OSError:
            failed += 1
        if time.time() - last > 5:
            print(f"{answered} connections answered, {failed} failed", flush=True)
            last = time.time()
"#;
