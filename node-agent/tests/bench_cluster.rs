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
    setup_lab();
    let result = std::panic::catch_unwind(run);
    teardown_lab();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The samples of one kind of object, in ms.
#[derive(Default)]
struct Samples {
    to_traffic: Vec<u128>,
    removal_to_kernel: Vec<u128>,
}

fn run() {
    let rounds: u8 = std::env::var("BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(5).min(20);
    let _api_server = start_api_server();
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
                "forwardingMethods": ["NAT"],
            },
        }),
    );
    let _controller = start_controller();
    let _agents: Vec<Process> = NODES.iter().map(|(name, _, _)| start_agent(name)).collect();
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
