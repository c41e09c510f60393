//! Benchmark of the translation: 10,000 VirtualServices x 10 real servers
//! over 100 nodes, timed, with the process's peak memory. Run it through
//! `tests/bench/translate` (release build).
//!
//! The cluster: 4 directors and 96 workers. 60% of the services are
//! DirectRouting with 10 static real servers (workers, which therefore bind
//! VIPs), 20% Tunnel with a realServerSelector matching a pool of 10 workers,
//! 20% NAT with a backendService of 10 ready endpoints (plus one not ready);
//! all with VRRP failover, connection sync and an HTTP health check. The
//! services of one VRRP router ID share a namespace (20 namespaces): the
//! cluster mode lets one namespace group VIPs under a router ID, not two.
//!
//! The second argument picks the input:
//! - `virtual-services` (default): as above, every VIP written in the spec
//!   and no pools (the baseline);
//! - `pools`: the cluster mode, one VipPool (10.200.0.0/16, every namespace,
//!   every node a possible real server) and every other VirtualService
//!   without `vip`, so that the allocation assigns 5,000 addresses;
//! - `services`: 10,000 Services of type LoadBalancer of our class, none
//!   asking for an address, so that the allocation assigns all 10,000 from one
//!   VipPool, each with an EndpointSlice of 10 ready pods (plus one not
//!   ready) spread over the workers: 60% FullNAT with
//!   `externalTrafficPolicy: Cluster`, 20% NAT with `Local` (split per
//!   director with local endpoints), 20% FullNAT with `sessionAffinity:
//!   ClientIP`; half of them share their namespace's VRRP router.

use std::{collections::BTreeMap, time::Instant};

use k8s_openapi::{
    api::{
        core::v1::{Node, NodeAddress, NodeStatus, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use lvs_crds::{ClusterState, TranslateOptions, VirtualService, translate};

const SERVICES: usize = 10_000;
const REAL_SERVERS: usize = 10;
const NODES: usize = 100;
const DIRECTORS: usize = 4;

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(3);
    let mode = std::env::args().nth(2).unwrap_or_else(|| "virtual-services".to_owned());
    let state = match mode.as_str() {
        "virtual-services" => cluster(),
        "pools" => with_pools(cluster()),
        "services" => services(),
        other => {
            eprintln!("unknown mode {other}: virtual-services, pools or services");
            std::process::exit(2);
        }
    };
    let options = TranslateOptions::default();

    let mut times = Vec::new();
    let mut translation = None;
    for _ in 0..runs {
        let start = Instant::now();
        let result = translate(&state, &options);
        times.push(start.elapsed().as_secs_f64());
        translation = Some(result);
    }
    let translation = translation.expect("at least one run");

    let accepted = translation.verdicts.values().filter(|v| v.reason() == "Accepted").count()
        + translation.load_balancers.values().filter(|o| o.verdict.reason() == "Accepted").count();
    let bytes: Vec<usize> =
        translation.lvs_nodes.iter().map(|o| serde_json::to_vec(o).unwrap().len()).collect();
    let nodes: std::collections::BTreeSet<&str> =
        translation.lvs_nodes.iter().map(|o| o.spec.node.as_str()).collect();
    println!("mode: {mode}");
    println!(
        "input: {} VirtualServices, {} Services, {} VipPools; {NODES} nodes ({DIRECTORS} directors), {} EndpointSlices",
        state.virtual_services.len(),
        state.services.len(),
        state.vip_pools.as_ref().map_or(0, Vec::len),
        state.endpoint_slices.len()
    );
    println!(
        "output: {accepted} accepted, {} LvsNode objects for {} nodes, {:.1} MiB of JSON, largest object {} KiB",
        translation.lvs_nodes.len(),
        nodes.len(),
        bytes.iter().sum::<usize>() as f64 / (1 << 20) as f64,
        bytes.iter().max().unwrap_or(&0) / 1024,
    );
    let times_ms: Vec<String> = times.iter().map(|t| format!("{:.0}", t * 1e3)).collect();
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!("translate_ms_each_run: {}", times_ms.join(" "));
    println!("translate_ms_best: {:.0}", best * 1e3);
    if state.vip_pools.is_some() {
        let service_vips: usize = translation.load_balancers.values().map(|o| o.addresses.len()).sum();
        println!(
            "allocated: {} VIPs to VirtualServices, {service_vips} to Services, pools {:?}",
            translation.allocations.len(),
            translation.pools
        );
    }
    println!("translate_ms_first: {:.0}", times[0] * 1e3);
    println!("peak_rss_mib: {:.1}", peak_rss_kib() as f64 / 1024.0);
}

/// The cluster mode: one pool for every namespace; odd services lose their `vip`.
fn with_pools(mut state: ClusterState) -> ClusterState {
    state.vip_pools = Some(vec![pool()]);
    for (i, vs) in state.virtual_services.iter_mut().enumerate() {
        if i % 2 == 1 {
            vs.spec.vip = None;
        }
    }
    state
}

/// The administrator's one pool: every namespace, the director-labelled
/// nodes directing, every node a possible real server.
fn pool() -> lvs_crds::VipPool {
    lvs_crds::yaml::from_str(
        "apiVersion: lvs.dev/v1alpha1\nkind: VipPool\nmetadata: {name: bench}\n\
         spec: {addresses: [10.200.0.0/16], namespaceSelector: {}, realServerNodeSelector: {},\
         directors: {nodeSelector: {lvs.dev/director: 'true'}, interface: eth0},\
         forwardingMethods: [DirectRouting, NAT, FullNAT, Tunnel]}",
    )
    .expect("a VipPool")
}

/// The Services mode: no VirtualService, 10,000 Services of type
/// LoadBalancer and their EndpointSlices, one pool allocating every address.
fn services() -> ClusterState {
    ClusterState {
        nodes: (0..NODES).map(node).collect(),
        services: (0..SERVICES).map(load_balancer).collect(),
        endpoint_slices: (0..SERVICES).map(pod_slice).collect(),
        vip_pools: Some(vec![pool()]),
        ..ClusterState::default()
    }
}

fn namespace(i: usize) -> String {
    format!("team-{}", i % 20)
}

/// Service `svc-{i}`: no address asked for, one TCP port.
fn load_balancer(i: usize) -> Service {
    let (policy, affinity, forwarding) = match i % 5 {
        0..=2 => ("Cluster", "None", "FullNAT"),
        3 => ("Local", "None", "NAT"),
        _ => ("Cluster", "ClientIP", "FullNAT"),
    };
    let mut annotations = serde_json::json!({"lvs.dev/forwarding": forwarding, "lvs.dev/scheduler": "wrr"});
    if i.is_multiple_of(2) {
        annotations["lvs.dev/vrrp-router-id"] = (i % 20 + 1).to_string().into();
    }
    let service = serde_json::json!({
        "metadata": {
            "name": format!("svc-{i}"), "namespace": namespace(i),
            "uid": format!("00000000-0000-0000-0001-{i:012}"),
            "annotations": annotations,
        },
        "spec": {
            "type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
            "externalTrafficPolicy": policy, "sessionAffinity": affinity,
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    });
    let mut service: Service = serde_json::from_value(service).expect("a Service");
    service.metadata.creation_timestamp =
        Some(Time(Timestamp::from_second(1_700_000_000 + i as i64).unwrap()));
    service
}

/// The EndpointSlice of `svc-{i}`: 10 ready pods and one not ready, each on
/// a node (directors included, for `externalTrafficPolicy: Local`).
fn pod_slice(i: usize) -> EndpointSlice {
    let mut slice = endpoint_slice(i);
    slice.metadata.namespace = Some(namespace(i));
    for (e, endpoint) in slice.endpoints.iter_mut().flatten().enumerate() {
        endpoint.node_name = Some(format!("node-{:03}", (i * 7 + e * 13) % NODES));
    }
    slice
}

/// VmHWM: the process's peak resident set, in KiB (0 where /proc is absent).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: 0 kB");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or(0)
}

fn cluster() -> ClusterState {
    let nodes = (0..NODES).map(node).collect();
    let virtual_services = (0..SERVICES).map(virtual_service).collect();
    let endpoint_slices = (0..SERVICES).filter(|i| i % 5 == 4).map(endpoint_slice).collect();
    ClusterState { virtual_services, nodes, endpoint_slices, ..ClusterState::default() }
}

fn worker_ip(worker: usize) -> String {
    format!("10.0.{}.{}", worker / 200, worker % 200 + 10)
}

fn node(i: usize) -> Node {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    let address = if i < DIRECTORS {
        labels.insert("lvs.dev/director".to_owned(), "true".to_owned());
        annotations.insert("lvs.dev/vrrp-priority".to_owned(), (200 - i).to_string());
        format!("10.0.255.{}", i + 1)
    } else {
        let worker = i - DIRECTORS;
        // Pools of exactly 10 workers for the selector services.
        if worker < 90 {
            labels.insert("pool".to_owned(), format!("p{}", worker / REAL_SERVERS));
        }
        worker_ip(worker)
    };
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node-{i:03}")),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".to_owned(), address },
                NodeAddress { type_: "Hostname".to_owned(), address: format!("node-{i:03}") },
            ]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

fn virtual_service(i: usize) -> VirtualService {
    let vip = format!("10.200.{}.{}", i / 250, i % 250 + 1);
    let common = format!(
        "vip: {vip}\nport: 80\nscheduler: wrr\n\
         healthCheck: {{type: HTTP, path: /healthz, intervalSeconds: 2, timeoutSeconds: 1}}\n\
         failover: {{vrrp: {{virtualRouterId: {}}}}}\n\
         connectionSync: true\ndirectors: {{interface: eth0}}\n",
        i % 255 + 1
    );
    let sources = match i % 5 {
        0..=2 => {
            let servers: Vec<String> = (0..REAL_SERVERS)
                .map(|r| format!("  - {{address: {}, weight: {}}}\n", worker_ip((i + r * 7) % 96), r % 3 + 1))
                .collect();
            format!("forwarding: DirectRouting\nrealServers:\n{}", servers.concat())
        }
        3 => format!("forwarding: Tunnel\nrealServerSelector: {{nodeSelector: {{pool: p{}}}}}\n", i % 9),
        _ => format!("forwarding: NAT\nbackendService: {{name: svc-{i}, port: 8080}}\n"),
    };
    let spec = lvs_crds::yaml::from_str(&(common + &sources)).expect("a valid spec");
    let mut vs = VirtualService::new(&format!("vs-{i}"), spec);
    vs.metadata.namespace = Some(format!("team-{}", i % 255 % 20));
    vs.metadata.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
    vs.metadata.generation = Some(1);
    vs.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_000 + i as i64).unwrap()));
    vs
}

fn pod_ip(k: usize) -> String {
    format!("10.{}.{}.{}", 128 + k / 65536, k / 256 % 256, k % 256)
}

fn endpoint_slice(i: usize) -> EndpointSlice {
    let endpoint = |e: usize, ready: bool| Endpoint {
        addresses: vec![pod_ip(i * (REAL_SERVERS + 1) + e)],
        conditions: Some(EndpointConditions { ready: Some(ready), ..EndpointConditions::default() }),
        ..Endpoint::default()
    };
    let mut endpoints: Vec<Endpoint> = (0..REAL_SERVERS).map(|e| endpoint(e, true)).collect();
    endpoints.push(endpoint(REAL_SERVERS, false));
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}-abcde")),
            namespace: Some(format!("team-{}", i % 255 % 20)),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_owned(), format!("svc-{i}"))])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints),
        ports: Some(vec![EndpointPort {
            port: Some(8080),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    }
}
