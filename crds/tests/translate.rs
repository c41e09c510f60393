//! The translation VirtualServices (+ Nodes, EndpointSlices) -> LvsNodes, one
//! semantic per test.

mod cluster;

use std::net::IpAddr;

use cluster::{annotated, director, endpoint_slice, json, node, state, states, virtual_service};
use lvs_crds::{
    ClusterState, LvsNode, LvsNodeSpec, TranslateOptions, Translation, Verdict, VipPool, assemble,
    lvs_node::{ConnectionSync, Destination, OwnerKind, RealServerMode, VrrpInstance},
    translate,
    virtual_service::{Forwarding, Tunnel},
};

fn run(state: ClusterState) -> Translation {
    translate(&state, &TranslateOptions::default())
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn id(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

/// (address, port, weight) of the destinations of the node's only service.
fn destinations(translation: &Translation, node: &str) -> Vec<(IpAddr, u16, u16)> {
    let director = state(translation, node).director.expect("a director");
    let [service] = &director.services[..] else { panic!("one service, got {:?}", director.services) };
    service.destinations.iter().map(|d| (d.address, d.port, d.weight)).collect()
}

fn web(spec: &str) -> ClusterState {
    ClusterState {
        virtual_services: vec![virtual_service("default", "web", 1, spec)],
        nodes: vec![
            director("lvs1", "10.0.0.1"),
            director("lvs2", "10.0.0.2"),
            node("web1", &[("role", "web")], &["10.0.0.21"]),
            node("web2", &[("role", "web")], &["10.0.0.22", "fd00::22"]),
            node("db1", &[("role", "db")], &["10.0.0.31"]),
        ],
        endpoint_slices: Vec::new(),
        ..ClusterState::default()
    }
}

#[test]
fn directors_default_to_the_director_label() {
    let t = run(web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}"));
    let directing: Vec<_> =
        states(&t).into_iter().filter(|(_, s)| s.director.is_some()).map(|(n, _)| n).collect();
    assert_eq!(directing, ["lvs1", "lvs2"]);
    assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted);
}

#[test]
fn directors_follow_the_node_selector_and_an_empty_one_means_the_default() {
    let t = run(web(
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}], directors: {nodeSelector: {role: db}}}",
    ));
    let directing: Vec<_> =
        states(&t).into_iter().filter(|(_, s)| s.director.is_some()).map(|(n, _)| n).collect();
    assert_eq!(directing, ["db1"]);

    let t = run(web(
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}], directors: {interface: eth1}}",
    ));
    let directing: Vec<_> =
        states(&t).into_iter().filter(|(_, s)| s.director.is_some()).map(|(n, _)| n).collect();
    assert_eq!(directing, ["lvs1", "lvs2"]);
    let vips = state(&t, "lvs1").director.unwrap().vips;
    assert_eq!(vips.len(), 1);
    assert_eq!((vips[0].address, vips[0].interface.as_deref()), (ip("192.168.16.100"), Some("eth1")));
}

#[test]
fn static_real_servers_are_resolved_sorted_with_the_service_port() {
    let t = run(web("{vip: 192.168.16.100, port: 80, forwarding: NAT, realServers: [
            {address: 10.0.0.22, weight: 3, upperThreshold: 100, lowerThreshold: 50},
            {address: 10.0.0.21, port: 8080}]}"));
    assert_eq!(destinations(&t, "lvs1"), [(ip("10.0.0.21"), 8080, 1), (ip("10.0.0.22"), 80, 3)]);
    let service = &state(&t, "lvs1").director.unwrap().services[0];
    let second: &Destination = &service.destinations[1];
    assert_eq!((second.upper_threshold, second.lower_threshold), (100, 50));
    assert_eq!(second.forwarding, Forwarding::Nat);
    assert_eq!(service.owner.name, "web");
    assert_eq!(service.owner.uid, "uid-default-web");
}

#[test]
fn the_real_server_selector_takes_matching_nodes_internal_ips_of_the_family() {
    let t = run(web("{vip: 192.168.16.100, port: 80, realServerSelector: {nodeSelector: {role: web}}}"));
    assert_eq!(destinations(&t, "lvs1"), [(ip("10.0.0.21"), 80, 1), (ip("10.0.0.22"), 80, 1)]);

    let t = run(web("{vip: 'fd00::100', port: 80, realServerSelector: {nodeSelector: {role: web}}}"));
    assert_eq!(destinations(&t, "lvs1"), [(ip("fd00::22"), 80, 1)]);

    let t = run(web(
        "{vip: 192.168.16.100, port: 80, forwarding: NAT, realServerSelector: {nodeSelector: {role: web}, port: 8080}}",
    ));
    assert_eq!(destinations(&t, "lvs1"), [(ip("10.0.0.21"), 8080, 1), (ip("10.0.0.22"), 8080, 1)]);
}

#[test]
fn a_static_real_server_wins_over_the_same_one_found_by_selector() {
    let t = run(web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21, weight: 5}],
          realServerSelector: {nodeSelector: {role: web}}}"));
    assert_eq!(destinations(&t, "lvs1"), [(ip("10.0.0.21"), 80, 5), (ip("10.0.0.22"), 80, 1)]);
}

#[test]
fn the_backend_service_gives_its_ready_endpoints_in_its_namespace() {
    let mut cluster = web("{vip: 192.168.16.100, port: 80, forwarding: NAT, backendService: {name: web}}");
    cluster.endpoint_slices = vec![
        endpoint_slice(
            "default",
            "web",
            "web-a",
            8080,
            &[("10.1.0.1", Some(true)), ("10.1.0.2", None), ("10.1.0.3", Some(false))],
        ),
        endpoint_slice("default", "web", "web-b", 8080, &[("10.1.0.4", Some(true))]),
        endpoint_slice("other", "web", "web-c", 8080, &[("10.9.0.1", Some(true))]),
        endpoint_slice("default", "api", "api-a", 8080, &[("10.8.0.1", Some(true))]),
        endpoint_slice("default", "web", "web-v6", 8080, &[("fd00::1", Some(true))]),
    ];
    let ready = [(ip("10.1.0.1"), 8080, 1), (ip("10.1.0.2"), 8080, 1), (ip("10.1.0.4"), 8080, 1)];
    assert_eq!(destinations(&run(cluster.clone()), "lvs1"), ready);

    // A named port must be one the slices list.
    cluster.virtual_services = vec![virtual_service(
        "default",
        "web",
        1,
        "{vip: 192.168.16.100, port: 80, forwarding: NAT, backendService: {name: web, port: 8080}}",
    )];
    assert_eq!(destinations(&run(cluster.clone()), "lvs1"), ready);
    cluster.virtual_services = vec![virtual_service(
        "default",
        "web",
        1,
        "{vip: 192.168.16.100, port: 80, forwarding: NAT, backendService: {name: web, port: 9090}}",
    )];
    assert_eq!(destinations(&run(cluster), "lvs1"), []);
}

#[test]
fn direct_routing_real_server_nodes_bind_the_vip() {
    let t = run(web(
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}, {address: 192.168.99.1}],
          sorryServer: {address: 10.0.0.31}}",
    ));
    for node in ["web1", "db1"] {
        let vips = state(&t, node).real_server.expect("a real server").vips;
        assert_eq!(vips.len(), 1, "{node}");
        assert_eq!((vips[0].address, vips[0].mode), (ip("192.168.16.100"), RealServerMode::DirectRouting));
        assert_eq!((vips[0].owner.namespace.as_str(), vips[0].owner.name.as_str()), ("default", "web"));
        assert_eq!(vips[0].tunnel, None);
    }
    let all = states(&t);
    assert!(!all.contains_key("web2"), "web2 is no real server");
    assert!(all["lvs1"].real_server.is_none());
}

#[test]
fn tunnel_real_servers_bind_the_vip_with_the_encapsulation() {
    let t = run(web(
        "{vip: 192.168.16.100, port: 80, forwarding: Tunnel, realServerSelector: {nodeSelector: {role: web}}}",
    ));
    for node in ["web1", "web2"] {
        let vips = state(&t, node).real_server.unwrap().vips;
        assert_eq!((vips[0].mode, vips[0].tunnel.clone()), (RealServerMode::Tunnel, Some(Tunnel::default())));
    }
    let service = &state(&t, "lvs1").director.unwrap().services[0];
    assert!(service.destinations.iter().all(|d| d.tunnel == Some(Tunnel::default())));
}

#[test]
fn nat_and_fwmark_services_bind_nothing_on_real_servers() {
    for spec in [
        "{vip: 192.168.16.100, port: 80, forwarding: NAT, realServers: [{address: 10.0.0.21}]}",
        "{fwmark: 7, realServers: [{address: 10.0.0.21}]}",
    ] {
        let t = run(web(spec));
        assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted, "{spec}");
        assert!(!states(&t).contains_key("web1"), "{spec}");
    }
}

#[test]
fn vrrp_priority_comes_from_the_node_annotation() {
    let mut cluster = web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}],
          failover: {vrrp: {virtualRouterId: 51, advertIntervalMs: 500}}}");
    cluster.nodes.push(annotated(director("lvs3", "10.0.0.3"), &[("lvs.dev/vrrp-priority", "200")]));
    cluster.nodes.push(annotated(director("lvs4", "10.0.0.4"), &[("lvs.dev/vrrp-priority", "255")]));
    let t = run(cluster);
    for (node, priority) in [("lvs1", 100), ("lvs3", 200), ("lvs4", 100)] {
        let vip = &state(&t, node).director.unwrap().vips[0];
        let expected =
            VrrpInstance { virtual_router_id: 51, advert_interval_ms: 500, preempt: true, priority };
        assert_eq!(vip.vrrp.as_ref(), Some(&expected), "{node}");
    }
}

#[test]
fn director_settings_follow_the_services() {
    let mut cluster =
        web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}], connectionSync: true,
          directors: {interface: eth1}, failover: {vrrp: {virtualRouterId: 51}}}");
    let director = run(cluster.clone()).lvs_nodes[0].spec.director.clone().unwrap();
    assert_eq!(director.connection_sync, Some(ConnectionSync { interface: "eth1".into(), sync_id: 51 }));
    assert!(!director.ip_forward && !director.full_nat_masquerade);

    cluster.virtual_services.push(virtual_service(
        "default",
        "nat",
        2,
        "{vip: 192.168.16.101, port: 80, forwarding: NAT, realServers: [{address: 10.0.0.21}]}",
    ));
    let director = state(&run(cluster.clone()), "lvs1").director.unwrap();
    assert!(director.ip_forward && !director.full_nat_masquerade);

    cluster.virtual_services.push(virtual_service(
        "default",
        "fullnat",
        3,
        "{vip: 192.168.16.102, port: 80, forwarding: FullNAT, realServers: [{address: 10.0.0.21}]}",
    ));
    let director = state(&run(cluster), "lvs1").director.unwrap();
    assert!(director.ip_forward && director.full_nat_masquerade);
    assert_eq!(director.services.len(), 3);
}

#[test]
fn persistence_becomes_a_prefix_length() {
    let t =
        run(web("{vip: 192.168.16.100, port: 0, persistence: {timeoutSeconds: 60, netmask: 255.255.255.0},
          realServers: [{address: 10.0.0.21}]}"));
    let persistence = state(&t, "lvs1").director.unwrap().services[0].persistence.clone().unwrap();
    assert_eq!((persistence.timeout_seconds, persistence.prefix_length), (60, 24));
    let t = run(web("{vip: 'fd00::1', port: 0, persistence: {}, realServers: [{address: 'fd00::21'}]}"));
    let persistence = state(&t, "lvs1").director.unwrap().services[0].persistence.clone().unwrap();
    assert_eq!((persistence.timeout_seconds, persistence.prefix_length), (300, 128));
}

#[test]
fn invalid_specs_are_refused_and_not_programmed() {
    let t = run(web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21, port: 8080}]}"));
    let verdict = &t.verdicts[&id("default", "web")];
    let Verdict::Invalid(errors) = verdict else { panic!("{verdict:?}") };
    assert_eq!(errors[0].field, "spec.realServers[0].port");
    assert_eq!(verdict.reason(), "Invalid");
    assert!(verdict.message().contains("spec.realServers[0].port: 8080: DirectRouting cannot map ports"));
    assert!(t.lvs_nodes.is_empty());
}

/// `web`'s cluster in the cluster mode, with pool `lab`: 192.168.16.96/28
/// for namespace `default`, and these extra spec fields.
fn pooled(spec: &str, pool: &str) -> ClusterState {
    let pool: VipPool = lvs_crds::yaml::from_str(&format!(
        "apiVersion: lvs.dev/v1alpha1\nkind: VipPool\nmetadata: {{name: lab}}\n\
         spec: {{addresses: [192.168.16.96/28, 'fd00::100/126'], namespaces: [default], {pool}}}"
    ))
    .unwrap();
    ClusterState { vip_pools: Some(vec![pool]), ..web(spec) }
}

#[test]
fn vips_outside_every_admitting_pool_are_refused() {
    let t = run(pooled("{vip: 192.168.16.200, port: 80, realServers: [{address: 10.0.0.21}]}", ""));
    let verdict = &t.verdicts[&id("default", "web")];
    assert_eq!(verdict.reason(), "VipNotInPool");
    assert_eq!(
        verdict.message(),
        "vip 192.168.16.200 lies in no VipPool that admits namespace default (admitting: lab)"
    );
    assert!(t.lvs_nodes.is_empty());
    assert!(t.allocations.is_empty());

    let t = run(pooled("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}", ""));
    assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted);
    assert_eq!(t.allocations[&id("default", "web")].pool, "lab");
    // 14 IPv4 addresses (no network, no broadcast) and 3 IPv6 (no anycast), one used.
    assert_eq!((t.pools["lab"].used, t.pools["lab"].free), (1, 16));

    // A node's address is never a VIP, even inside a pool; nor are the
    // cluster's Service CIDRs and the API server's address.
    let mut cluster = pooled("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}", "");
    cluster.nodes.push(director("lvs3", "192.168.16.100"));
    let verdict = &run(cluster).verdicts[&id("default", "web")];
    assert_eq!(verdict.message(), "vip 192.168.16.100 is reserved: the address of node lvs3");
    let cluster = pooled("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}", "");
    for (options, what) in [
        (
            TranslateOptions {
                service_cidrs: vec!["192.168.16.96/27".parse().unwrap()],
                ..Default::default()
            },
            "inside the Service CIDR 192.168.16.96/27",
        ),
        (
            TranslateOptions { pod_cidrs: vec!["192.168.0.0/16".parse().unwrap()], ..Default::default() },
            "inside the pod CIDR 192.168.0.0/16",
        ),
        (
            TranslateOptions {
                api_server_addresses: vec!["192.168.16.100".parse().unwrap()],
                ..Default::default()
            },
            "the API server's address",
        ),
    ] {
        let verdict = &translate(&cluster, &options).verdicts[&id("default", "web")];
        assert_eq!(verdict.message(), format!("vip 192.168.16.100 is reserved: {what}"));
    }
}

#[test]
fn a_service_without_vip_gets_the_pools_first_free_address() {
    let mut cluster = pooled("{port: 80, realServers: [{address: 10.0.0.21}]}", "");
    cluster.virtual_services.push(virtual_service(
        "default",
        "v6",
        2,
        "{port: 80, forwarding: NAT, realServers: [{address: 'fd00::22'}]}",
    ));
    let t = run(cluster);
    assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted);
    let allocation = &t.allocations[&id("default", "web")];
    assert_eq!((allocation.vip, allocation.pool.as_str()), (Some("192.168.16.97".parse().unwrap()), "lab"));
    assert_eq!(t.allocations[&id("default", "v6")].vip, Some("fd00::101".parse().unwrap()));
    let vips: Vec<String> =
        state(&t, "lvs1").director.unwrap().vips.iter().map(|v| v.address.to_string()).collect();
    assert_eq!(vips, ["192.168.16.97", "fd00::101"]);

    // Without pools (the standalone agent) a vip is required.
    let verdict =
        &run(web("{port: 80, realServers: [{address: 10.0.0.21}]}")).verdicts[&id("default", "web")];
    assert_eq!(verdict.reason(), "NoVip");
}

#[test]
fn directors_and_host_changes_stay_within_the_pool() {
    // web1 may be a real server (host changes), web2 may not.
    let spec = "{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}, {address: 10.0.0.22}],
                 directors: {nodeSelector: {lvs.dev/director: 'true'}}}";
    let mut cluster = pooled(
        spec,
        "directors: {nodeSelector: {tier: edge}, interface: eth1}, realServerNodeSelector: {rs: ok}",
    );
    for node in &mut cluster.nodes {
        let labels = node.metadata.labels.get_or_insert_default();
        match node.metadata.name.as_deref() {
            Some("lvs1") => drop(labels.insert("tier".into(), "edge".into())),
            Some("db1") => drop(labels.insert("tier".into(), "edge".into())),
            Some("web1") => drop(labels.insert("rs".into(), "ok".into())),
            _ => {}
        }
    }
    let t = run(cluster.clone());
    assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted);
    let states = states(&t);
    // Its own selector narrows the pool's: lvs1 only (db1 is no director, lvs2 not the pool's).
    let directing: Vec<&str> =
        states.iter().filter(|(_, s)| s.director.is_some()).map(|(n, _)| n.as_str()).collect();
    assert_eq!(directing, ["lvs1"]);
    assert_eq!(states["lvs1"].director.as_ref().unwrap().vips[0].interface.as_deref(), Some("eth1"));
    let real_servers: Vec<&str> =
        states.iter().filter(|(_, s)| s.real_server.is_some()).map(|(n, _)| n.as_str()).collect();
    assert_eq!(real_servers, ["web1"]);

    // Another interface than the pool's, or nodes the pool does not allow, are refused.
    let mut other_interface = cluster.clone();
    other_interface.virtual_services[0].spec.directors.as_mut().unwrap().interface = Some("eth0".into());
    let verdict = &run(other_interface).verdicts[&id("default", "web")];
    assert_eq!(verdict.reason(), "InterfaceNotAllowed");
    assert_eq!(verdict.message(), "spec.directors.interface eth0: VipPool lab puts its VIPs on eth1");
    let mut contradicting = cluster.clone();
    contradicting.virtual_services[0].spec.directors.as_mut().unwrap().node_selector =
        [("tier".to_owned(), "core".to_owned())].into();
    assert_eq!(run(contradicting).verdicts[&id("default", "web")].reason(), "DirectorsOutsidePool");
    let mut selecting = cluster;
    selecting.virtual_services[0].spec.real_server_selector =
        Some(lvs_crds::virtual_service::RealServerSelector {
            node_selector: [("role".into(), "web".into())].into(),
            port: None,
        });
    let t = run(selecting);
    let destinations: Vec<String> = state(&t, "lvs1").director.unwrap().services[0]
        .destinations
        .iter()
        .map(|d| d.address.to_string())
        .collect();
    assert_eq!(
        destinations,
        ["10.0.0.21", "10.0.0.22"],
        "web2 is a static server; the selector adds web1 only"
    );
    let no_real_server_nodes =
        pooled("{vip: 192.168.16.100, port: 80, realServerSelector: {nodeSelector: {role: web}}}", "");
    let verdict = &run(no_real_server_nodes).verdicts[&id("default", "web")];
    assert_eq!(verdict.reason(), "RealServerNodesNotAllowed");
}

#[test]
fn forwarding_methods_and_fwmark_need_the_pools_consent() {
    let t = run(pooled(
        "{vip: 192.168.16.100, port: 80, forwarding: FullNAT, realServers: [{address: 10.0.0.21}]}",
        "",
    ));
    let verdict = &t.verdicts[&id("default", "web")];
    assert_eq!(verdict.reason(), "ForwardingNotAllowed");
    assert_eq!(verdict.message(), "VipPool lab allows forwarding DirectRouting, Nat, Tunnel, not FullNat");
    let fwmark = "{fwmark: 7, realServers: [{address: 10.0.0.21}]}";
    assert_eq!(run(pooled(fwmark, "")).verdicts[&id("default", "web")].reason(), "FwmarkNotAllowed");
    let t = run(pooled(fwmark, "allowFwmark: true"));
    assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted);
    assert_eq!(t.allocations[&id("default", "web")].vip, None);
}

#[test]
fn a_vrrp_conflict_refuses_the_newer_service_alone() {
    let vrrp = |vip: &str, vrid: u8, advert: u32| {
        format!(
            "{{vip: {vip}, port: 80, realServers: [{{address: 10.0.0.21}}],
               failover: {{vrrp: {{virtualRouterId: {vrid}, advertIntervalMs: {advert}}}}}}}"
        )
    };
    let mut cluster = pooled(&vrrp("192.168.16.100", 51, 1000), "allowSharedVip: true");
    cluster.virtual_services.extend([
        // One VIP, another interval: refused.
        virtual_service(
            "default",
            "interval",
            2,
            &vrrp("192.168.16.100", 51, 2000).replace("port: 80", "port: 81"),
        ),
        // One VIP, another router: refused.
        virtual_service(
            "default",
            "router",
            3,
            &vrrp("192.168.16.100", 52, 1000).replace("port: 80", "port: 82"),
        ),
        // Another VIP on router 51 with its settings: one namespace may group them.
        virtual_service("default", "grouped", 4, &vrrp("192.168.16.101", 51, 1000)),
        // Router 51 from another namespace: refused.
        virtual_service("other", "foreign", 5, &vrrp("192.168.16.102", 51, 1000)),
        // Its own router: fine.
        virtual_service("other", "own", 6, &vrrp("192.168.16.103", 60, 1000)),
    ]);
    cluster.vip_pools.as_mut().unwrap()[0].spec.namespaces.push("other".into());
    let t = run(cluster);
    let reasons: Vec<(&str, &str)> =
        t.verdicts.iter().map(|((_, name), verdict)| (name.as_str(), verdict.reason())).collect();
    assert_eq!(
        reasons,
        [
            ("grouped", "Accepted"),
            ("interval", "VrrpConflict"),
            ("router", "VrrpConflict"),
            ("web", "Accepted"),
            ("foreign", "VrrpConflict"),
            ("own", "Accepted"),
        ]
    );
    assert_eq!(
        t.verdicts[&id("default", "interval")].message(),
        "on director lvs1, VIP 192.168.16.100 has other interface or VRRP settings (interface the route's \
         interface, VRRP router 51, advert interval 1000 ms, preempt true) in the older VirtualService default/web"
    );
    assert_eq!(
        t.verdicts[&id("other", "foreign")].message(),
        "on director lvs1, VRRP router 51 (the route's interface) is used by the older VirtualService \
         default/web (VIP 192.168.16.100, advert interval 1000 ms, preempt true)"
    );
    // Every other VIP keeps working.
    let vips: Vec<String> =
        state(&t, "lvs1").director.unwrap().vips.iter().map(|v| v.address.to_string()).collect();
    assert_eq!(vips, ["192.168.16.100", "192.168.16.101", "192.168.16.103"]);
}

#[test]
fn the_oldest_claim_wins_a_conflict() {
    let spec = "{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}";
    let mut cluster = web(spec);
    cluster.virtual_services = vec![
        virtual_service("b", "newer", 20, spec),
        virtual_service("b", "old", 10, spec),
        virtual_service("a", "old", 10, spec), // same age: namespace/name decide
        virtual_service(
            "a",
            "other-port",
            5,
            "{vip: 192.168.16.100, port: 443, realServers: [{address: 10.0.0.21}]}",
        ),
        virtual_service(
            "a",
            "udp",
            5,
            "{vip: 192.168.16.100, port: 80, protocol: UDP, realServers: [{address: 10.0.0.21}]}",
        ),
        virtual_service(
            "a",
            "broken",
            1,
            "{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21, port: 1}]}",
        ),
    ];
    let t = run(cluster);
    let conflict = Verdict::Conflict {
        winner: id("a", "old"),
        winner_kind: OwnerKind::VirtualService,
        key: "TCP 192.168.16.100:80".into(),
    };
    assert_eq!(t.verdicts[&id("a", "old")], Verdict::Accepted);
    assert_eq!(t.verdicts[&id("b", "old")], conflict);
    assert_eq!(t.verdicts[&id("b", "newer")], conflict);
    assert_eq!(t.verdicts[&id("a", "other-port")], Verdict::Accepted);
    assert_eq!(t.verdicts[&id("a", "udp")], Verdict::Accepted);
    assert_eq!(t.verdicts[&id("a", "broken")].reason(), "Invalid", "an invalid older one claims nothing");
    assert_eq!(conflict.reason(), "Conflict");
    assert_eq!(
        conflict.message(),
        "TCP 192.168.16.100:80 is already claimed by the older VirtualService a/old"
    );
    let owners: Vec<_> =
        state(&t, "lvs1").director.unwrap().services.iter().map(|s| s.owner.name.clone()).collect();
    assert_eq!(owners, ["old", "udp", "other-port"], "in key order: address, port, protocol");
}

#[test]
fn fwmark_services_conflict_by_mark_and_family() {
    let mut cluster = web("{fwmark: 7, realServers: [{address: 10.0.0.21}]}");
    cluster.virtual_services.extend([
        virtual_service(
            "default",
            "udp",
            2,
            "{fwmark: 7, protocol: UDP, realServers: [{address: 10.0.0.22}]}",
        ),
        virtual_service("default", "v6", 3, "{fwmark: 7, realServers: [{address: 'fd00::22'}]}"),
    ]);
    let t = run(cluster);
    assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted);
    assert_eq!(
        t.verdicts[&id("default", "udp")],
        Verdict::Conflict {
            winner: id("default", "web"),
            winner_kind: OwnerKind::VirtualService,
            key: "fwmark 7 (IPv4)".into()
        }
    );
    assert_eq!(t.verdicts[&id("default", "v6")], Verdict::Accepted);
}

#[test]
fn small_objects_are_chunked_with_names_labels_and_one_revision() {
    let mut cluster = web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}");
    for i in 0..40 {
        let spec = format!(
            "{{vip: 192.168.17.{i}, port: 80, realServers: [{{address: 10.0.0.21}}, {{address: 10.0.0.22}}]}}"
        );
        cluster.virtual_services.push(virtual_service("default", &format!("web-{i}"), 2, &spec));
    }
    let max_object_bytes = 4096;
    let t = translate(&cluster, &TranslateOptions { max_object_bytes, ..TranslateOptions::default() });
    let lvs1: Vec<&LvsNode> = t.lvs_nodes.iter().filter(|o| o.spec.node == "lvs1").collect();
    assert!(lvs1.len() > 3, "{} chunks", lvs1.len());
    for object in &lvs1 {
        let name = object.metadata.name.clone().unwrap();
        let expected =
            if object.spec.chunk == 0 { "lvs1".to_owned() } else { format!("lvs1-{}", object.spec.chunk) };
        assert_eq!(name, expected);
        assert_eq!(object.metadata.labels.as_ref().unwrap()["lvs.dev/node"], "lvs1");
        assert_eq!(object.spec.chunks as usize, lvs1.len());
        assert_eq!(object.spec.revision, lvs1[0].spec.revision);
        assert!(serde_json::to_vec(object).unwrap().len() <= max_object_bytes);
    }
    let whole = run(cluster);
    assert_eq!(whole.lvs_nodes.iter().filter(|o| o.spec.node == "lvs1").count(), 1);
    assert_eq!(state(&t, "lvs1").director, state(&whole, "lvs1").director);
    assert_eq!(state(&t, "web1").real_server, state(&whole, "web1").real_server);
}

#[test]
fn chunk_names_skip_the_names_of_other_nodes() {
    let mut cluster = web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}");
    cluster.nodes.push(node("lvs1-1", &[], &["10.0.0.99"]));
    for i in 0..20 {
        let spec = format!("{{vip: 192.168.17.{i}, port: 80, realServers: [{{address: 10.0.0.21}}]}}");
        cluster.virtual_services.push(virtual_service("default", &format!("web-{i}"), 2, &spec));
    }
    let t = translate(&cluster, &TranslateOptions { max_object_bytes: 2048, ..TranslateOptions::default() });
    let names: Vec<_> = t
        .lvs_nodes
        .iter()
        .filter(|o| o.spec.node == "lvs1")
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    assert!(names.len() > 2);
    assert!(names.contains(&"lvs1-2".to_owned()));
    assert!(!names.contains(&"lvs1-1".to_owned()));
}

#[test]
fn the_revision_changes_with_the_state_only() {
    let cluster = web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}");
    let revision = |t: &Translation| t.lvs_nodes[0].spec.revision.clone();
    let first = run(cluster.clone());
    assert_eq!(revision(&first), revision(&run(cluster.clone())));
    assert_eq!(revision(&first).len(), 16);

    let mut changed = cluster;
    changed.virtual_services[0].spec.real_servers[0].weight = 2;
    assert_ne!(revision(&first), revision(&run(changed)));
}

#[test]
fn identical_input_gives_byte_identical_objects_in_name_order() {
    let mut cluster = web("{vip: 192.168.16.100, port: 80, realServerSelector: {nodeSelector: {role: web}}}");
    let first = json(&run(cluster.clone()));
    cluster.nodes.reverse();
    assert_eq!(first, json(&run(cluster.clone())));
    let names: Vec<_> = run(cluster).lvs_nodes.iter().map(|o| o.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["lvs1", "lvs2", "web1", "web2"]);
}

#[test]
fn nodes_with_nothing_to_do_get_no_object() {
    let t = run(ClusterState { nodes: web("{}").nodes, ..ClusterState::default() });
    assert_eq!(t, Translation::default());
}

#[test]
fn assemble_waits_for_every_chunk_of_one_revision() {
    let mut cluster = web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}");
    for i in 0..20 {
        let spec = format!("{{vip: 192.168.17.{i}, port: 80, realServers: [{{address: 10.0.0.21}}]}}");
        cluster.virtual_services.push(virtual_service("default", &format!("web-{i}"), 2, &spec));
    }
    let t = translate(&cluster, &TranslateOptions { max_object_bytes: 2048, ..TranslateOptions::default() });
    let mut chunks: Vec<LvsNodeSpec> =
        t.lvs_nodes.iter().filter(|o| o.spec.node == "lvs1").map(|o| o.spec.clone()).collect();
    chunks.reverse();
    let whole = assemble(&chunks).expect("all chunks, any order");
    assert_eq!((whole.chunk, whole.chunks), (0, 1));
    assert_eq!(whole.director.unwrap().services.len(), 21);

    assert_eq!(assemble(&chunks[1..]), None, "a chunk missing");
    chunks[0].revision = "another".into();
    assert_eq!(assemble(&chunks), None, "chunks of two revisions");
}
