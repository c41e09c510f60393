//! The translation VirtualServices (+ Nodes, EndpointSlices) -> LvsNodes, one
//! semantic per test.

mod cluster;

use std::net::IpAddr;

use cluster::{annotated, director, endpoint_slice, json, node, state, states, virtual_service};
use lvs_crds::{
    ClusterState, LvsNode, LvsNodeSpec, TranslateOptions, Translation, Verdict, assemble,
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

#[test]
fn vips_outside_the_allowed_cidrs_are_refused() {
    let cluster = web("{vip: 192.168.16.100, port: 80, realServers: [{address: 10.0.0.21}]}");
    let options = |cidrs: &[&str]| TranslateOptions {
        allowed_vip_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        ..TranslateOptions::default()
    };
    let t = translate(&cluster, &options(&["10.0.0.0/8", "fd00::/8"]));
    let verdict = &t.verdicts[&id("default", "web")];
    assert_eq!(verdict, &Verdict::VipNotAllowed { vip: "192.168.16.100".into() });
    assert_eq!(verdict.reason(), "VipNotAllowed");
    assert!(t.lvs_nodes.is_empty());

    let t = translate(&cluster, &options(&["192.168.16.0/24"]));
    assert_eq!(t.verdicts[&id("default", "web")], Verdict::Accepted);
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
