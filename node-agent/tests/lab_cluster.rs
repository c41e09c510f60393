//! The cluster path run as processes: `lvs-controller` and `lvs-agent run` on
//! the lab's routed topology, talking HTTP to the API server stand-in
//! (tests/apiserver/apiserver.py), with real traffic through the VIPs.
//!
//! What is real: both binaries, started with the arguments and environment
//! deploy/ gives them (the agents in the nodes' network namespaces as the
//! DaemonSet runs them: no environment but theirs, an empty `PATH`, only
//! `NET_ADMIN` and `NET_RAW`; the controller as user 65532 with no
//! capability), the kernel's IPVS, addresses and sysctls, and the traffic.
//! What stands in: the API server (see its header for what it does not do),
//! reached through a kubeconfig (`KUBECONFIG`) instead of the in-cluster
//! service account; `--sysctl-root=/proc/sys` in the node's namespace instead
//! of the host's `/proc/sys/net` mounted at `/host/proc/sys/net`.
//!
//! The lab (`topology routed --router`): client 192.168.16.2 (and .3 for NAT),
//! director1 .16.11/.17.11, director2 .16.12/.17.12, rs1 .17.21, rs2 .17.22,
//! the router .16.1/.17.1; the stand-in on 192.168.17.250 (br1, where every
//! node is). A DirectRouting VirtualService (VIP .16.100, director2, the real
//! servers by address) and a NAT one (VIP .16.101, director1, VRRP, real
//! servers from an EndpointSlice). DR replies go through the router; NAT
//! replies to the client's .16.3 through director1 (a host route on the real
//! servers), as NAT needs.
//!
//! One boot for all scenarios, in order: creation to traffic, statuses, the
//! tenants (another namespace contending for a VIP, another namespace's VRRP
//! settings in conflict, a NAT Service of type LoadBalancer given its address
//! by a pool, a DirectRouting one to hostNetwork endpoints, a Service whose
//! VRRP router contradicts a VirtualService's), a real server's removal, a deletion, and an agent restart while
//! the API server is stopped. Set LAB_CLUSTER_LOGS=DIR (with `tests/lab/vm --rwdir DIR`) to keep
//! the processes' logs.

mod cluster_lab;
mod common;

use std::{
    fs::File,
    io::Write,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use cluster_lab::*;
use common::sh;
use serde_json::{Value, json};

const DR_VIP: &str = "192.168.16.100";
const NAT_VIP: &str = "192.168.16.101";
const OTHER_VS_PATH: &str = "/apis/lvs.dev/v1alpha1/namespaces/other/virtualservices";
/// The first address of the pool `lab-d1`, which the Service is given.
const LB_VIP: &str = "192.168.16.110";
/// The first address of the pool `lab-d2` (DirectRouting, director2), which the DR Service is given.
const LB_DR_VIP: &str = "192.168.16.120";

/// The administrator's pool: the lab's VIPs for namespace `default`, directed
/// by the director-labelled nodes, DirectRouting and NAT, real servers on any
/// node. Without a pool the controller refuses every VirtualService.
fn pool() -> Value {
    json!({
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VipPool",
        "metadata": {"name": "lab"},
        "spec": {
            "addresses": ["192.168.16.100-192.168.16.109"],
            "namespaces": ["default"],
            "forwardingMethods": ["DirectRouting", "NAT"],
            "realServerNodeSelector": {},
        },
    })
}

fn dr_service() -> Value {
    json!({
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": "web-dr", "namespace": "default"},
        "spec": {
            "vip": DR_VIP, "port": 80, "protocol": "TCP", "scheduler": "wrr", "forwarding": "DirectRouting",
            "realServers": [{"address": "192.168.17.21", "weight": 2}, {"address": "192.168.17.22", "weight": 1}],
            "directors": {"nodeSelector": {"kubernetes.io/hostname": "director2"}},
            "healthCheck": {"type": "HTTP", "path": "/", "intervalSeconds": 1, "timeoutSeconds": 1, "rise": 1, "fall": 2},
        },
    })
}

fn nat_service() -> Value {
    json!({
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": "web-nat", "namespace": "default"},
        "spec": {
            "vip": NAT_VIP, "port": 80, "protocol": "TCP", "scheduler": "rr", "forwarding": "NAT",
            "backendService": {"name": "web"},
            "directors": {"nodeSelector": {"kubernetes.io/hostname": "director1"}},
            "healthCheck": {"type": "TCP", "intervalSeconds": 1, "timeoutSeconds": 1, "rise": 1, "fall": 2},
            "failover": {"vrrp": {"virtualRouterId": 61, "advertIntervalMs": 500}},
        },
    })
}

/// The reason and message of `object`'s `Accepted` condition, once it is False.
fn refusal(path: &str) -> (String, String) {
    let mut found = None;
    wait_until(&format!("{path} refused"), Duration::from_secs(120), || {
        let object = get(path).unwrap();
        let accepted = object["status"]["conditions"].as_array().and_then(|conditions| {
            conditions.iter().find(|c| c["type"] == "Accepted" && c["status"] == "False").cloned()
        });
        found = accepted
            .map(|c| (c["reason"].as_str().unwrap().to_owned(), c["message"].as_str().unwrap().to_owned()));
        found.is_some()
    });
    found.unwrap()
}

/// Another namespace contends for the DR VIP and clashes with the NAT VIP's
/// VRRP router: each is refused alone and both VIPs keep working. Then a NAT
/// Service of type LoadBalancer gets its address from a pool that directs with
/// director1: traffic through it, its ingress, an endpoint's removal, its
/// deletion.
fn tenants_and_a_service() {
    merge_patch(&format!("{POOL_PATH}/lab"), &json!({"spec": {"namespaces": ["default", "other"]}}));
    let director2_rules = rules("director2");
    let thief = json!({
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": "thief", "namespace": "other"},
        "spec": {
            "vip": DR_VIP, "port": 80, "forwarding": "DirectRouting",
            "realServers": [{"address": "192.168.17.21"}],
            "directors": {"nodeSelector": {"kubernetes.io/hostname": "director2"}},
        },
    });
    create(OTHER_VS_PATH, &thief);
    let (reason, message) = refusal(&format!("{OTHER_VS_PATH}/thief"));
    assert!(["Conflict", "VipInUse"].contains(&reason.as_str()), "{reason}: {message}");
    assert!(message.contains("default/web-dr"), "{message}");
    let rival = json!({
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": "rival", "namespace": "other"},
        "spec": {
            "vip": "192.168.16.103", "port": 80, "forwarding": "NAT",
            "realServers": [{"address": "192.168.17.21"}],
            "directors": {"nodeSelector": {"kubernetes.io/hostname": "director1"}},
            "failover": {"vrrp": {"virtualRouterId": 61, "advertIntervalMs": 1000}},
        },
    });
    create(OTHER_VS_PATH, &rival);
    let (reason, message) = refusal(&format!("{OTHER_VS_PATH}/rival"));
    assert_eq!(reason, "VrrpConflict", "{message}");
    // Every other VIP keeps working, its rules untouched.
    assert_eq!(rules("director2"), director2_rules);
    assert!(rules_of("director1", "192.168.16.103").is_empty());
    assert!(fetch(DR_VIP, None).is_ok() && fetch(NAT_VIP, Some(NAT_CLIENT)).is_ok());

    // A Service of type LoadBalancer, its address from the pool lab-d1.
    create(
        POOL_PATH,
        &json!({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VipPool",
            "metadata": {"name": "lab-d1"},
            "spec": {
                "addresses": ["192.168.16.110-192.168.16.119"], "namespaces": ["default"],
                "directors": {"nodeSelector": {"kubernetes.io/hostname": "director1"}},
                "forwardingMethods": ["NAT"],
            },
        }),
    );
    let mut slice = endpoint_slice(&["192.168.17.21", "192.168.17.22"]);
    slice["metadata"]["name"] = json!("web-lb-1");
    slice["metadata"]["labels"]["kubernetes.io/service-name"] = json!("web-lb");
    create(SLICE_PATH, &slice);
    let start = Instant::now();
    create(
        K8S_SERVICE_PATH,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web-lb", "namespace": "default",
                         "annotations": {"lvs.dev/forwarding": "NAT", "lvs.dev/pool": "lab-d1"}},
            "spec": {
                "type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}],
            },
        }),
    );
    wait_until("traffic through the Service's VIP", Duration::from_secs(240), || {
        fetch(LB_VIP, Some(NAT_CLIENT)).is_ok()
    });
    figure(&format!(
        "cluster Service of type LoadBalancer creation to traffic through its VIP: {} ms",
        millis(start.elapsed())
    ));
    let rules = rules_of("director1", LB_VIP);
    for rs in ["192.168.17.21", "192.168.17.22"] {
        assert!(rules.iter().any(|l| l.contains(&format!("-r {rs}:80 -m"))), "{rules:?}");
    }
    assert!(rules_of("director2", LB_VIP).is_empty(), "the pool directs with director1 only");
    wait_until("the Service's ingress", Duration::from_secs(120), || {
        get(&format!("{K8S_SERVICE_PATH}/web-lb")).unwrap()["status"]["loadBalancer"]["ingress"]
            == json!([{"ip": LB_VIP, "ipMode": "Proxy"}])
    });
    let service = get(&format!("{K8S_SERVICE_PATH}/web-lb")).unwrap();
    assert_eq!(service["metadata"]["finalizers"], json!(["lvs.dev/load-balancer-cleanup"]), "{service}");

    let start = Instant::now();
    merge_patch(
        &format!("{SLICE_PATH}/web-lb-1"),
        &json!({"endpoints": [{"addresses": ["192.168.17.21"], "conditions": {"ready": true}}]}),
    );
    wait_until("the Service's removed endpoint leaves the kernel", Duration::from_secs(120), || {
        !rules_of("director1", LB_VIP).iter().any(|l| l.contains("192.168.17.22"))
    });
    figure(&format!("cluster Service endpoint removal to the kernel: {} ms", millis(start.elapsed())));

    api("DELETE", &format!("{K8S_SERVICE_PATH}/web-lb"), None, "");
    wait_until("the Service leaves the kernel and director1", Duration::from_secs(120), || {
        rules_of("director1", LB_VIP).is_empty() && !addresses("director1").contains(LB_VIP)
    });
    wait_until("the Service's finalizer is removed", Duration::from_secs(120), || {
        get(&format!("{K8S_SERVICE_PATH}/web-lb")).is_none()
    });
    for name in ["thief", "rival"] {
        api("DELETE", &format!("{OTHER_VS_PATH}/{name}"), None, "");
    }
}

/// A Service's `Accepted` condition (status, reason, message) and its ingress, once it has one.
fn service_state(name: &str) -> (String, String, String, Value) {
    let path = format!("{K8S_SERVICE_PATH}/{name}");
    let mut found = None;
    wait_until(&format!("{name}'s Accepted condition"), Duration::from_secs(120), || {
        let service = get(&path).unwrap();
        found = service["status"]["conditions"].as_array().and_then(|c| c.first()).map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (
                text("status"),
                text("reason"),
                text("message"),
                service["status"]["loadBalancer"]["ingress"].clone(),
            )
        });
        found.is_some()
    });
    found.unwrap()
}

/// A DirectRouting Service of type LoadBalancer whose endpoints are the real
/// servers' own addresses (hostNetwork pods): its address from the pool
/// `lab-d2` (director2), the VIP on director2 and on the real servers' lvs0,
/// traffic through it, and its deletion. Then a Service whose VRRP router
/// contradicts the NAT VirtualService's on director1: refused alone.
fn a_dr_service_and_a_vrrp_conflicting_service() {
    create(
        POOL_PATH,
        &json!({
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VipPool",
            "metadata": {"name": "lab-d2"},
            "spec": {
                "addresses": ["192.168.16.120-192.168.16.129"], "namespaces": ["default"],
                "directors": {"nodeSelector": {"kubernetes.io/hostname": "director2"}},
                "forwardingMethods": ["DirectRouting"],
            },
        }),
    );
    let mut slice = endpoint_slice(&["192.168.17.21", "192.168.17.22"]);
    slice["metadata"]["name"] = json!("web-dr-lb-1");
    slice["metadata"]["labels"]["kubernetes.io/service-name"] = json!("web-dr-lb");
    for (endpoint, node) in slice["endpoints"].as_array_mut().unwrap().iter_mut().zip(["rs1", "rs2"]) {
        endpoint["nodeName"] = json!(node);
    }
    create(SLICE_PATH, &slice);
    let director1_rules = rules("director1");
    let start = Instant::now();
    create(
        K8S_SERVICE_PATH,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web-dr-lb", "namespace": "default",
                         "annotations": {"lvs.dev/forwarding": "DirectRouting", "lvs.dev/pool": "lab-d2",
                                         "lvs.dev/scheduler": "rr"}},
            "spec": {
                "type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}],
            },
        }),
    );
    wait_until("traffic through the DR Service's VIP", Duration::from_secs(240), || {
        fetch(LB_DR_VIP, None).is_ok()
    });
    figure(&format!(
        "cluster DirectRouting Service of type LoadBalancer creation to traffic through its VIP: {} ms",
        millis(start.elapsed())
    ));
    let (status, reason, message, ingress) = service_state("web-dr-lb");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"), "{message}");
    assert_eq!(ingress, json!([{"ip": LB_DR_VIP, "ipMode": "Proxy"}]));
    assert_eq!(
        rules_of("director2", LB_DR_VIP),
        [
            // rr: wlc would favour the real server that got the VIP first
            // (the other one's early attempts count as its connections).
            format!("-A -t {LB_DR_VIP}:80 -s rr"),
            format!("-a -t {LB_DR_VIP}:80 -r 192.168.17.21:80 -g -w 1"),
            format!("-a -t {LB_DR_VIP}:80 -r 192.168.17.22:80 -g -w 1"),
        ]
    );
    assert_eq!(rules("director1"), director1_rules, "the pool directs with director2 only");
    for rs in ["rs1", "rs2"] {
        let lvs0 = in_ns(rs, "ip -br addr show dev lvs0");
        assert!(lvs0.contains(&format!("{LB_DR_VIP}/32")), "{rs}: {lvs0}");
    }
    let answers: Vec<String> = (0..6).map(|_| fetch(LB_DR_VIP, None).unwrap()).collect();
    assert!(answers.iter().any(|a| a == "web1") && answers.iter().any(|a| a == "web2"), "{answers:?}");

    api("DELETE", &format!("{K8S_SERVICE_PATH}/web-dr-lb"), None, "");
    wait_until("the DR Service leaves director2 and the real servers", Duration::from_secs(120), || {
        rules_of("director2", LB_DR_VIP).is_empty()
            && !addresses("director2").contains(LB_DR_VIP)
            && !addresses("rs1").contains(LB_DR_VIP)
            && !addresses("rs2").contains(LB_DR_VIP)
    });
    assert!(addresses("rs1").contains(DR_VIP), "the DR VirtualService's VIP stays");
    assert!(fetch(DR_VIP, None).is_ok());

    // Router 61 on director1 at 1000 ms, where web-nat has it at 500 ms.
    create(
        K8S_SERVICE_PATH,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web-vrrp", "namespace": "default",
                         "annotations": {"lvs.dev/forwarding": "NAT", "lvs.dev/pool": "lab-d1",
                                         "lvs.dev/vrrp-router-id": "61"}},
            "spec": {
                "type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            },
        }),
    );
    let (status, reason, message, ingress) = service_state("web-vrrp");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "VrrpConflict"), "{message}");
    assert!(message.contains("older VirtualService default/web-nat"), "{message}");
    assert!(ingress.as_array().is_none_or(Vec::is_empty), "{ingress}");
    assert_eq!(rules("director1"), director1_rules, "director1 keeps its rules");
    assert!(fetch(NAT_VIP, Some(NAT_CLIENT)).is_ok());
    api("DELETE", &format!("{K8S_SERVICE_PATH}/web-vrrp"), None, "");
    wait_until("web-vrrp is gone", Duration::from_secs(120), || {
        get(&format!("{K8S_SERVICE_PATH}/web-vrrp")).is_none()
    });
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn the_cluster_path_programs_reports_cleans_up_and_survives_an_api_outage() {
    setup_lab();
    let result = std::panic::catch_unwind(scenarios);
    teardown_lab();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn scenarios() {
    let mut api_server = start_api_server();
    for (name, addresses, _) in NODES {
        create("/api/v1/nodes", &node(name, addresses));
    }
    create(SLICE_PATH, &endpoint_slice(&["192.168.17.21", "192.168.17.22"]));
    create(POOL_PATH, &pool());
    let controller = start_controller();
    let mut agents: Vec<(&str, Process)> =
        NODES.iter().map(|(name, _, _)| (*name, start_agent(name))).collect();
    wait_until("the controller holds its lease", Duration::from_secs(240), || {
        get("/apis/coordination.k8s.io/v1/namespaces/lvs-system/leases/lvs-controller")
            .is_some_and(|lease| lease["spec"]["holderIdentity"] == "lvs-controller-0")
    });

    // --- creation to traffic ----------------------------------------------------
    create(VS_PATH, &nat_service());
    let nat_time = wait_until("traffic through the NAT VIP", Duration::from_secs(240), || {
        fetch(NAT_VIP, Some(NAT_CLIENT)).is_ok()
    });
    figure(&format!(
        "cluster NAT VirtualService (VRRP) creation to traffic through its VIP: {} ms",
        millis(nat_time)
    ));
    create(VS_PATH, &dr_service());
    let dr_time =
        wait_until("traffic through the DR VIP", Duration::from_secs(120), || fetch(DR_VIP, None).is_ok());
    figure(&format!("cluster DR VirtualService creation to traffic through its VIP: {} ms", millis(dr_time)));

    // The kernels, checked with ipvsadm: each director has its service only.
    assert_eq!(
        rules_of("director1", NAT_VIP),
        [
            format!("-A -t {NAT_VIP}:80 -s rr"),
            format!("-a -t {NAT_VIP}:80 -r 192.168.17.21:80 -m -w 1"),
            format!("-a -t {NAT_VIP}:80 -r 192.168.17.22:80 -m -w 1"),
        ]
    );
    assert_eq!(
        rules("director2"),
        [
            format!("-A -t {DR_VIP}:80 -s wrr"),
            format!("-a -t {DR_VIP}:80 -r 192.168.17.21:80 -g -w 2"),
            format!("-a -t {DR_VIP}:80 -r 192.168.17.22:80 -g -w 1"),
        ]
    );
    assert_eq!(rules("director1").len(), 3, "director1 directs the NAT service only");
    for node in ["rs1", "rs2"] {
        assert!(rules(node).is_empty(), "{node} directs nothing");
    }
    // VIPs: each on its director's front interface, DR's on the real servers' lvs0.
    let eth0 = |node: &str| in_ns(node, "ip -br addr show dev eth0");
    assert!(eth0("director1").contains(&format!("{NAT_VIP}/32")), "{}", eth0("director1"));
    assert!(!eth0("director1").contains(DR_VIP), "{}", eth0("director1"));
    assert!(eth0("director2").contains(&format!("{DR_VIP}/32")), "{}", eth0("director2"));
    assert!(!addresses("director2").contains(NAT_VIP), "{}", addresses("director2"));
    for rs in ["rs1", "rs2"] {
        let lvs0 = in_ns(rs, "ip -br addr show dev lvs0");
        assert!(lvs0.contains(&format!("{DR_VIP}/32")), "{rs}: {lvs0}");
        assert!(!addresses(rs).contains(NAT_VIP), "{rs}: {}", addresses(rs));
        assert_eq!(in_ns(rs, "sysctl -n net.ipv4.conf.all.arp_ignore").trim(), "1");
    }
    assert_eq!(in_ns("director1", "sysctl -n net.ipv4.ip_forward").trim(), "1");
    // Both real servers answer through each VIP.
    for (vip, source) in [(DR_VIP, None), (NAT_VIP, Some(NAT_CLIENT))] {
        let answers: Vec<String> = (0..6).map(|_| fetch(vip, source).unwrap()).collect();
        assert!(
            answers.iter().any(|a| a == "web1") && answers.iter().any(|a| a == "web2"),
            "{vip}: {answers:?}"
        );
    }

    // --- statuses ---------------------------------------------------------------
    for name in ["web-nat", "web-dr"] {
        wait_until(&format!("{name} Programmed and Healthy"), Duration::from_secs(120), || {
            let service = get(&format!("{VS_PATH}/{name}")).unwrap();
            condition(&service, "Programmed").is_some_and(|(s, _)| s == "True")
                && condition(&service, "Healthy").is_some_and(|(s, _)| s == "True")
        });
        let service = get(&format!("{VS_PATH}/{name}")).unwrap();
        assert_eq!(condition(&service, "Accepted").unwrap().0, "True", "{service}");
        assert_eq!(service["status"]["realServerCount"], 2, "{service}");
        assert_eq!(service["status"]["observedGeneration"], service["metadata"]["generation"]);
        assert_eq!(service["metadata"]["finalizers"], json!(["lvs.dev/cleanup"]));
    }
    let director1 = get("/apis/lvs.dev/v1alpha1/lvsnodes/director1").expect("director1's LvsNode");
    let status = &director1["status"];
    assert_eq!(status["appliedRevision"], director1["spec"]["revision"], "{director1}");
    assert_eq!(condition(&director1, "Applied").unwrap().0, "True", "{director1}");
    assert_eq!(status["services"][0]["programmed"], true, "{director1}");
    assert_eq!(
        status["vips"],
        json!([{"address": NAT_VIP, "vrrpState": "Master", "held": true}]),
        "{director1}"
    );
    let healthy: Vec<&Value> =
        status["services"][0]["destinations"].as_array().unwrap().iter().map(|d| &d["healthy"]).collect();
    assert_eq!(healthy, [true, true], "{director1}");
    for rs in ["rs1", "rs2"] {
        let object = get(&format!("/apis/lvs.dev/v1alpha1/lvsnodes/{rs}")).expect("a real server's LvsNode");
        assert_eq!(condition(&object, "Applied").unwrap().0, "True", "{object}");
    }
    let events = api("GET", "/apis/events.k8s.io/v1/namespaces/default/events", None, "");
    let reasons: Vec<&str> =
        events["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"Programmed"), "events: {reasons:?}");

    tenants_and_a_service();
    a_dr_service_and_a_vrrp_conflicting_service();

    // --- a real server's removal to the kernel --------------------------------------
    let start = Instant::now();
    merge_patch(
        &format!("{SLICE_PATH}/web-abcde"),
        &json!({"endpoints": [
            {"addresses": ["192.168.17.21"], "conditions": {"ready": true}},
        ]}),
    );
    wait_until("the removed endpoint leaves director1's kernel", Duration::from_secs(120), || {
        !rules_of("director1", NAT_VIP).iter().any(|l| l.contains("192.168.17.22"))
    });
    figure(&format!(
        "cluster endpoint removal (EndpointSlice) to the kernel: {} ms",
        millis(start.elapsed())
    ));
    let start = Instant::now();
    let mut dr = get(&format!("{VS_PATH}/web-dr")).unwrap();
    dr["spec"]["realServers"] = json!([{"address": "192.168.17.21", "weight": 2}]);
    merge_patch(&format!("{VS_PATH}/web-dr"), &json!({"spec": dr["spec"]}));
    wait_until("the removed real server leaves director2's kernel", Duration::from_secs(120), || {
        !rules("director2").iter().any(|l| l.contains("192.168.17.22"))
    });
    figure(&format!(
        "cluster real server removal (VirtualService) to the kernel: {} ms",
        millis(start.elapsed())
    ));
    // rs2 is no DR real server any more: its VIP goes.
    wait_until("rs2 loses the DR VIP", Duration::from_secs(120), || !addresses("rs2").contains(DR_VIP));
    assert!(addresses("rs1").contains(DR_VIP));

    // --- deletion -----------------------------------------------------------------
    let start = Instant::now();
    api("DELETE", &format!("{VS_PATH}/web-dr"), None, "");
    wait_until("the DR service leaves director2's kernel", Duration::from_secs(120), || {
        rules("director2").is_empty()
    });
    let to_kernel = start.elapsed();
    wait_until("the DR VIP leaves director2 and rs1", Duration::from_secs(120), || {
        !addresses("director2").contains(DR_VIP) && !addresses("rs1").contains(DR_VIP)
    });
    wait_until("the finalizer is removed and web-dr is gone", Duration::from_secs(120), || {
        get(&format!("{VS_PATH}/web-dr")).is_none()
    });
    figure(&format!(
        "cluster deletion to the kernel: {} ms; to the object gone (finalizer removed): {} ms",
        millis(to_kernel),
        millis(start.elapsed())
    ));
    assert!(get("/apis/lvs.dev/v1alpha1/lvsnodes/director2").is_none(), "director2 directs nothing now");
    assert_eq!(fetch(NAT_VIP, Some(NAT_CLIENT)).unwrap(), "web1", "the NAT service is untouched");

    // --- an agent restart while the API server is stopped -----------------------------
    assert!(work_dir().join("director1/desired.json").exists(), "director1 caches its desired state");
    let nat_rules = rules_of("director1", NAT_VIP);
    api_server.signal("TERM");
    assert!(request("GET", "/healthz", None, "").0 == 0, "the API server is stopped");
    // Traffic through the NAT VIP, sampled all along the restart.
    let (stop, failures, samples) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampler = {
        let (stop, failures, samples) = (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&samples));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if fetch(NAT_VIP, Some(NAT_CLIENT)).is_err() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                samples.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(100));
            }
        })
    };
    let index = agents.iter().position(|(name, _)| *name == "director1").unwrap();
    agents[index].1.signal("KILL");
    agents[index].1 = start_agent("director1");
    let metrics = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                "director1",
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://192.168.17.11:9101/metrics",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    // Ready: its first round ran, from the cache (without it, the agent waits
    // for the API server and is never ready).
    let readyz = || {
        in_ns("director1", "curl -s -o /dev/null -w %{http_code} http://192.168.17.11:9101/readyz || true")
    };
    let ready = wait_until("the restarted agent is ready", Duration::from_secs(120), || readyz() == "200");
    figure(&format!(
        "cluster agent restart with the API server stopped to its first round from the cached state: {} ms",
        millis(ready)
    ));
    // VRRP master again (the metrics take VRRP's figures at each round, at
    // the latest at the end of each resync, and keep a rendering for 5 s).
    wait_until("the restarted agent is VRRP master", Duration::from_secs(120), || {
        metrics().lines().any(|l| l.starts_with("lvs_agent_vrrp_master{") && l.ends_with(" 1"))
    });
    sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during the restart (of {})",
        samples.load(Ordering::SeqCst)
    );
    assert_eq!(rules_of("director1", NAT_VIP), nat_rules, "the restart changed the rules");
    let log = std::fs::read_to_string(work_dir().join("agent-director1.log")).unwrap();
    assert!(log.contains("cached on disk"), "the agent says it uses the cache");
    // Health checks run: a real server that stops answering leaves the kernel.
    let topology = repo().join("tests/lab/topology");
    sh(&format!("{} stop-web rs1 >/dev/null", topology.display()));
    wait_until(
        "the failed real server leaves the kernel, API server stopped",
        Duration::from_secs(120),
        || !rules_of("director1", NAT_VIP).iter().any(|l| l.contains("192.168.17.21")),
    );
    let adverts = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("lvs_agent_vrrp_adverts_sent_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = adverts(&metrics());
    wait_until("VRRP advertises while the API server is stopped", Duration::from_secs(120), || {
        adverts(&metrics()) > before
    });
    assert!(agents[index].1.alive(), "the agent runs without the API server");

    // --- the API server back: the restarted agent reports, the controller follows ---
    api_server = start_api_server();
    wait_until("director1's LvsNode reports the failed real server", Duration::from_secs(120), || {
        get("/apis/lvs.dev/v1alpha1/lvsnodes/director1").is_some_and(|o| {
            let destination = &o["status"]["services"][0]["destinations"][0];
            destination["address"] == "192.168.17.21" && destination["healthy"] == false
        })
    });
    wait_until("web-nat is Healthy=False", Duration::from_secs(120), || {
        let service = get(&format!("{VS_PATH}/web-nat")).unwrap();
        condition(&service, "Healthy").is_some_and(|(s, _)| s == "False")
    });
    sh(&format!("{} start-web rs1 >/dev/null", topology.display()));
    wait_until("the real server is back in the kernel", Duration::from_secs(120), || {
        rules_of("director1", NAT_VIP).iter().any(|l| l.contains("192.168.17.21"))
    });
    wait_until("traffic through the NAT VIP again", Duration::from_secs(10), || {
        fetch(NAT_VIP, Some(NAT_CLIENT)).is_ok()
    });
    wait_until("web-nat is Healthy=True again", Duration::from_secs(120), || {
        let service = get(&format!("{VS_PATH}/web-nat")).unwrap();
        condition(&service, "Healthy").is_some_and(|(s, _)| s == "True")
    });
    drop(controller);
    drop(agents);
    drop(api_server);
    let mut log = File::options().append(true).open(work_dir().join("apiserver.log")).unwrap();
    let _ = writeln!(log, "test done");
}
