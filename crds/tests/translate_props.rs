//! Properties of the translation over random clusters: determinism under any
//! input order, the object size bound with lossless chunking, conflict
//! resolution, and stability (no flapping) when the input changes around a
//! winner.

mod cluster;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use cluster::{annotated, endpoint_slice, json, node, states, with_meta};
use k8s_openapi::api::core::v1::Node;
use lvs_crds::{
    ClusterState, TranslateOptions, Translation, Verdict, VirtualService, VirtualServiceSpec, assemble,
    lvs_node::DirectorState, translate, translate::translate_for_node, validation::parse_ip,
};
use proptest::{prelude::*, sample::select};
use serde_json::{Value, json};

const NODES: usize = 8;

fn node_ip(i: usize) -> String {
    format!("10.0.0.{}", i + 1)
}

fn nodes() -> impl Strategy<Value = Vec<Node>> {
    let one = |i: usize| {
        (
            any::<bool>(),
            select(vec!["a", "b"]),
            select(vec![None, Some("50"), Some("200"), Some("0"), Some("x")]),
        )
            .prop_map(move |(director, role, priority)| {
                let mut labels = vec![("role", role)];
                if director {
                    labels.push(("lvs.dev/director", "true"));
                }
                let node = node(&format!("n{i}"), &labels, &[&node_ip(i), &format!("fd00::{}", i + 1)]);
                annotated(
                    node,
                    &priority.map(|p| ("lvs.dev/vrrp-priority", p)).into_iter().collect::<Vec<_>>(),
                )
            })
    };
    // "n0-1" is also a possible chunk name of n0.
    let extra = node("n0-1", &[("role", "a")], &["10.0.0.99"]);
    ((0..NODES).map(one).collect::<Vec<_>>(), any::<bool>()).prop_map(move |(mut nodes, with_extra)| {
        if with_extra {
            nodes.push(extra.clone());
        }
        nodes
    })
}

/// A spec as JSON: mostly valid, sometimes not (duplicates, port mapping,
/// backendService with DirectRouting), with keys from small pools so that
/// conflicts are frequent.
fn spec() -> impl Strategy<Value = VirtualServiceSpec> {
    let key = prop_oneof![
        4 => (select(vec!["192.168.1.1", "192.168.1.2", "192.168.2.1", "fd00::100"]), select(vec![80u16, 443]))
            .prop_map(|(vip, port)| json!({"vip": vip, "port": port})),
        1 => (1u32..3).prop_map(|mark| json!({"fwmark": mark})),
    ];
    let real_server = (0..NODES + 2, prop::option::weighted(0.1, Just(8080u16)), 0u16..4)
        .prop_map(|(i, port, weight)| (i, json!({"port": port, "weight": weight})));
    (
        key,
        any::<prop::sample::Index>(),
        select(vec!["TCP", "UDP"]),
        select(vec!["NAT", "DirectRouting", "Tunnel", "FullNAT"]),
        prop::collection::vec(real_server, 0..4),
        prop::option::weighted(0.3, select(vec!["a", "b"])),
        prop::option::weighted(0.3, select(vec!["svc0", "svc1"])),
        prop::option::weighted(0.3, 1u8..4),
        any::<bool>(),
        prop::option::weighted(0.2, 0..NODES),
    )
        .prop_map(|(key, _, protocol, forwarding, servers, selector, backend, vrid, sync, sorry)| {
            let mut spec = key;
            let v6 = spec["vip"].as_str().is_some_and(|vip| vip.contains(':'));
            let address = |i: usize| if v6 { format!("fd00::{}", i + 1) } else { node_ip(i) };
            let object = spec.as_object_mut().unwrap();
            object.insert("protocol".into(), json!(protocol));
            object.insert("forwarding".into(), json!(forwarding));
            let servers: Vec<Value> = servers
                .into_iter()
                .map(|(i, mut server)| {
                    server["address"] = json!(address(i));
                    if server["port"].is_null() {
                        server.as_object_mut().unwrap().remove("port");
                    }
                    server
                })
                .collect();
            object.insert("realServers".into(), json!(servers));
            if let Some(role) = selector {
                object.insert("realServerSelector".into(), json!({"nodeSelector": {"role": role}}));
            }
            if let Some(name) = backend {
                object.insert("backendService".into(), json!({"name": name}));
            }
            if let (Some(vrid), true) = (vrid, v6 || object.contains_key("vip")) {
                object.insert("failover".into(), json!({"vrrp": {"virtualRouterId": vrid}}));
            }
            object.insert("connectionSync".into(), json!(sync));
            object.insert("directors".into(), json!({"interface": "eth0"}));
            if let Some(i) = sorry {
                object.insert("sorryServer".into(), json!({"address": address(i)}));
            }
            serde_json::from_value(spec).expect("a spec")
        })
}

fn virtual_services() -> impl Strategy<Value = Vec<VirtualService>> {
    let one = (select(vec!["a", "b"]), 0i64..4, spec());
    prop::collection::vec(one, 0..25).prop_map(|services| {
        services
            .into_iter()
            .enumerate()
            .map(|(i, (namespace, created, spec))| with_meta(namespace, &format!("vs{i}"), created, spec))
            .collect()
    })
}

fn cluster() -> impl Strategy<Value = ClusterState> {
    let endpoint = (0..NODES, prop::option::of(any::<bool>()));
    let slice = (select(vec!["a", "b"]), select(vec!["svc0", "svc1"]), prop::collection::vec(endpoint, 0..3));
    let slices = prop::collection::vec(slice, 0..4).prop_map(|slices| {
        let slices = slices.into_iter().enumerate().map(|(i, (namespace, service, endpoints))| {
            let addresses: Vec<(String, Option<bool>)> =
                endpoints.into_iter().map(|(n, ready)| (format!("10.1.0.{}", n + 1), ready)).collect();
            let borrowed: Vec<(&str, Option<bool>)> =
                addresses.iter().map(|(a, r)| (a.as_str(), *r)).collect();
            endpoint_slice(namespace, service, &format!("{service}-{i}"), 8080, &borrowed)
        });
        slices.collect()
    });
    (virtual_services(), nodes(), slices).prop_map(|(virtual_services, nodes, endpoint_slices)| {
        ClusterState { virtual_services, nodes, endpoint_slices, ..ClusterState::default() }
    })
}

/// The same cluster with every list in another order.
fn shuffled(cluster: ClusterState) -> impl Strategy<Value = ClusterState> {
    (
        Just(cluster.virtual_services).prop_shuffle(),
        Just(cluster.nodes).prop_shuffle(),
        Just(cluster.endpoint_slices).prop_shuffle(),
    )
        .prop_map(|(virtual_services, nodes, endpoint_slices)| ClusterState {
            virtual_services,
            nodes,
            endpoint_slices,
            ..ClusterState::default()
        })
}

fn options() -> impl Strategy<Value = TranslateOptions> {
    prop::option::of(Just(vec!["192.168.1.0/24".parse().unwrap(), "fd00::/16".parse().unwrap()])).prop_map(
        |cidrs| TranslateOptions {
            allowed_vip_cidrs: cidrs.unwrap_or_default(),
            ..TranslateOptions::default()
        },
    )
}

/// What two services may not share, computed here independently of the crate.
fn claim(spec: &VirtualServiceSpec) -> String {
    match (&spec.vip, spec.fwmark) {
        (Some(vip), _) => format!("{} {} {:?}", parse_ip(vip).unwrap(), spec.port.unwrap(), spec.protocol),
        (None, Some(mark)) => format!("fwmark {mark} {:?}", spec.family()),
        (None, None) => unreachable!("a valid spec has a vip or a fwmark"),
    }
}

fn id(vs: &VirtualService) -> (String, String) {
    (vs.metadata.namespace.clone().unwrap(), vs.metadata.name.clone().unwrap())
}

fn allowed(vs: &VirtualService, options: &TranslateOptions) -> bool {
    let vip = vs.spec.vip.as_deref().and_then(parse_ip);
    options.allowed_vip_cidrs.is_empty()
        || vip.is_none_or(|ip: IpAddr| options.allowed_vip_cidrs.iter().any(|n| n.contains(&ip)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// What the standalone agent caches per VirtualService is what the whole
    /// translation gives for that VirtualService alone on that node.
    #[test]
    fn one_virtual_service_for_one_node_agrees_with_the_whole_translation(
        cluster in cluster(),
        options in options(),
    ) {
        for vs in &cluster.virtual_services {
            for node in &cluster.nodes {
                let alone = ClusterState {
                    virtual_services: vec![vs.clone()],
                    nodes: vec![node.clone()],
                    endpoint_slices: vec![],
                    ..ClusterState::default()
                };
                let whole = translate(&alone, &options);
                let part = translate_for_node(vs, node, &options);
                prop_assert_eq!(&part.verdict, &whole.verdicts[&id(vs)]);
                let spec = assemble(whole.lvs_nodes.iter().map(|n| &n.spec));
                let director = spec.as_ref().and_then(|s| s.director.as_ref());
                prop_assert_eq!(part.directs && part.verdict == Verdict::Accepted, director.is_some());
                if let Some(director) = director {
                    prop_assert_eq!(director.services.first(), part.service.as_ref());
                    prop_assert_eq!(director.vips.first(), part.director_vip.as_ref());
                    let settings = DirectorState { services: vec![], vips: vec![], ..director.clone() };
                    prop_assert_eq!(Some(settings), part.director_settings.clone());
                }
                let real_server = spec.as_ref().and_then(|s| s.real_server.as_ref());
                prop_assert_eq!(real_server.and_then(|r| r.vips.first()), part.real_server_vip.as_ref());
            }
        }
    }

    #[test]
    fn the_same_input_in_any_order_gives_byte_identical_output(
        (cluster, reordered) in cluster().prop_flat_map(|c| (Just(c.clone()), shuffled(c))),
        options in options(),
        max_object_bytes in prop::option::of(3000usize..8000),
    ) {
        let options = TranslateOptions { max_object_bytes: max_object_bytes.unwrap_or(1 << 20), ..options };
        let first = translate(&cluster, &options);
        let second = translate(&reordered, &options);
        prop_assert_eq!(json(&first), json(&second));
        prop_assert_eq!(&first.verdicts, &second.verdicts);
        prop_assert_eq!(first, translate(&cluster, &options), "a second run changes nothing");
    }

    #[test]
    fn every_object_fits_the_bound_and_the_chunks_reassemble_to_the_whole_state(
        cluster in cluster(),
        max_object_bytes in 3000usize..8000,
    ) {
        let whole = translate(&cluster, &TranslateOptions::default());
        let chunked = translate(&cluster, &TranslateOptions { max_object_bytes, ..TranslateOptions::default() });
        let mut names = BTreeSet::new();
        for object in &chunked.lvs_nodes {
            let size = serde_json::to_vec(object).unwrap().len();
            prop_assert!(size <= max_object_bytes, "{:?} has {size} bytes", object.metadata.name);
            prop_assert!(names.insert(object.metadata.name.clone().unwrap()), "names are unique");
        }
        let sorted: Vec<_> = chunked.lvs_nodes.iter().map(|o| o.metadata.name.clone().unwrap()).collect();
        prop_assert_eq!(sorted, names.into_iter().collect::<Vec<_>>(), "objects are sorted by name");
        let (whole, chunked) = (states(&whole), states(&chunked));
        prop_assert_eq!(whole.keys().collect::<Vec<_>>(), chunked.keys().collect::<Vec<_>>());
        for (node, state) in &whole {
            prop_assert_eq!(&state.director, &chunked[node].director, "{}", node);
            prop_assert_eq!(&state.real_server, &chunked[node].real_server, "{}", node);
        }
    }

    #[test]
    fn each_key_has_exactly_one_winner_the_oldest_claimant(cluster in cluster(), options in options()) {
        let translation = translate(&cluster, &options);
        prop_assert_eq!(translation.verdicts.len(), cluster.virtual_services.len());
        let mut claimants: BTreeMap<String, Vec<&VirtualService>> = BTreeMap::new();
        for vs in &cluster.virtual_services {
            let verdict = &translation.verdicts[&id(vs)];
            match vs.spec.validate() {
                Err(_) => prop_assert_eq!(verdict.reason(), "Invalid"),
                Ok(()) if !allowed(vs, &options) => prop_assert_eq!(verdict.reason(), "VipNotAllowed"),
                Ok(()) => claimants.entry(claim(&vs.spec)).or_default().push(vs),
            }
        }
        for claimants in claimants.values() {
            let oldest = claimants
                .iter()
                .min_by_key(|vs| (vs.metadata.creation_timestamp.clone(), id(vs)))
                .unwrap();
            let winners: Vec<_> = claimants.iter().filter(|vs| translation.verdicts[&id(vs)] == Verdict::Accepted).collect();
            prop_assert_eq!(winners.len(), 1);
            prop_assert_eq!(id(winners[0]), id(oldest));
            for loser in claimants.iter().filter(|vs| id(vs) != id(oldest)) {
                let verdict = &translation.verdicts[&id(loser)];
                prop_assert!(matches!(verdict, Verdict::Conflict { winner, .. } if *winner == id(oldest)), "{verdict:?}");
            }
        }
        // Only accepted services are programmed.
        let programmed: BTreeSet<(String, String)> = states(&translation)
            .values()
            .flat_map(|s| s.director.iter().flat_map(|d| &d.services))
            .map(|s| (s.owner.namespace.clone(), s.owner.name.clone()))
            .collect();
        for owner in programmed {
            prop_assert_eq!(&translation.verdicts[&owner], &Verdict::Accepted);
        }
    }

    #[test]
    fn losers_and_newcomers_never_move_a_winner(
        cluster in cluster(),
        newcomers in virtual_services(),
        options in options(),
    ) {
        let before = translate(&cluster, &options);

        // Losers contribute nothing: without them the output is the same.
        let mut without_losers = cluster.clone();
        without_losers.virtual_services.retain(|vs| before.verdicts[&id(vs)] == Verdict::Accepted);
        let after = translate(&without_losers, &options);
        prop_assert_eq!(json(&before), json(&after));

        // Newer VirtualServices can take free keys only: every winner stays.
        let mut grown = cluster.clone();
        grown.virtual_services.extend(newcomers.into_iter().map(|mut vs| {
            vs.metadata.name = Some(format!("new-{}", vs.metadata.name.unwrap()));
            vs.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(100).unwrap(),
            ));
            vs
        }));
        let after = translate(&grown, &options);
        for (owner, verdict) in &before.verdicts {
            prop_assert_eq!(&after.verdicts[owner], verdict, "{:?}", owner);
        }
    }
}

#[test]
fn random_clusters_mix_verdicts_and_chunking() {
    // Guards the generators: the properties above are only as good as the
    // variety of clusters they see.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut reasons = BTreeSet::new();
    let mut chunked = 0;
    for _ in 0..64 {
        let cluster = cluster().new_tree(&mut runner).unwrap().current();
        let options = TranslateOptions {
            allowed_vip_cidrs: vec!["192.168.1.0/24".parse().unwrap(), "fd00::/16".parse().unwrap()],
            max_object_bytes: 3000,
            ..TranslateOptions::default()
        };
        let translation: Translation = translate(&cluster, &options);
        reasons.extend(translation.verdicts.values().map(Verdict::reason));
        chunked += translation.lvs_nodes.iter().filter(|o| o.spec.chunks > 2).count();
    }
    assert_eq!(reasons, BTreeSet::from(["Accepted", "Conflict", "Invalid", "VipNotAllowed"]));
    assert!(chunked > 10, "{chunked} objects of nodes with 3 or more chunks");
}
