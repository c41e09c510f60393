//! Properties of the cluster mode (with VipPools) over random clusters: no
//! VirtualService reaches a director, real-server node, VIP, forwarding
//! method or fwmark its pool does not admit; allocation never hands out one
//! address twice and is deterministic; accepted VRRP settings never
//! contradict each other on a director. Services of type LoadBalancer take
//! their addresses from the same allocation: they too stay within their
//! pools, and no key is held by two owners of any kind.

mod cluster;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use cluster::{json, node, states, with_meta};
use k8s_openapi::{
    api::core::v1::{Namespace, Node, Service},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use lvs_crds::{
    ClusterState, TranslateOptions, Translation, Verdict, VipPool, VirtualService, VirtualServiceSpec,
    VirtualServiceStatus, lvs_node::OwnerKind, translate, validation::parse_ip,
};
use proptest::{prelude::*, sample::select};
use serde_json::json;

const NODES: usize = 6;

fn node_ip(i: usize) -> String {
    format!("10.0.0.{}", i + 1)
}

fn nodes() -> impl Strategy<Value = Vec<Node>> {
    let one = |i: usize| {
        (any::<bool>(), select(vec!["a", "b"])).prop_map(move |(director, role)| {
            let mut labels = vec![("role", role)];
            if director {
                labels.push(("lvs.dev/director", "true"));
            }
            node(&format!("n{i}"), &labels, &[&node_ip(i)])
        })
    };
    (0..NODES).map(one).collect::<Vec<_>>()
}

fn pool() -> impl Strategy<Value = serde_json::Value> {
    let addresses = prop::sample::subsequence(
        vec![
            "192.168.1.0/30",
            "192.168.1.1-192.168.1.2",
            "192.168.2.0/31",
            "10.0.0.0/29",
            "fd00::100-fd00::101",
        ],
        1..3,
    );
    let admitted = prop_oneof![
        Just(json!({"namespaces": ["a"]})),
        Just(json!({"namespaces": ["a", "b"]})),
        Just(json!({"namespaceSelector": {"matchLabels": {"team": "x"}}})),
        Just(json!({"namespaces": ["b"], "namespaceSelector": {}})),
    ];
    let directors = prop_oneof![
        Just(None),
        Just(Some(json!({"nodeSelector": {"role": "a"}}))),
        Just(Some(json!({"interface": "eth0"}))),
    ];
    let real_servers = prop_oneof![Just(None), Just(Some(json!({"role": "a"}))), Just(Some(json!({})))];
    let methods = prop::sample::subsequence(vec!["NAT", "DirectRouting", "Tunnel", "FullNAT"], 1..=4);
    (
        addresses,
        admitted,
        directors,
        real_servers,
        methods,
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(addresses, admitted, directors, real_servers, methods, fwmark, shared, auto)| {
            let mut spec = admitted;
            let object = spec.as_object_mut().unwrap();
            object.insert("addresses".into(), json!(addresses));
            if let Some(directors) = directors {
                object.insert("directors".into(), directors);
            }
            if let Some(selector) = real_servers {
                object.insert("realServerNodeSelector".into(), selector);
            }
            object.insert("forwardingMethods".into(), json!(methods));
            object.insert("allowFwmark".into(), json!(fwmark));
            object.insert("allowSharedVip".into(), json!(shared));
            object.insert("autoAssign".into(), json!(auto));
            spec
        })
}

fn pools() -> impl Strategy<Value = Vec<VipPool>> {
    prop::collection::vec(pool(), 0..4).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                serde_json::from_value(json!({
                    "apiVersion": "lvs.dev/v1alpha1", "kind": "VipPool",
                    "metadata": {"name": format!("p{i}")}, "spec": spec,
                }))
                .expect("a VipPool")
            })
            .collect()
    })
}

fn spec() -> impl Strategy<Value = VirtualServiceSpec> {
    let key = prop_oneof![
        4 => Just(json!({})),
        4 => select(vec!["192.168.1.1", "192.168.1.2", "192.168.2.1", "10.0.0.1", "10.0.0.5", "172.16.0.1"])
            .prop_map(|vip| json!({"vip": vip})),
        1 => (1u32..3).prop_map(|mark| json!({"fwmark": mark})),
    ];
    (
        key,
        select(vec![80u16, 443]),
        select(vec!["TCP", "UDP"]),
        select(vec!["NAT", "DirectRouting", "Tunnel", "FullNAT"]),
        prop::collection::vec(0..NODES + 2, 1..3),
        prop::option::weighted(0.3, select(vec!["a", "b"])),
        prop::option::weighted(0.3, select(vec!["a", "b"])),
        prop::option::weighted(0.3, select(vec!["eth0", "eth1"])),
        prop::option::weighted(0.5, (1u8..3, select(vec![1000u32, 2000]), any::<bool>())),
        prop::option::weighted(0.2, select(vec!["p0", "p1", "p9"])),
    )
        .prop_map(
            |(key, port, protocol, forwarding, servers, selector, directors, interface, vrrp, pool)| {
                let mut spec = key;
                let fwmark = spec.get("fwmark").is_some();
                let object = spec.as_object_mut().unwrap();
                if !fwmark {
                    object.insert("port".into(), json!(port));
                }
                object.insert("protocol".into(), json!(protocol));
                object.insert("forwarding".into(), json!(forwarding));
                let servers: Vec<_> = servers.into_iter().map(|i| json!({"address": node_ip(i)})).collect();
                object.insert("realServers".into(), json!(servers));
                if let Some(role) = selector {
                    object.insert("realServerSelector".into(), json!({"nodeSelector": {"role": role}}));
                }
                let mut director = json!({});
                if let Some(role) = directors {
                    director["nodeSelector"] = json!({"role": role});
                }
                if let Some(interface) = interface {
                    director["interface"] = json!(interface);
                }
                object.insert("directors".into(), director);
                if let (Some((vrid, advert, preempt)), false) = (vrrp, fwmark) {
                    object.insert(
                        "failover".into(),
                        json!({"vrrp": {"virtualRouterId": vrid, "advertIntervalMs": advert, "preempt": preempt}}),
                    );
                }
                if let Some(pool) = pool {
                    object.insert("pool".into(), json!(pool));
                }
                serde_json::from_value(spec).expect("a spec")
            },
        )
}

fn virtual_services() -> impl Strategy<Value = Vec<VirtualService>> {
    let previous =
        prop::option::weighted(0.3, select(vec!["192.168.1.1", "192.168.1.2", "192.168.2.0", "10.0.0.3"]));
    let one = (select(vec!["a", "b", "c"]), 0i64..4, spec(), previous);
    prop::collection::vec(one, 0..16).prop_map(|services| {
        services
            .into_iter()
            .enumerate()
            .map(|(i, (namespace, created, spec, previous))| {
                let mut vs = with_meta(namespace, &format!("vs{i}"), created, spec);
                vs.status =
                    previous.map(|vip| VirtualServiceStatus { vip: Some(vip.into()), ..Default::default() });
                vs
            })
            .collect()
    })
}

fn namespaces() -> impl Strategy<Value = Vec<Namespace>> {
    any::<bool>().prop_map(|team| {
        ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let mut namespace = Namespace::default();
                namespace.metadata.name = Some(name.into());
                if team && name == "a" || name == "c" {
                    namespace.metadata.labels = Some([("team".to_owned(), "x".to_owned())].into());
                }
                namespace
            })
            .collect()
    })
}

fn cluster() -> impl Strategy<Value = ClusterState> {
    (virtual_services(), nodes(), pools(), namespaces()).prop_map(cluster_of)
}

fn shuffled(cluster: ClusterState) -> impl Strategy<Value = ClusterState> {
    (
        Just(cluster.virtual_services).prop_shuffle(),
        Just(cluster.nodes).prop_shuffle(),
        Just(cluster.vip_pools.unwrap()).prop_shuffle(),
        Just(cluster.namespaces).prop_shuffle(),
    )
        .prop_map(cluster_of)
}

fn cluster_of(
    (virtual_services, nodes, pools, namespaces): (
        Vec<VirtualService>,
        Vec<Node>,
        Vec<VipPool>,
        Vec<Namespace>,
    ),
) -> ClusterState {
    ClusterState { virtual_services, nodes, vip_pools: Some(pools), namespaces, ..ClusterState::default() }
}

/// Services of type LoadBalancer of our class: an address asked for or not
/// (some inside the pools, one a node's, one outside), a forwarding method, a
/// pool asked for, one to three ports. No endpoints: the properties are about
/// addresses and directors.
fn load_balancers() -> impl Strategy<Value = Vec<Service>> {
    let one = (
        select(vec!["a", "b", "c"]),
        0i64..4,
        prop::option::weighted(0.5, select(vec!["192.168.1.1", "192.168.1.2", "10.0.0.1", "172.16.0.1"])),
        select(vec!["NAT", "FullNAT", "DirectRouting"]),
        prop::option::weighted(0.2, select(vec!["p0", "p1"])),
        prop::sample::subsequence(vec![(80u16, "TCP"), (443, "TCP"), (53, "UDP")], 1..=3),
    );
    prop::collection::vec(one, 0..6).prop_map(|services| {
        services
            .into_iter()
            .enumerate()
            .map(|(i, (namespace, created, address, forwarding, pool, ports))| {
                let mut annotations = json!({"lvs.dev/forwarding": forwarding});
                if let Some(pool) = pool {
                    annotations["lvs.dev/pool"] = json!(pool);
                }
                let ports: Vec<_> = ports
                    .iter()
                    .map(|(port, protocol)| json!({"name": format!("p{port}"), "port": port, "protocol": protocol}))
                    .collect();
                let mut spec = json!({"type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs", "ports": ports});
                if let Some(address) = address {
                    spec["loadBalancerIP"] = json!(address);
                }
                let mut service: Service = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"namespace": namespace, "name": format!("lb{i}"), "annotations": annotations},
                    "spec": spec,
                }))
                .expect("a Service");
                service.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
                service
            })
            .collect()
    })
}

fn options() -> TranslateOptions {
    TranslateOptions { service_cidrs: vec!["192.168.2.0/31".parse().unwrap()], ..TranslateOptions::default() }
}

fn id(vs: &VirtualService) -> (String, String) {
    (vs.metadata.namespace.clone().unwrap(), vs.metadata.name.clone().unwrap())
}

fn labels_match(selector: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn admits(pool: &VipPool, namespace: &str, namespaces: &[Namespace]) -> bool {
    let labels = namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(namespace))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    pool.spec.admits(namespace, &labels)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nothing_reaches_beyond_what_the_pool_admits(cluster in cluster()) {
        let translation = translate(&cluster, &options());
        let pools: BTreeMap<String, &VipPool> = cluster.vip_pools.iter().flatten()
            .map(|p| (p.metadata.name.clone().unwrap(), p)).collect();
        let nodes: BTreeMap<String, &Node> = cluster.nodes.iter().map(|n| (n.metadata.name.clone().unwrap(), n)).collect();
        let node_addresses: BTreeSet<IpAddr> = (0..NODES).map(|i| node_ip(i).parse().unwrap()).collect();
        let by_id: BTreeMap<_, _> = cluster.virtual_services.iter().map(|vs| (id(vs), vs)).collect();

        for (node_name, state) in states(&translation) {
            let node = nodes[&node_name];
            for service in state.director.iter().flat_map(|d| &d.services) {
                let owner = (service.owner.namespace.clone(), service.owner.name.clone());
                prop_assert_eq!(&translation.verdicts[&owner], &Verdict::Accepted);
                let allocation = &translation.allocations[&owner];
                let pool = pools[&allocation.pool];
                let vs = by_id[&owner];
                prop_assert!(admits(pool, &owner.0, &cluster.namespaces), "{:?} not admitted by {}", owner, allocation.pool);
                // The director is the pool's.
                let selector = pool.spec.directors.as_ref().map(|d| d.node_selector.clone()).filter(|s| !s.is_empty())
                    .unwrap_or_else(|| [("lvs.dev/director".to_owned(), "true".to_owned())].into());
                prop_assert!(labels_match(&selector, node), "{} directs {:?} outside pool {}", node_name, owner, allocation.pool);
                // The VIP is the pool's, and no node's.
                if let Some(vip) = service.key.address {
                    prop_assert_eq!(Some(vip), allocation.vip);
                    let ranges = pool.spec.ranges().unwrap();
                    prop_assert!(ranges.iter().any(|r| r.contains(vip)), "{} outside {}", vip, allocation.pool);
                    prop_assert!(!node_addresses.contains(&vip), "{} is a node's", vip);
                    prop_assert!(!"192.168.2.0/31".parse::<ipnet::IpNet>().unwrap().contains(&vip), "{} in the Service CIDR", vip);
                    if let Some(asked) = vs.spec.vip.as_deref() {
                        prop_assert_eq!(Some(vip), parse_ip(asked));
                    }
                } else {
                    prop_assert!(pool.spec.allow_fwmark);
                }
                prop_assert!(pool.spec.forwarding_methods.contains(&vs.spec.forwarding));
                // Nodes chosen by realServerSelector are the pool's.
                if vs.spec.real_server_selector.is_some() {
                    let allowed = pool.spec.real_server_node_selector.as_ref();
                    prop_assert!(allowed.is_some());
                    for destination in &service.destinations {
                        let static_server = vs.spec.real_servers.iter().any(|r| parse_ip(&r.address) == Some(destination.address));
                        if !static_server {
                            let owner_node = cluster.nodes.iter().find(|n| n.status.as_ref().unwrap().addresses.as_ref().unwrap()[0].address == destination.address.to_string()).unwrap();
                            prop_assert!(labels_match(allowed.unwrap(), owner_node));
                        }
                    }
                }
            }
            // Host changes only where the pool allows.
            for vip in state.real_server.iter().flat_map(|r| &r.vips) {
                let owner = (vip.owner.namespace.clone(), vip.owner.name.clone());
                prop_assert_eq!(&translation.verdicts[&owner], &Verdict::Accepted);
                let pool = pools[&translation.allocations[&owner].pool];
                let allowed = pool.spec.real_server_node_selector.as_ref();
                prop_assert!(allowed.is_some_and(|s| labels_match(s, node)), "{} changed for {:?}", node_name, owner);
            }
        }
        // A namespace no pool admits gets nothing.
        for vs in &cluster.virtual_services {
            let namespace = vs.metadata.namespace.as_deref().unwrap();
            if vs.spec.validate().is_ok() && !pools.values().any(|p| admits(p, namespace, &cluster.namespaces)) {
                let reason = translation.verdicts[&id(vs)].reason();
                prop_assert!(["NoPool", "PoolNotFound", "PoolNotAdmitted", "VipNotInPool"].contains(&reason), "{reason}");
            }
        }
    }

    #[test]
    fn no_address_is_handed_out_twice(cluster in cluster()) {
        let translation = translate(&cluster, &options());
        let by_id: BTreeMap<_, _> = cluster.virtual_services.iter().map(|vs| (id(vs), vs)).collect();
        let pools: BTreeMap<String, &VipPool> = cluster.vip_pools.iter().flatten()
            .map(|p| (p.metadata.name.clone().unwrap(), p)).collect();
        let mut holders: BTreeMap<IpAddr, Vec<(String, String)>> = BTreeMap::new();
        for (owner, allocation) in &translation.allocations {
            if let Some(vip) = allocation.vip {
                holders.entry(vip).or_default().push(owner.clone());
            }
        }
        for (vip, owners) in holders.iter().filter(|(_, owners)| owners.len() > 1) {
            let mut keys = BTreeSet::new();
            for owner in owners {
                let pool = pools[&translation.allocations[owner].pool];
                prop_assert!(pool.spec.allow_shared_vip, "{} shared by {:?} in a pool that does not share", vip, owners);
                let spec = &by_id[owner].spec;
                prop_assert!(keys.insert((spec.port, spec.protocol)), "{} shared on one port by {:?}", vip, owners);
            }
        }
    }

    #[test]
    fn allocation_and_translation_are_deterministic_in_any_order(
        (cluster, reordered) in cluster().prop_flat_map(|c| (Just(c.clone()), shuffled(c))),
    ) {
        let first = translate(&cluster, &options());
        let second = translate(&reordered, &options());
        prop_assert_eq!(json(&first), json(&second));
        prop_assert_eq!(&first.verdicts, &second.verdicts);
        prop_assert_eq!(&first.allocations, &second.allocations);
        prop_assert_eq!(&first.pools, &second.pools);
    }

    #[test]
    fn allocations_read_back_are_kept(cluster in cluster()) {
        // The controller writes the allocations into the statuses; the next
        // translation (a restart, another leader) gives the same ones.
        let first = translate(&cluster, &options());
        let mut read_back = cluster.clone();
        for vs in &mut read_back.virtual_services {
            let allocation = first.allocations.get(&id(vs));
            vs.status = Some(VirtualServiceStatus {
                vip: allocation.and_then(|a| a.vip).map(|v| v.to_string()),
                pool: allocation.map(|a| a.pool.clone()),
                ..Default::default()
            });
        }
        let second = translate(&read_back, &options());
        prop_assert_eq!(&first.verdicts, &second.verdicts);
        for (owner, allocation) in &first.allocations {
            prop_assert_eq!(second.allocations[owner].vip, allocation.vip);
            prop_assert_eq!(&second.allocations[owner].pool, &allocation.pool);
        }
    }

    #[test]
    fn accepted_vrrp_settings_agree_on_every_director(cluster in cluster()) {
        let translation = translate(&cluster, &options());
        for (node, state) in states(&translation) {
            let Some(director) = &state.director else { continue };
            let mut by_vip = BTreeMap::new();
            let mut by_router = BTreeMap::new();
            for vip in &director.vips {
                let vrrp = vip.vrrp.as_ref().map(|v| (v.virtual_router_id, v.advert_interval_ms, v.preempt));
                let previous = by_vip.insert(vip.address, (vip.interface.clone(), vrrp));
                prop_assert!(previous.is_none(), "{}: VIP {} listed with two settings", node, vip.address);
                if let Some((router, advert, preempt)) = vrrp {
                    let key = (vip.interface.clone(), vip.address.is_ipv6(), router);
                    let settings = (advert, preempt);
                    prop_assert_eq!(*by_router.entry(key).or_insert(settings), settings, "{}", node);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A Service's addresses lie in a pool that admits its namespace, are no
    /// node's and not in the Service CIDR, are the ones it asked for when it
    /// asked; its directors are such a pool's; and no (address, port,
    /// protocol) is held by two owners, whatever their kinds.
    #[test]
    fn services_stay_within_their_pools_and_share_no_key_with_anything(
        (cluster, services) in (cluster(), load_balancers()),
    ) {
        let cluster = ClusterState { services, ..cluster };
        let translation = translate(&cluster, &options());
        let node_addresses: BTreeSet<IpAddr> = (0..NODES).map(|i| node_ip(i).parse().unwrap()).collect();
        let service_cidr: ipnet::IpNet = "192.168.2.0/31".parse().unwrap();
        let admitting = |namespace: &str, address: IpAddr| -> Vec<&VipPool> {
            cluster.vip_pools.iter().flatten()
                .filter(|p| admits(p, namespace, &cluster.namespaces))
                .filter(|p| p.spec.ranges().unwrap().iter().any(|r| r.contains(address)))
                .collect()
        };
        for service in &cluster.services {
            let key = (service.metadata.namespace.clone().unwrap(), service.metadata.name.clone().unwrap());
            let outcome = &translation.load_balancers[&key];
            if outcome.verdict != Verdict::Accepted {
                prop_assert!(outcome.addresses.is_empty());
                continue;
            }
            let asked = service.spec.as_ref().and_then(|s| s.load_balancer_ip.as_deref()).and_then(parse_ip);
            for &address in &outcome.addresses {
                prop_assert!(!admitting(&key.0, address).is_empty(), "{} of {:?} in no admitting pool", address, key);
                prop_assert!(!node_addresses.contains(&address), "{} is a node's", address);
                prop_assert!(!service_cidr.contains(&address), "{} in the Service CIDR", address);
                if let Some(asked) = asked {
                    prop_assert_eq!(address, asked);
                }
            }
        }
        let nodes: BTreeMap<String, &Node> =
            cluster.nodes.iter().map(|n| (n.metadata.name.clone().unwrap(), n)).collect();
        // (address, port, protocol) -> (kind, namespace, name) of each holder.
        type Key = (IpAddr, u16, String);
        type Holder = (String, String, String);
        let mut holders: BTreeMap<Key, BTreeSet<Holder>> = BTreeMap::new();
        for (node_name, state) in states(&translation) {
            for service in state.director.iter().flat_map(|d| &d.services) {
                let Some(address) = service.key.address else { continue };
                let owner = &service.owner;
                let kind = format!("{:?}", owner.kind);
                holders
                    .entry((address, service.key.port, format!("{:?}", service.key.protocol)))
                    .or_default()
                    .insert((kind, owner.namespace.clone(), owner.name.clone()));
                if owner.kind == OwnerKind::Service {
                    let selector_of = |pool: &VipPool| {
                        pool.spec.directors.as_ref().map(|d| d.node_selector.clone()).filter(|s| !s.is_empty())
                            .unwrap_or_else(|| [("lvs.dev/director".to_owned(), "true".to_owned())].into())
                    };
                    let pools = admitting(&owner.namespace, address);
                    prop_assert!(
                        pools.iter().any(|pool| labels_match(&selector_of(pool), nodes[&node_name])),
                        "{} directs Service {}/{} outside its pools", node_name, owner.namespace, owner.name
                    );
                }
            }
        }
        for (key, owners) in &holders {
            prop_assert_eq!(owners.len(), 1, "{:?} held by {:?}", key, owners);
        }
    }
}

#[test]
fn random_clusters_with_services_accept_and_refuse_them() {
    // Guards the generator of the Services' property: some are accepted (with
    // and without an address asked for), some refused for several reasons.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut accepted_asked, mut accepted_given) = (0, 0);
    let mut reasons = BTreeSet::new();
    for _ in 0..400 {
        let cluster = cluster().new_tree(&mut runner).unwrap().current();
        let services = load_balancers().new_tree(&mut runner).unwrap().current();
        let cluster = ClusterState { services, ..cluster };
        let translation = translate(&cluster, &options());
        for service in &cluster.services {
            let key = (service.metadata.namespace.clone().unwrap(), service.metadata.name.clone().unwrap());
            let outcome = &translation.load_balancers[&key];
            reasons.insert(outcome.verdict.reason());
            if outcome.verdict == Verdict::Accepted {
                match service.spec.as_ref().and_then(|s| s.load_balancer_ip.as_ref()) {
                    Some(_) => accepted_asked += 1,
                    None => accepted_given += 1,
                }
            }
        }
    }
    assert!(accepted_asked > 10 && accepted_given > 10, "{accepted_asked} {accepted_given}");
    for reason in ["NoPool", "VipNotInPool", "VipReserved", "ForwardingNotAllowed"] {
        assert!(reasons.contains(reason), "no Service refused {reason}: {reasons:?}");
    }
}

#[test]
fn random_clusters_reach_every_refusal() {
    // Guards the generators: the properties above are only as good as the
    // variety of clusters they see.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut reasons = BTreeSet::new();
    let (mut auto_accepted, mut shared, mut host_changes) = (0, 0, 0);
    for _ in 0..400 {
        let cluster = cluster().new_tree(&mut runner).unwrap().current();
        let translation: Translation = translate(&cluster, &options());
        reasons.extend(translation.verdicts.values().map(Verdict::reason));
        let accepted = |vs: &&VirtualService| translation.verdicts[&id(vs)] == Verdict::Accepted;
        auto_accepted += cluster
            .virtual_services
            .iter()
            .filter(accepted)
            .filter(|vs| vs.spec.vip.is_none() && vs.spec.fwmark.is_none())
            .count();
        let mut vips = BTreeMap::new();
        for allocation in translation.allocations.values().filter_map(|a| a.vip) {
            *vips.entry(allocation).or_insert(0) += 1;
        }
        shared += vips.values().filter(|&&n| n > 1).count();
        host_changes += states(&translation).values().filter(|s| s.real_server.is_some()).count();
    }
    let expected = [
        "Accepted",
        "Conflict",
        "DirectorsOutsidePool",
        "ForwardingNotAllowed",
        "FwmarkNotAllowed",
        "InterfaceNotAllowed",
        "NoAutoAssign",
        "NoPool",
        "PoolExhausted",
        "PoolNotFound",
        "RealServerNodesNotAllowed",
        "VipInUse",
        "VipNotInPool",
        "VipReserved",
        "VrrpConflict",
    ];
    for reason in expected {
        assert!(reasons.contains(reason), "no cluster gives {reason}: {reasons:?}");
    }
    assert!(auto_accepted > 50, "{auto_accepted} accepted services with an allocated VIP");
    assert!(shared > 5, "{shared} shared VIPs");
    assert!(host_changes > 20, "{host_changes} nodes made real servers");
}
