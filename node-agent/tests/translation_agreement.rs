//! One translation: for any set of VirtualServices, the desired state a
//! standalone host keeps is the LvsNode spec the controller's translation
//! gives the cluster node with the host's name, addresses and VRRP priority.
//!
//! What legitimately differs is kept out of the comparison:
//! - A standalone host knows no other nodes and no EndpointSlices, and directs
//!   every service: the VirtualServices here have no `realServerSelector`, no
//!   `backendService` and no `directors.nodeSelector`, so that the director
//!   label alone makes a cluster node a director.
//! - The controller cuts a node's state into objects: its chunks are
//!   assembled, and their revision (a hash of the objects' layout) is dropped;
//!   a standalone host writes no objects.
//! - A cluster node may direct a service and be one of its real servers, a
//!   standalone host is one or the other (`--role`). A director node is
//!   compared with `--role director`, a node that is no director with `--role
//!   real-server`; a director node that is also a real server has its
//!   director half compared with the one, its real-server half with the other.
//!   `--role auto` directs what the host does not serve, as no cluster node
//!   does: it is compared on the director nodes that serve nothing.
//!
//! The standalone state is built in one change here; that any sequence of
//! changes ends in the same state is local_state_properties.rs's property.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::core::v1::{Node, NodeAddress, NodeStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use lvs_agent::standalone::{LocalState, ManifestChange, Role};
use lvs_crds::{
    ClusterState, LvsNodeSpec, TranslateOptions, Translation, Verdict, VirtualService, VirtualServiceSpec,
    assemble,
    lvs_node::DirectorState,
    translate,
    translate::{DEFAULT_VRRP_PRIORITY, DIRECTOR_LABEL, ObjectId, VRRP_PRIORITY_ANNOTATION, object_id},
};
use proptest::{prelude::*, sample::select, strategy::ValueTree, test_runner::TestRunner};
use serde_json::{Value, json};

const NODES: usize = 4;

fn node_ips(i: usize) -> [String; 2] {
    [format!("10.0.0.{}", i + 1), format!("fd00::{}", i + 1)]
}

/// Node `n<i>` with both its addresses, a director or not, with or without a VRRP priority.
fn node(i: usize, director: bool, priority: Option<u8>) -> Node {
    let labels = director.then(|| [(DIRECTOR_LABEL.0.to_owned(), DIRECTOR_LABEL.1.to_owned())].into());
    let annotations = priority.map(|p| [(VRRP_PRIORITY_ANNOTATION.to_owned(), p.to_string())].into());
    let addresses = node_ips(i).map(|address| NodeAddress { type_: "InternalIP".to_owned(), address });
    Node {
        metadata: ObjectMeta { name: Some(format!("n{i}")), labels, annotations, ..ObjectMeta::default() },
        status: Some(NodeStatus { addresses: Some(addresses.to_vec()), ..NodeStatus::default() }),
        ..Node::default()
    }
}

fn nodes() -> impl Strategy<Value = Vec<Node>> {
    let one = |i: usize| {
        (any::<bool>(), select(vec![None, Some(50u8), Some(200)]))
            .prop_map(move |(director, priority)| node(i, director, priority))
    };
    (0..NODES).map(one).collect::<Vec<_>>()
}

/// A spec with its key from small pools, so that keys conflict and VIPs are
/// shared often (fwmark services of both protocols too: their claim ignores
/// the protocol, their key does not); real servers and sorry servers among the
/// nodes' addresses and two that are no node's; sometimes invalid (a DirectRouting
/// or Tunnel port mapping, a real server twice).
fn spec() -> impl Strategy<Value = VirtualServiceSpec> {
    let key = prop_oneof![
        4 => (select(vec!["192.168.1.1", "192.168.1.2", "fd00::100"]), select(vec![80u16, 443]))
            .prop_map(|(vip, port)| json!({"vip": vip, "port": port})),
        2 => (1u32..4).prop_map(|mark| json!({"fwmark": mark})),
    ];
    let real_server = (0..NODES + 2, prop::option::weighted(0.1, Just(8080u16)), 0u16..4);
    (
        key,
        select(vec!["TCP", "UDP"]),
        select(vec!["NAT", "DirectRouting", "Tunnel", "FullNAT"]),
        prop::collection::vec(real_server, 0..4),
        prop::option::weighted(0.2, 0..NODES + 2),
        prop::option::weighted(0.3, 1u8..4),
        any::<bool>(),
        prop::option::weighted(0.8, select(vec!["eth0", "eth1", "eth2"])),
    )
        .prop_map(|(key, protocol, forwarding, servers, sorry, vrid, sync, interface)| {
            let mut spec = key;
            let has_vip = spec.get("vip").is_some();
            let family = usize::from(spec["vip"].as_str().is_some_and(|vip| vip.contains(':')));
            let address = |i: usize| match i {
                0..NODES => node_ips(i)[family].clone(),
                _ => node_ips(i + 90)[family].clone(), // no node's
            };
            let servers: Vec<Value> = servers
                .into_iter()
                .map(|(i, port, weight)| match port {
                    Some(port) => json!({"address": address(i), "port": port, "weight": weight}),
                    None => json!({"address": address(i), "weight": weight}),
                })
                .collect();
            let object = spec.as_object_mut().unwrap();
            object.insert("protocol".into(), json!(protocol));
            object.insert("forwarding".into(), json!(forwarding));
            object.insert("realServers".into(), json!(servers));
            object.insert("connectionSync".into(), json!(sync));
            if let Some(i) = sorry {
                object.insert("sorryServer".into(), json!({"address": address(i)}));
            }
            // Failover needs a VIP.
            if let (Some(vrid), true) = (vrid, has_vip) {
                object.insert("failover".into(), json!({"vrrp": {"virtualRouterId": vrid}}));
            }
            if let Some(interface) = interface {
                object.insert("directors".into(), json!({"interface": interface}));
            }
            serde_json::from_value(spec).expect("a spec")
        })
}

/// VirtualServices in namespaces `a`, `b` or none (a manifest may name none),
/// created at one of a few seconds or without a timestamp (so that ages tie and
/// names decide).
fn virtual_services() -> impl Strategy<Value = Vec<VirtualService>> {
    let one = (select(vec![None, Some("a"), Some("b")]), prop::option::weighted(0.8, 0i64..3), spec());
    prop::collection::vec(one, 0..20).prop_map(|services| {
        let services = services.into_iter().enumerate();
        services
            .map(|(i, (namespace, created, spec))| {
                let mut vs = VirtualService::new(&format!("vs{i}"), spec);
                vs.metadata.namespace = namespace.map(str::to_owned);
                vs.metadata.creation_timestamp =
                    created.map(|second| Time(Timestamp::from_second(second).expect("a valid second")));
                vs
            })
            .collect()
    })
}

fn options() -> impl Strategy<Value = TranslateOptions> {
    // Small objects: a node's state comes in several chunks.
    prop::option::of(3000usize..8000).prop_map(|max_object_bytes| TranslateOptions {
        max_object_bytes: max_object_bytes.unwrap_or(TranslateOptions::default().max_object_bytes),
        ..TranslateOptions::default()
    })
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().expect("a named node")
}

fn is_director(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(DIRECTOR_LABEL.0).is_some_and(|v| v == DIRECTOR_LABEL.1))
}

/// The controller's state for `node`: its objects assembled, without their revision.
fn controller_spec(translation: &Translation, node: &str) -> LvsNodeSpec {
    let chunks: Vec<&LvsNodeSpec> =
        translation.lvs_nodes.iter().map(|o| &o.spec).filter(|spec| spec.node == node).collect();
    let whole = match chunks[..] {
        // No object: nothing to do there.
        [] => LvsNodeSpec { node: node.to_owned(), chunks: 1, ..LvsNodeSpec::default() },
        _ => assemble(chunks).expect("a node's chunks assemble"),
    };
    LvsNodeSpec { revision: String::new(), ..whole }
}

/// The state of a standalone host with `node`'s name, addresses and VRRP priority, in `role`.
fn standalone_spec(services: &[Arc<VirtualService>], node: &Node, role: Role) -> LvsNodeSpec {
    let mut state = LocalState::new(node_name(node), role);
    let priority = node.metadata.annotations.as_ref().and_then(|a| a.get(VRRP_PRIORITY_ANNOTATION));
    if let Some(priority) = priority {
        state = state.with_vrrp_priority(priority.parse().expect("a priority"));
    }
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let addresses: Vec<IpAddr> =
        addresses.into_iter().flatten().map(|a| a.address.parse().expect("an address")).collect();
    state.update(&ManifestChange { added: services.to_vec(), ..ManifestChange::default() }, &addresses);
    state.into_spec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_standalone_host_keeps_what_the_controller_gives_its_node(
        services in virtual_services(),
        nodes in nodes(),
        options in options(),
    ) {
        let cluster = ClusterState { virtual_services: services, nodes, ..ClusterState::default() };
        let translation = translate(&cluster, &options);
        let services: Vec<Arc<VirtualService>> = cluster.virtual_services.iter().cloned().map(Arc::new).collect();
        for node in &cluster.nodes {
            let name = node_name(node);
            let controller = controller_spec(&translation, name);
            match (is_director(node), controller.real_server.is_some()) {
                (false, _) => {
                    prop_assert_eq!(&standalone_spec(&services, node, Role::RealServer), &controller, "{}", name);
                }
                (true, false) => {
                    prop_assert_eq!(&standalone_spec(&services, node, Role::Director), &controller, "{}", name);
                    prop_assert_eq!(&standalone_spec(&services, node, Role::Auto), &controller, "{}", name);
                }
                (true, true) => {
                    let director = standalone_spec(&services, node, Role::Director);
                    let real_server = standalone_spec(&services, node, Role::RealServer);
                    prop_assert_eq!(&director.director, &controller.director, "{}", name);
                    prop_assert_eq!(&real_server.real_server, &controller.real_server, "{}", name);
                    prop_assert_eq!(director.real_server, None);
                    prop_assert_eq!(real_server.director, None);
                }
            }
        }
    }
}

/// Guards the generators: the property is only as good as the variety of sets it sees.
#[test]
fn random_sets_have_conflicts_shared_vips_missing_namespaces_and_real_servers() {
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut count = |what, happened: bool| *seen.entry(what).or_default() += usize::from(happened);
    const SETS: usize = 256;
    for _ in 0..SETS {
        let services = virtual_services().new_tree(&mut runner).unwrap().current();
        let nodes = nodes().new_tree(&mut runner).unwrap().current();
        let options = TranslateOptions { max_object_bytes: 3000, ..TranslateOptions::default() };
        let cluster = ClusterState { virtual_services: services, nodes, ..ClusterState::default() };
        let translation = translate(&cluster, &options);
        let by_id: BTreeMap<ObjectId, &VirtualService> =
            cluster.virtual_services.iter().map(|vs| (object_id(vs), vs)).collect();
        let verdicts = &translation.verdicts;
        let conflicts: Vec<(&ObjectId, &ObjectId)> = verdicts
            .iter()
            .filter_map(|(id, verdict)| match verdict {
                Verdict::Conflict { winner, .. } => Some((id, winner)),
                _ => None,
            })
            .collect();
        let without_namespace = |id: &ObjectId| id.0.is_empty();
        count("a conflict", !conflicts.is_empty());
        count(
            "a conflict of a VirtualService without a namespace and one with, of the same age",
            conflicts.iter().any(|(loser, winner)| {
                without_namespace(loser) != without_namespace(winner)
                    && by_id[*loser].metadata.creation_timestamp == by_id[*winner].metadata.creation_timestamp
            }),
        );
        count("an invalid VirtualService", verdicts.values().any(|v| matches!(v, Verdict::Invalid(_))));
        count(
            "an accepted VirtualService without a namespace",
            verdicts.iter().any(|(id, verdict)| without_namespace(id) && *verdict == Verdict::Accepted),
        );

        let states: Vec<(&Node, LvsNodeSpec)> =
            cluster.nodes.iter().map(|node| (node, controller_spec(&translation, node_name(node)))).collect();
        let directors: Vec<&DirectorState> =
            states.iter().filter_map(|(_, spec)| spec.director.as_ref()).collect();
        let real_servers: Vec<&Node> =
            states.iter().filter(|(_, spec)| spec.real_server.is_some()).map(|(node, _)| *node).collect();
        count(
            "a VIP shared by services",
            directors.iter().any(|d| {
                let vips: Vec<IpAddr> = d.services.iter().filter_map(|s| s.key.address).collect();
                (1..vips.len()).any(|i| vips[..i].contains(&vips[i]))
            }),
        );
        count(
            "synced services naming different interfaces, fwmark services of both protocols among them \
             (the translation merges them in key order, not claim order)",
            directors.iter().any(|d| {
                let synced: Vec<&VirtualServiceSpec> = d
                    .services
                    .iter()
                    .map(|s| &by_id[&(s.owner.namespace.clone(), s.owner.name.clone())].spec)
                    .filter(|spec| spec.connection_sync && spec.directors.is_some())
                    .collect();
                let interfaces: BTreeSet<_> =
                    synced.iter().map(|spec| &spec.directors.as_ref().unwrap().interface).collect();
                let fwmark_protocols: BTreeSet<_> =
                    synced.iter().filter(|spec| spec.fwmark.is_some()).map(|spec| spec.protocol).collect();
                interfaces.len() > 1 && fwmark_protocols.len() > 1
            }),
        );
        count("real servers on several nodes", real_servers.len() > 1);
        count("a director that is a real server", real_servers.iter().any(|node| is_director(node)));
        count(
            "a director with a VRRP priority of its own",
            directors
                .iter()
                .flat_map(|d| &d.vips)
                .any(|vip| vip.vrrp.as_ref().is_some_and(|vrrp| vrrp.priority != DEFAULT_VRRP_PRIORITY)),
        );
        // The property's three ways of comparing a node, each taken.
        count(
            "a node that is no director, a real server (compared with --role real-server)",
            states.iter().any(|(node, spec)| !is_director(node) && spec.real_server.is_some()),
        );
        count(
            "a director that is no real server (compared with --role director and auto)",
            states.iter().any(|(node, spec)| is_director(node) && spec.real_server.is_none()),
        );
        count("a node in several chunks", translation.lvs_nodes.iter().any(|o| o.spec.chunks > 1));
    }
    println!("{seen:#?}");
    for (what, sets) in seen {
        assert!(sets >= SETS / 32, "{what}: in {sets} of {SETS} sets");
    }
}
