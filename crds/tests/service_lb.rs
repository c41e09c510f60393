//! Services of type LoadBalancer and our class through the translation, one
//! semantic per test, then properties over random clusters.

mod cluster;

use std::{collections::BTreeMap, net::IpAddr};

use cluster::{director, node, state, states, virtual_service};
use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use lvs_crds::{
    ClusterState, TranslateOptions, Translation, Verdict, VipPool,
    lvs_node::{IpvsService, OwnerKind, RealServerMode},
    translate,
    translate::LoadBalancerOutcome,
    virtual_service::{Forwarding, Protocol, Scheduler},
};
use proptest::prelude::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn id(name: &str) -> (String, String) {
    ("default".to_owned(), name.to_owned())
}

/// A Service `default/name` created at second `created`, from YAML of its
/// `metadata.annotations` (a flow map, may be `{}`) and `spec`.
fn service(name: &str, created: i64, annotations: &str, spec: &str) -> Service {
    let mut service: Service = lvs_crds::yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: default, uid: uid-{name}, annotations: {annotations}}}\nspec: {spec}"
    ))
    .expect("a Service in YAML");
    service.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    service
}

/// `web`: type LoadBalancer of our class, asking for 192.168.16.200, ports
/// http 80 -> http (8080 on the pods) and dns 53/UDP, plus `extra` spec fields.
fn web(annotations: &str, extra: &str) -> Service {
    service(
        "web",
        10,
        annotations,
        &format!(
            "{{type: LoadBalancer, loadBalancerClass: lvs.dev/ipvs, loadBalancerIP: 192.168.16.200, {extra} \
             ports: [{{name: http, port: 80, targetPort: http}}, {{name: dns, port: 53, protocol: UDP}}]}}"
        ),
    )
}

/// An EndpointSlice of `default/web` from YAML of its endpoints, with the ports
/// http 8080/TCP and dns 53/UDP.
fn slice(name: &str, address_type: &str, endpoints: &str) -> EndpointSlice {
    lvs_crds::yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: {address_type}
endpoints: {endpoints}
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 53, protocol: UDP}}]"
    ))
    .expect("an EndpointSlice in YAML")
}

/// Two pods on web1 and web2, one not ready on web2.
fn pods() -> EndpointSlice {
    slice(
        "web-1",
        "IPv4",
        "[{addresses: [10.244.1.5], nodeName: web1, conditions: {ready: true}},
          {addresses: [10.244.2.6], nodeName: web2},
          {addresses: [10.244.2.7], nodeName: web2, conditions: {ready: false}}]",
    )
}

fn cluster(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterState {
    ClusterState {
        nodes: vec![
            director("lvs1", "10.0.0.1"),
            director("lvs2", "10.0.0.2"),
            node("web1", &[], &["10.0.0.21", "fd00::21"]),
            node("web2", &[], &["10.0.0.22"]),
        ],
        endpoint_slices: slices,
        services,
        ..ClusterState::default()
    }
}

fn run(state: ClusterState) -> Translation {
    translate(&state, &TranslateOptions::default())
}

fn outcome<'a>(t: &'a Translation, name: &str) -> &'a LoadBalancerOutcome {
    t.load_balancers.get(&id(name)).unwrap_or_else(|| panic!("no outcome for {name}: {:?}", t.load_balancers))
}

fn services_of(t: &Translation, node: &str) -> Vec<IpvsService> {
    let director = state(t, node).director.unwrap_or_default();
    director.services.iter().map(|s| (**s).clone()).collect()
}

/// (protocol, vip, port) -> [(address, port)] of a node's services.
fn table(t: &Translation, node: &str) -> BTreeMap<String, Vec<String>> {
    services_of(t, node)
        .iter()
        .map(|s| {
            let key = format!("{:?} {}:{}", s.key.protocol, s.key.address.unwrap(), s.key.port);
            (key, s.destinations.iter().map(|d| format!("{}:{}", d.address, d.port)).collect())
        })
        .collect()
}

fn messages(verdict: &Verdict) -> String {
    verdict.message()
}

#[test]
fn a_service_of_our_class_becomes_one_ipvs_service_per_port_with_its_ready_endpoints() {
    let t = run(cluster(vec![web("{}", "")], vec![pods()]));
    assert_eq!(
        outcome(&t, "web"),
        &LoadBalancerOutcome { verdict: Verdict::Accepted, addresses: vec![ip("192.168.16.200")] }
    );
    assert!(t.verdicts.is_empty(), "Services have no VirtualService verdict");
    let expected = BTreeMap::from([
        (
            "TCP 192.168.16.200:80".to_owned(),
            vec!["10.244.1.5:8080".to_owned(), "10.244.2.6:8080".to_owned()],
        ),
        ("UDP 192.168.16.200:53".to_owned(), vec!["10.244.1.5:53".to_owned(), "10.244.2.6:53".to_owned()]),
    ]);
    assert_eq!(table(&t, "lvs1"), expected);
    assert_eq!(table(&t, "lvs2"), expected);
    let service = &services_of(&t, "lvs1")[0];
    assert_eq!(
        (service.owner.kind, service.owner.name.as_str(), service.owner.uid.as_str()),
        (OwnerKind::Service, "web", "uid-web")
    );
    // Cluster policy: FullNAT by default, wlc; the directors masquerade.
    assert_eq!(
        (service.destinations[0].forwarding, service.scheduler),
        (Forwarding::FullNat, Scheduler::Wlc)
    );
    let director = state(&t, "lvs1").director.unwrap();
    assert!(director.full_nat_masquerade && director.ip_forward);
    assert_eq!(director.vips.iter().map(|v| v.address).collect::<Vec<_>>(), [ip("192.168.16.200")]);
    // Pods are not nodes: no node binds the VIP.
    assert!(states(&t).values().all(|s| s.real_server.is_none()));
}

#[test]
fn other_classes_and_classless_services_are_left_alone_unless_we_are_the_default() {
    let other = service(
        "other",
        1,
        "{}",
        "{type: LoadBalancer, loadBalancerClass: example.com/lb, loadBalancerIP: 192.168.16.1, ports: [{port: 80}]}",
    );
    let classless = service(
        "classless",
        1,
        "{}",
        "{type: LoadBalancer, loadBalancerIP: 192.168.16.2, ports: [{port: 80}]}",
    );
    let cluster_ip =
        service("internal", 1, "{}", "{type: ClusterIP, loadBalancerIP: 192.168.16.3, ports: [{port: 80}]}");
    let state = cluster(vec![other, classless, cluster_ip], vec![]);

    let t = run(state.clone());
    assert!(t.load_balancers.is_empty() && t.lvs_nodes.is_empty(), "{t:?}");

    let default = TranslateOptions { default_load_balancer_class: true, ..TranslateOptions::default() };
    let t = translate(&state, &default);
    assert_eq!(t.load_balancers.keys().collect::<Vec<_>>(), [&id("classless")]);
    assert_eq!(table(&t, "lvs1").keys().collect::<Vec<_>>(), ["TCP 192.168.16.2:80"]);
}

#[test]
fn a_service_without_an_address_is_refused_with_no_address() {
    let mut no_address = web("{}", "");
    no_address.spec.as_mut().unwrap().load_balancer_ip = None;
    let t = run(cluster(vec![no_address], vec![pods()]));
    let outcome = outcome(&t, "web");
    assert_eq!((&outcome.verdict, outcome.verdict.reason()), (&Verdict::NoAddress, "NoAddress"));
    assert!(outcome.addresses.is_empty());
    assert!(messages(&outcome.verdict).contains("lvs.dev/vip"), "{}", messages(&outcome.verdict));
    assert!(t.lvs_nodes.is_empty());
}

#[test]
fn the_annotation_requests_an_address_too() {
    let mut annotated = web("{lvs.dev/vip: 192.168.16.201}", "");
    annotated.spec.as_mut().unwrap().load_balancer_ip = None;
    let t = run(cluster(vec![annotated], vec![pods()]));
    assert_eq!(outcome(&t, "web").addresses, [ip("192.168.16.201")]);
}

#[test]
fn local_traffic_policy_is_directed_by_directors_with_ready_local_endpoints_to_those_alone() {
    let local_pods = slice(
        "web-1",
        "IPv4",
        "[{addresses: [10.244.0.5], nodeName: lvs1}, {addresses: [10.244.1.5], nodeName: web1},
          {addresses: [10.244.9.9], nodeName: lvs2, conditions: {ready: false}}]",
    );
    let t = run(cluster(vec![web("{}", "externalTrafficPolicy: Local,")], vec![local_pods]));
    assert_eq!(outcome(&t, "web").verdict, Verdict::Accepted);
    assert_eq!(
        table(&t, "lvs1"),
        BTreeMap::from([
            ("TCP 192.168.16.200:80".to_owned(), vec!["10.244.0.5:8080".to_owned()]),
            ("UDP 192.168.16.200:53".to_owned(), vec!["10.244.0.5:53".to_owned()]),
        ])
    );
    // lvs2's only endpoint is not ready: it neither directs nor holds the VIP.
    assert!(!states(&t).contains_key("lvs2"), "{:?}", states(&t).keys());
    // NAT by default: the client's address is kept, replies pass through the director's node.
    assert_eq!(services_of(&t, "lvs1")[0].destinations[0].forwarding, Forwarding::Nat);
}

#[test]
fn client_ip_affinity_is_persistence_with_its_timeout() {
    let t = run(cluster(vec![web("{}", "sessionAffinity: ClientIP,")], vec![pods()]));
    let persistence = services_of(&t, "lvs1")[0].persistence.clone().expect("persistent");
    assert_eq!((persistence.timeout_seconds, persistence.prefix_length), (10800, 32));

    let configured =
        web("{}", "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}},");
    let t = run(cluster(vec![configured], vec![pods()]));
    assert_eq!(services_of(&t, "lvs1")[0].persistence.as_ref().unwrap().timeout_seconds, 60);

    let t = run(cluster(vec![web("{}", "sessionAffinity: None,")], vec![pods()]));
    assert_eq!(services_of(&t, "lvs1")[0].persistence, None);
}

#[test]
fn dual_stack_gets_one_vip_per_family_with_that_familys_endpoints() {
    let annotations = "{lvs.dev/vip: '192.168.16.200, 2001:db8::200'}";
    let both = "ipFamilies: [IPv4, IPv6], ipFamilyPolicy: PreferDualStack,";
    let mut dual = web(annotations, both);
    dual.spec.as_mut().unwrap().load_balancer_ip = None;
    let v6 = slice("web-2", "IPv6", "[{addresses: ['fd00::1:5'], nodeName: web1}]");
    let t = run(cluster(vec![dual], vec![pods(), v6]));
    assert_eq!(outcome(&t, "web").addresses, [ip("192.168.16.200"), ip("2001:db8::200")]);
    let table = table(&t, "lvs1");
    assert_eq!(table["TCP 2001:db8::200:80"], ["fd00::1:5:8080"]);
    assert_eq!(table["TCP 192.168.16.200:80"].len(), 2);
    assert_eq!(table.len(), 4);

    // RequireDualStack with an IPv4 address only: no address.
    let require = "ipFamilies: [IPv4, IPv6], ipFamilyPolicy: RequireDualStack,";
    let t = run(cluster(vec![web("{}", require)], vec![pods()]));
    assert_eq!(outcome(&t, "web").verdict, Verdict::NoAddress);
    // PreferDualStack makes do with one.
    let t = run(cluster(vec![web("{}", both)], vec![pods()]));
    assert_eq!(outcome(&t, "web").addresses, [ip("192.168.16.200")]);
    // A single-stack IPv4 Service cannot ask for an IPv6 address.
    let t = run(cluster(vec![web("{lvs.dev/vip: '2001:db8::200'}", "ipFamilies: [IPv4],")], vec![]));
    let message = messages(&outcome(&t, "web").verdict);
    assert!(message.contains("2001:db8::200: is IPv6, the Service's ipFamilies are [IPv4]"), "{message}");
}

#[test]
fn annotations_set_the_scheduler_and_forwarding_and_bad_values_are_refused_by_name() {
    let t = run(cluster(
        vec![web("{lvs.dev/scheduler: mh, lvs.dev/forwarding: NAT, lvs.dev/vrrp-router-id: '51'}", "")],
        vec![pods()],
    ));
    let service = &services_of(&t, "lvs1")[0];
    assert_eq!((service.scheduler, service.destinations[0].forwarding), (Scheduler::Mh, Forwarding::Nat));
    let vrrp = state(&t, "lvs1").director.unwrap().vips[0].vrrp.clone().expect("VRRP");
    assert_eq!((vrrp.virtual_router_id, vrrp.priority), (51, 100));

    let bad =
        web("{lvs.dev/scheduler: fastest, lvs.dev/forwarding: Maglev, lvs.dev/vrrp-router-id: '0'}", "");
    let t = run(cluster(vec![bad], vec![pods()]));
    let verdict = &outcome(&t, "web").verdict;
    assert_eq!(verdict.reason(), "Invalid");
    let message = messages(verdict);
    for expected in [
        "metadata.annotations[lvs.dev/forwarding]: Maglev: unknown forwarding method",
        "metadata.annotations[lvs.dev/scheduler]: fastest: unknown scheduler",
        "metadata.annotations[lvs.dev/vrrp-router-id]: 0: must be a number from 1 to 255",
    ] {
        assert!(message.contains(expected), "{message}");
    }
    assert!(t.lvs_nodes.is_empty());
}

#[test]
fn source_ranges_are_refused_rather_than_ignored() {
    let t = run(cluster(vec![web("{}", "loadBalancerSourceRanges: [10.1.0.0/16],")], vec![pods()]));
    let message = messages(&outcome(&t, "web").verdict);
    assert!(message.starts_with("spec.loadBalancerSourceRanges: 10.1.0.0/16: not supported"), "{message}");
}

#[test]
fn direct_routing_reaches_host_network_endpoints_only() {
    let to_pods = run(cluster(vec![web("{lvs.dev/forwarding: DirectRouting}", "")], vec![pods()]));
    let message = messages(&outcome(&to_pods, "web").verdict);
    assert!(
        message.contains("metadata.annotations[lvs.dev/forwarding]: DirectRouting: endpoint 10.244.1.5 is a pod's address, not a node's"),
        "{message}"
    );

    // hostNetwork pods: their addresses are their nodes', serving the Service's own ports.
    let host_network = lvs_crds::yaml::from_str::<EndpointSlice>(
        "metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.21], nodeName: web1}, {addresses: [10.0.0.22], nodeName: web2}]
ports: [{name: http, port: 80, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]",
    )
    .unwrap();
    let t = run(cluster(vec![web("{lvs.dev/forwarding: DirectRouting}", "")], vec![host_network.clone()]));
    assert_eq!(outcome(&t, "web").verdict, Verdict::Accepted);
    for real_server in ["web1", "web2"] {
        let vips = state(&t, real_server).real_server.expect("binds the VIP").vips;
        assert_eq!(
            (vips[0].address, vips[0].mode, vips[0].owner.kind),
            (ip("192.168.16.200"), RealServerMode::DirectRouting, OwnerKind::Service)
        );
    }

    // The same endpoints on another port: DirectRouting cannot map it.
    let mut mapped = host_network;
    mapped.ports.as_mut().unwrap()[0].port = Some(8080);
    let t = run(cluster(vec![web("{lvs.dev/forwarding: Tunnel}", "")], vec![mapped]));
    let message = messages(&outcome(&t, "web").verdict);
    assert!(
        message
            .contains("endpoint 10.0.0.21 serves port 8080, the Service port is 80: Tunnel cannot map ports"),
        "{message}"
    );
}

#[test]
fn a_node_address_never_becomes_a_vip() {
    let mut on_node = web("{}", "");
    on_node.spec.as_mut().unwrap().load_balancer_ip = Some("10.0.0.21".into());
    let t = run(cluster(vec![on_node], vec![pods()]));
    let verdict = &outcome(&t, "web").verdict;
    assert_eq!(verdict, &Verdict::VipIsNodeAddress { vip: "10.0.0.21".into(), node: "web1".into() });
    assert_eq!(
        (verdict.reason(), messages(verdict).as_str()),
        ("VipNotAllowed", "vip 10.0.0.21 is an address of node web1")
    );
    assert!(t.lvs_nodes.is_empty());
}

/// The administrator's pool for namespace `default`: 192.168.16.200-209,
/// directors by label, NAT and FullNAT.
fn pool() -> VipPool {
    lvs_crds::yaml::from_str(
        "apiVersion: lvs.dev/v1alpha1\nkind: VipPool\nmetadata: {name: lab}\n\
         spec: {addresses: [192.168.16.200-192.168.16.209], namespaces: [default], forwardingMethods: [NAT, FullNAT]}",
    )
    .unwrap()
}

/// With pools (the cluster mode), a Service's address is the allocator's:
/// a requested one must lie in an admitting pool, one without a request gets
/// the pool's first free address, and the pool's rules bind it.
#[test]
fn with_pools_services_take_their_addresses_and_bounds_from_the_pool() {
    let pooled = |services: Vec<Service>| ClusterState {
        vip_pools: Some(vec![pool()]),
        ..cluster(services, vec![pods()])
    };
    // Requested, inside the pool: granted.
    let t = run(pooled(vec![web("{}", "")]));
    assert_eq!(outcome(&t, "web").verdict, Verdict::Accepted);
    assert_eq!(outcome(&t, "web").addresses, [ip("192.168.16.200")]);
    assert_eq!(t.pools["lab"].used, 1);

    // Requested, outside every admitting pool: refused, by the pool's reason.
    let mut outside = web("{}", "");
    outside.spec.as_mut().unwrap().load_balancer_ip = Some("192.168.99.1".into());
    let t = run(pooled(vec![outside]));
    assert_eq!(outcome(&t, "web").verdict.reason(), "VipNotInPool");
    assert!(t.lvs_nodes.is_empty());

    // No request: the pool's first free address.
    let mut unrequested = web("{}", "");
    unrequested.spec.as_mut().unwrap().load_balancer_ip = None;
    let t = run(pooled(vec![unrequested]));
    assert_eq!(outcome(&t, "web").addresses, [ip("192.168.16.200")]);

    // A forwarding method the pool does not allow refuses the Service.
    let t = run(pooled(vec![web(r#"{lvs.dev/forwarding: DirectRouting}"#, "")]));
    assert_ne!(outcome(&t, "web").verdict, Verdict::Accepted);

    // Another namespace's Service: no pool admits it.
    let mut elsewhere = web("{}", "");
    elsewhere.metadata.namespace = Some("other".into());
    let t = run(pooled(vec![elsewhere]));
    let verdict = &t.load_balancers[&("other".to_owned(), "web".to_owned())].verdict;
    assert_eq!(verdict.reason(), "NoPool");
}

#[test]
fn the_older_of_a_service_and_a_virtual_service_wins_a_key_and_the_loser_is_told_which_kind() {
    let vs = |created| {
        virtual_service(
            "default",
            "web",
            created,
            "{vip: 192.168.16.200, port: 53, protocol: UDP, realServers: [{address: 10.0.0.21}]}",
        )
    };

    // The VirtualService is older: the Service is refused whole (its TCP port is free).
    let mut state = cluster(vec![web("{}", "")], vec![pods()]);
    state.virtual_services = vec![vs(1)];
    let t = run(state.clone());
    assert_eq!(t.verdicts[&id("web")], Verdict::Accepted);
    assert_eq!(
        outcome(&t, "web").verdict,
        Verdict::Conflict {
            winner: id("web"),
            winner_kind: OwnerKind::VirtualService,
            key: "UDP 192.168.16.200:53".into()
        }
    );
    assert!(messages(&outcome(&t, "web").verdict).contains("older VirtualService default/web"));
    assert_eq!(table(&t, "lvs1").keys().collect::<Vec<_>>(), ["UDP 192.168.16.200:53"]);
    assert_eq!(services_of(&t, "lvs1")[0].owner.kind, OwnerKind::VirtualService);

    // The Service is older (created at 10): the VirtualService loses.
    state.virtual_services = vec![vs(20)];
    let t = run(state);
    assert_eq!(outcome(&t, "web").verdict, Verdict::Accepted);
    assert_eq!(
        t.verdicts[&id("web")],
        Verdict::Conflict {
            winner: id("web"),
            winner_kind: OwnerKind::Service,
            key: "UDP 192.168.16.200:53".into()
        }
    );
}

/// VRRP settings are judged across kinds, per director and oldest first: a
/// Service (its router ID from the annotation, advert interval 1000 ms)
/// contradicting an older VirtualService is refused whole, with the
/// VirtualService named; an older Service wins over a newer VirtualService.
#[test]
fn a_vrrp_conflict_between_a_service_and_a_virtual_service_refuses_the_newer_alone() {
    let vs = |created, advert| {
        virtual_service(
            "default",
            "vrrp",
            created,
            &format!(
                "{{vip: 192.168.16.205, port: 80, forwarding: NAT, realServers: [{{address: 10.0.0.21}}],
                   failover: {{vrrp: {{virtualRouterId: 51, advertIntervalMs: {advert}}}}}}}"
            ),
        )
    };
    let service = |name: &str, created, annotations: &str| {
        let mut service = web(annotations, "");
        service.metadata.name = Some(name.into());
        service.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        service.spec.as_mut().unwrap().load_balancer_ip = None;
        service
    };
    let mut cluster = ClusterState {
        vip_pools: Some(vec![pool()]),
        ..self::cluster(
            vec![
                // Router 51 at another interval than the older VirtualService's: refused.
                service("clash", 10, "{lvs.dev/forwarding: NAT, lvs.dev/vrrp-router-id: '51'}"),
                // Its own router: served.
                service("own", 11, "{lvs.dev/forwarding: NAT, lvs.dev/vrrp-router-id: '52'}"),
            ],
            vec![pods()],
        )
    };
    cluster.virtual_services = vec![vs(1, 500)];
    let t = run(cluster.clone());
    assert_eq!(t.verdicts[&id("vrrp")], Verdict::Accepted);
    let clash = &outcome(&t, "clash").verdict;
    assert_eq!(clash.reason(), "VrrpConflict");
    assert!(
        clash.message().contains(
            "VRRP router 51 (the route's interface) is used by the older VirtualService default/vrrp"
        ),
        "{}",
        clash.message()
    );
    assert!(outcome(&t, "clash").addresses.is_empty());
    assert_eq!(outcome(&t, "own").verdict, Verdict::Accepted);
    let own = outcome(&t, "own").addresses[0];
    let vips: Vec<(IpAddr, Option<u8>)> = (state(&t, "lvs1").director.unwrap().vips.iter())
        .map(|v| (v.address, v.vrrp.as_ref().map(|v| v.virtual_router_id)))
        .collect();
    assert_eq!(vips, [(own, Some(52)), (ip("192.168.16.205"), Some(51))]);
    let owners: Vec<(OwnerKind, String)> =
        services_of(&t, "lvs1").iter().map(|s| (s.owner.kind, s.owner.name.clone())).collect();
    assert!(!owners.contains(&(OwnerKind::Service, "clash".into())), "{owners:?}");

    // The Service older than the VirtualService: the VirtualService is refused.
    cluster.virtual_services = vec![vs(20, 500)];
    let t = run(cluster);
    assert_eq!(outcome(&t, "clash").verdict, Verdict::Accepted);
    let refused = &t.verdicts[&id("vrrp")];
    assert_eq!(refused.reason(), "VrrpConflict");
    assert!(refused.message().contains("older Service default/clash"), "{}", refused.message());
}

#[test]
fn two_services_requesting_one_address_the_older_wins() {
    let mut newer = web("{}", "");
    newer.metadata.name = Some("newer".into());
    newer.metadata.creation_timestamp = Some(Time(Timestamp::from_second(99).unwrap()));
    let t = run(cluster(vec![newer, web("{}", "")], vec![pods()]));
    assert_eq!(outcome(&t, "web").verdict, Verdict::Accepted);
    assert_eq!(outcome(&t, "newer").verdict.reason(), "Conflict");
    assert!(messages(&outcome(&t, "newer").verdict).contains("older Service default/web"));
    assert!(services_of(&t, "lvs1").iter().all(|s| s.owner.name == "web"));
}

// Properties over random clusters: Services of random classes, requests,
// ports and policies, with VirtualServices on the same addresses.

const VIPS: [&str; 3] = ["192.168.16.200", "192.168.16.201", "10.0.0.21"];

fn arb_service(index: usize) -> impl Strategy<Value = Service> {
    (
        prop::sample::select(vec!["lvs.dev/ipvs", "example.com/lb", ""]),
        prop::option::of(prop::sample::select(VIPS.to_vec())),
        prop::collection::btree_set(prop::sample::select(vec![53u16, 80, 443]), 1..3),
        any::<bool>(),
        prop::sample::select(vec!["", "NAT", "FullNAT", "DirectRouting", "Bogus"]),
        0i64..4,
    )
        .prop_map(move |(class, vip, ports, local, forwarding, created)| {
            let class = if class.is_empty() { String::new() } else { format!("loadBalancerClass: {class},") };
            let vip = vip.map(|v| format!("loadBalancerIP: {v},")).unwrap_or_default();
            let policy = if local { "externalTrafficPolicy: Local," } else { "" };
            let ports =
                ports.iter().map(|p| format!("{{name: p{p}, port: {p}}}")).collect::<Vec<_>>().join(", ");
            let annotations = if forwarding.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{lvs.dev/forwarding: {forwarding}}}")
            };
            service(
                &format!("s{index}"),
                created,
                &annotations,
                &format!("{{type: LoadBalancer, {class} {vip} {policy} ports: [{ports}]}}"),
            )
        })
}

fn arb_cluster() -> impl Strategy<Value = ClusterState> {
    let services = (0..4usize).map(arb_service).collect::<Vec<_>>();
    let virtual_services = prop::collection::vec(
        (prop::sample::select(VIPS[..2].to_vec()), prop::sample::select(vec![53u16, 80]), 0i64..4),
        0..3,
    );
    (services, virtual_services).prop_map(|(services, vss)| {
        let mut state = cluster(services.clone(), vec![]);
        state.endpoint_slices = services
            .iter()
            .map(|s| {
                let name = s.metadata.name.clone().unwrap();
                let ports = s.spec.as_ref().unwrap().ports.iter().flatten().map(|p| format!("{{name: p{0}, port: {0}}}", p.port)).collect::<Vec<_>>().join(", ");
                lvs_crds::yaml::from_str(&format!(
                    "metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
endpoints: [{{addresses: [10.244.1.5], nodeName: lvs1}}, {{addresses: [10.0.0.22], nodeName: web2}}]
ports: [{ports}]"
                ))
                .unwrap()
            })
            .collect();
        state.virtual_services = vss
            .iter()
            .enumerate()
            .map(|(i, (vip, port, created))| virtual_service("default", &format!("vs{i}"), *created, &format!("{{vip: {vip}, port: {port}, forwarding: NAT, realServers: [{{address: 10.0.0.21}}]}}")))
            .collect();
        state
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the cluster: no node address is ever a director's VIP; no
    /// two owners hold one key on a node; each accepted Service holds just
    /// the address it requested; Services of other classes get no outcome.
    #[test]
    fn services_never_take_a_node_address_or_anothers_key(state in arb_cluster()) {
        let t = run(state.clone());
        let node_addresses: Vec<IpAddr> = state.nodes.iter().flat_map(|n| n.status.iter().flat_map(|s| s.addresses.iter().flatten())).map(|a| ip(&a.address)).collect();
        for (node, spec) in states(&t) {
            let Some(director) = spec.director else { continue };
            for vip in &director.vips {
                prop_assert!(!node_addresses.contains(&vip.address), "{node} holds node address {}", vip.address);
            }
            let mut owners: BTreeMap<String, (OwnerKind, String)> = BTreeMap::new();
            for service in &director.services {
                let key = format!("{:?}", service.key);
                let owner = (service.owner.kind, service.owner.name.clone());
                prop_assert_eq!(owners.insert(key, owner.clone()).unwrap_or(owner.clone()), owner);
            }
        }
        for service in &state.services {
            let name = service.metadata.name.clone().unwrap();
            let spec = service.spec.as_ref().unwrap();
            let ours = spec.load_balancer_class.as_deref() == Some("lvs.dev/ipvs");
            prop_assert_eq!(t.load_balancers.contains_key(&id(&name)), ours);
            if let Some(outcome) = t.load_balancers.get(&id(&name)).filter(|o| o.verdict == Verdict::Accepted) {
                prop_assert_eq!(&outcome.addresses, &vec![ip(spec.load_balancer_ip.as_deref().unwrap())]);
            }
        }
    }

    /// The same objects in another order give the same translation.
    #[test]
    fn services_translate_the_same_in_any_order(state in arb_cluster()) {
        let mut reversed = state.clone();
        reversed.services.reverse();
        reversed.endpoint_slices.reverse();
        reversed.virtual_services.reverse();
        prop_assert_eq!(run(state), run(reversed));
    }
}

#[test]
fn the_protocol_of_each_port_is_kept() {
    let t = run(cluster(vec![web("{}", "")], vec![pods()]));
    let keys: Vec<(Protocol, u16)> =
        services_of(&t, "lvs1").iter().map(|s| (s.key.protocol, s.key.port)).collect();
    assert_eq!(keys, [(Protocol::UDP, 53), (Protocol::TCP, 80)]);
}

#[test]
fn the_generator_makes_every_outcome() {
    // Guards the generator: the properties are only as good as the variety
    // of clusters they see.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut reasons = std::collections::BTreeSet::new();
    let (mut local, mut vs_lost) = (0, 0);
    for _ in 0..64 {
        let state = arb_cluster().new_tree(&mut runner).unwrap().current();
        let t = run(state.clone());
        reasons.extend(t.load_balancers.values().map(|o| o.verdict.reason()));
        vs_lost += t.verdicts.values().filter(|v| v.reason() == "Conflict").count();
        local += state
            .services
            .iter()
            .filter(|s| s.spec.as_ref().unwrap().external_traffic_policy.is_some())
            .count();
    }
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        ["Accepted", "Conflict", "Invalid", "NoAddress", "VipNotAllowed"]
    );
    assert!(local > 0 && vs_lost > 0, "local {local}, VirtualServices losing {vs_lost}");
}

#[test]
fn the_request_tells_an_allocator_everything_it_needs() {
    use lvs_crds::{service_lb, virtual_service::AddressFamily};
    let mut service = web(
        "{lvs.dev/pool: public, lvs.dev/vip: '2001:db8::200'}",
        "ipFamilies: [IPv6, IPv4], ipFamilyPolicy: RequireDualStack,",
    );
    service.status = Some(
        lvs_crds::yaml::from_str("loadBalancer: {ingress: [{ip: 192.168.16.7, ipMode: Proxy}]}").unwrap(),
    );
    let request = service_lb::request(&service).unwrap();
    assert_eq!(request.id, id("web"));
    assert_eq!(request.families, [AddressFamily::IPv6, AddressFamily::IPv4]);
    assert!(request.require_every_family);
    assert_eq!(request.requested, [ip("192.168.16.200"), ip("2001:db8::200")]);
    assert_eq!(request.pool.as_deref(), Some("public"));
    assert_eq!(request.previous, [ip("192.168.16.7")]);
    assert_eq!(request.ports, [(Protocol::TCP, 80), (Protocol::UDP, 53)]);

    // Two addresses of one family, and a word that is no address.
    let bad = web("{lvs.dev/vip: '192.168.16.201, not-an-ip'}", "");
    let errors: Vec<String> =
        service_lb::request(&bad).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "metadata.annotations[lvs.dev/vip]: not-an-ip: not an IP address",
            "requested addresses: 192.168.16.200, 192.168.16.201: at most one address per IP family",
        ]
    );
}
