//! The Service flow against the mock API server: each test lists the exact
//! calls the controller must make for a Service of type LoadBalancer, in
//! order, and checks what it wrote.

use k8s_openapi::api::core::v1::ServiceStatus;
use lvs_crds::translate::LoadBalancerOutcome;
use pretty_assertions::assert_eq;

use super::*;
use crate::fixtures::{
    ApiServerVerifier, Call, Cluster, ServiceExt, director, load_balancer, now, pods, reported,
    timeout_after_1s, web,
};

const VIP: &str = "192.0.2.20";

/// Two directors, `load_balancers` and `virtual_services` in the stores, and
/// the LvsNodes the agents applied and report for `applied` (Services).
fn cluster(
    load_balancers: Vec<Service>,
    virtual_services: Vec<VirtualService>,
    slices: Vec<EndpointSlice>,
    applied: &[Service],
) -> Cluster {
    let mut cluster = Cluster {
        services: virtual_services.clone(),
        load_balancers,
        nodes: vec![director("lvs1", "10.0.0.11"), director("lvs2", "10.0.0.12")],
        endpoint_slices: slices,
        ..Cluster::default()
    };
    cluster.lvs_nodes = reported(cluster.translated_with(&virtual_services, applied), true);
    // The pools' counts as written for these objects: a reconcile has none to write.
    cluster.with_pool_statuses()
}

fn context(cluster: &Cluster) -> (Arc<Context>, ApiServerVerifier) {
    Context::test(cluster)
}

/// (address, ipMode) of the ingress.
fn ingress(status: &ServiceStatus) -> Vec<(String, String)> {
    let ingress = status.load_balancer.as_ref().and_then(|lb| lb.ingress.clone()).unwrap_or_default();
    ingress.into_iter().map(|i| (i.ip.unwrap_or_default(), i.ip_mode.unwrap_or_default())).collect()
}

fn accepted(status: &ServiceStatus) -> (String, String, String) {
    let condition = &status.conditions.as_ref().expect("conditions")[0];
    assert_eq!(condition.type_, "lvs.dev/Accepted");
    (condition.status.clone(), condition.reason.clone(), condition.message.clone())
}

/// The status a previous reconcile wrote for `outcome`.
fn written(service: &Service, addresses: &[&str]) -> ServiceStatus {
    let outcome = LoadBalancerOutcome {
        verdict: lvs_crds::Verdict::Accepted,
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    };
    load_balancer::status(service, &outcome, &now())
}

/// (owner kind, owner name, port, destinations) of each service lvs1 directs.
fn directed(object: &LvsNode) -> Vec<(OwnerKind, String, u16, Vec<String>)> {
    let services = object.spec.director.iter().flat_map(|d| &d.services);
    services
        .map(|s| {
            let destinations = s.destinations.iter().map(|d| format!("{}:{}", d.address, d.port)).collect();
            (s.owner.kind, s.owner.name.clone(), s.key.port, destinations)
        })
        .collect()
}

#[tokio::test]
async fn a_new_load_balancer_first_gets_the_finalizer() {
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP));
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![], vec![], &[]));
    let scenario = server.run(vec![Call::AddServiceFinalizer("shop")]);
    reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn services_of_other_classes_are_left_alone() {
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).with_class("example.com/other");
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![], vec![], &[]));
    let scenario = server.run(vec![]);
    let action = reconcile_service(Arc::new(service), ctx).await.expect("reconcile without any call");
    timeout_after_1s(scenario).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn create_programs_the_endpoints_then_writes_the_ingress_in_proxy_mode() {
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let slices = vec![pods("shop", &["10.244.1.5", "10.244.1.6"])];
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![], slices, &[]));
    let scenario = server.run(vec![
        Call::ApplyLvsNode("lvs1"),
        Call::ApplyLvsNode("lvs2"),
        Call::CreateEvent("Accepted"),
        Call::PatchServiceStatus("shop"),
    ]);
    reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;

    assert_eq!(
        directed(&written.applied[0]),
        [(OwnerKind::Service, "shop".into(), 80, vec!["10.244.1.5:8080".into(), "10.244.1.6:8080".into()])]
    );
    let status = written.service_status.expect("status");
    assert_eq!(ingress(&status), [(VIP.to_owned(), "Proxy".to_owned())]);
    assert_eq!(accepted(&status), ("True".into(), "Accepted".into(), format!("serving {VIP}")));
    assert_eq!(written.events[0].type_.as_deref(), Some("Normal"));
    assert_eq!(written.events[0].regarding.as_ref().and_then(|r| r.kind.as_deref()), Some("Service"));
}

#[tokio::test]
async fn a_port_change_reprograms_the_directors_and_leaves_the_status() {
    let before = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let mut after = before.clone();
    after.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 443;
    let after = after.clone().with_status(written(&after, &[VIP]));
    let slices = vec![pods("shop", &["10.244.1.5"])];
    let (ctx, server) = context(&cluster(vec![after.clone()], vec![], slices, &[before]));
    let scenario = server.run(vec![Call::ApplyLvsNode("lvs1"), Call::ApplyLvsNode("lvs2")]);
    let action = reconcile_service(Arc::new(after), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;
    assert_eq!(directed(&written.applied[0])[0].2, 443);
    assert_eq!(action, Action::requeue(RESYNC));
}

#[tokio::test]
async fn an_endpoints_change_reprograms_the_directors() {
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let service = service.clone().with_status(written(&service, &[VIP]));
    // The agents hold the state with one pod; the slice now has two.
    let mut cluster = cluster(
        vec![service.clone()],
        vec![],
        vec![pods("shop", &["10.244.1.5"])],
        std::slice::from_ref(&service),
    );
    cluster.endpoint_slices = vec![pods("shop", &["10.244.1.5", "10.244.1.7"])];
    let (ctx, server) = context(&cluster);
    let scenario = server.run(vec![Call::ApplyLvsNode("lvs1"), Call::ApplyLvsNode("lvs2")]);
    reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;
    assert_eq!(directed(&written.applied[1])[0].3, ["10.244.1.5:8080", "10.244.1.7:8080"]);
}

#[tokio::test]
async fn a_class_change_removes_the_service_and_waits_for_the_agents() {
    let before = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let after = before.clone().with_class("example.com/other");
    let slices = vec![pods("shop", &["10.244.1.5"])];
    let (ctx, server) = context(&cluster(vec![after.clone()], vec![], slices, &[before]));
    // Nothing else needs the directors' objects.
    let scenario = server.run(vec![Call::DeleteLvsNode("lvs1"), Call::DeleteLvsNode("lvs2")]);
    let error = reconcile_service(Arc::new(after), ctx).await.expect_err("the finalizer stays");
    timeout_after_1s(scenario).await;
    assert!(matches!(error.cause(), Error::CleanupPending(nodes) if nodes == &["lvs1", "lvs2"]), "{error}");
}

#[tokio::test]
async fn a_class_change_clears_the_status_and_the_finalizer_once_the_agents_dropped_it() {
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let service = service.clone().with_status(written(&service, &[VIP])).with_class("example.com/other");
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![web()], vec![], &[]));
    let scenario = server.run(vec![Call::PatchServiceStatus("shop"), Call::RemoveServiceFinalizer("shop")]);
    let action = reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;
    // An empty applied status: the ingress and our condition are dropped.
    assert_eq!(written.service_status, Some(ServiceStatus::default()));
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deletion_waits_for_the_agents_then_releases_the_finalizer_only() {
    let alive = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let service = alive.clone().deleting();
    let slices = vec![pods("shop", &["10.244.1.5"])];

    let (ctx, server) = context(&cluster(vec![service.clone()], vec![web()], slices.clone(), &[alive]));
    // The directors keep web: their objects are rewritten without shop.
    let scenario = server.run(vec![Call::ApplyLvsNode("lvs1"), Call::ApplyLvsNode("lvs2")]);
    let error = reconcile_service(Arc::new(service.clone()), ctx).await.expect_err("the finalizer stays");
    timeout_after_1s(scenario).await;
    assert!(matches!(error.cause(), Error::CleanupPending(_)), "{error}");

    let (ctx, server) = context(&cluster(vec![service.clone()], vec![web()], slices, &[]));
    let scenario = server.run(vec![Call::RemoveServiceFinalizer("shop")]);
    reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_requested_address_an_older_virtual_service_holds_is_refused() {
    // web (2026-01-01) holds 192.0.2.10:80.
    let service = load_balancer("shop", "2026-02-01T00:00:00Z", Some("192.0.2.10")).finalized();
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![web()], vec![], &[]));
    // The allocator refuses it: both kinds take their addresses from one allocation.
    let scenario = server.run(vec![Call::CreateEvent("VipInUse"), Call::PatchServiceStatus("shop")]);
    reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;
    let status = written.service_status.unwrap();
    assert_eq!(ingress(&status), []);
    let (condition, reason, message) = accepted(&status);
    assert_eq!((condition.as_str(), reason.as_str()), ("False", "VipInUse"));
    assert!(
        message.contains("vip 192.0.2.10 is already used on the same ports by VirtualService default/web"),
        "{message}"
    );
    assert_eq!(written.events[0].type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn of_two_services_requesting_one_address_the_older_keeps_it() {
    let older = load_balancer("older", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let newer = load_balancer("newer", "2026-03-01T00:00:00Z", Some(VIP)).finalized();
    let both = vec![older.clone(), newer.clone()];
    let (ctx, server) = context(&cluster(both.clone(), vec![], vec![], &both));
    let scenario = server.run(vec![Call::CreateEvent("VipInUse"), Call::PatchServiceStatus("newer")]);
    reconcile_service(Arc::new(newer), ctx).await.expect("reconcile");
    let status = timeout_after_1s(scenario).await.service_status.unwrap();
    assert!(accepted(&status).2.contains("by Service default/older"), "{:?}", accepted(&status));
}

#[tokio::test]
async fn a_service_without_an_address_is_refused_when_its_pool_is_exhausted() {
    // The pool holds one address, which web (a VirtualService) has.
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", None).finalized();
    let mut cluster = cluster(vec![service.clone()], vec![web()], vec![], &[]);
    cluster.vip_pools[0].spec.addresses = vec!["192.0.2.10-192.0.2.10".into()];
    let cluster = cluster.with_pool_statuses();
    let (ctx, server) = context(&cluster);
    let scenario = server.run(vec![Call::CreateEvent("PoolExhausted"), Call::PatchServiceStatus("shop")]);
    reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    let status = timeout_after_1s(scenario).await.service_status.unwrap();
    assert_eq!(accepted(&status).1, "PoolExhausted");
    assert_eq!(accepted(&status).2, "no free IPv4 address in VipPool lab");
    assert_eq!(ingress(&status), []);
}

#[tokio::test]
async fn a_node_address_is_never_taken_as_a_vip() {
    // Even from a pool that holds it.
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", Some("10.0.0.11")).finalized();
    let mut cluster = cluster(vec![service.clone()], vec![], vec![], &[]);
    cluster.vip_pools[0].spec.addresses.push("10.0.0.0/24".into());
    let cluster = cluster.with_pool_statuses();
    let (ctx, server) = context(&cluster);
    let scenario = server.run(vec![Call::CreateEvent("VipReserved"), Call::PatchServiceStatus("shop")]);
    reconcile_service(Arc::new(service), ctx).await.expect("reconcile");
    let status = timeout_after_1s(scenario).await.service_status.unwrap();
    assert_eq!(accepted(&status).2, "vip 10.0.0.11 is reserved: the address of node lvs1");
    assert_eq!(ingress(&status), []);
}

#[tokio::test]
async fn an_unchanged_service_writes_nothing() {
    let service = load_balancer("shop", "2026-01-01T00:00:00Z", Some(VIP)).finalized();
    let service = service.clone().with_status(written(&service, &[VIP]));
    let (ctx, server) =
        context(&cluster(vec![service.clone()], vec![], vec![], std::slice::from_ref(&service)));
    let scenario = server.run(vec![]);
    let action = reconcile_service(Arc::new(service), ctx).await.expect("reconcile without any call");
    timeout_after_1s(scenario).await;
    assert_eq!(action, Action::requeue(RESYNC));
}
