//! Reconciles against the mock API server: each test lists the exact calls
//! the controller must make, in order, and checks what it wrote.

use pretty_assertions::assert_eq;

use super::*;
use crate::fixtures::{
    ApiServerVerifier, Call, Cluster, VirtualServiceExt, director, now, reported, service, timeout_after_1s,
    web,
};

/// A cluster with two directors and the given VirtualServices, whose
/// LvsNodes were written and applied for `applied` (healthy or not).
fn cluster(services: Vec<VirtualService>, applied: Vec<VirtualService>, healthy: bool) -> Cluster {
    let mut cluster = Cluster {
        services,
        nodes: vec![director("lvs1", "10.0.0.11"), director("lvs2", "10.0.0.12")],
        ..Cluster::default()
    };
    cluster.lvs_nodes = reported(cluster.translated(&applied), healthy);
    cluster.with_pool_statuses()
}

fn context(cluster: &Cluster) -> (Arc<Context>, ApiServerVerifier) {
    Context::test(cluster)
}

fn conditions(status: &lvs_crds::VirtualServiceStatus) -> Vec<(&str, &str, &str)> {
    status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect()
}

#[tokio::test]
async fn a_new_service_first_gets_the_finalizer() {
    let service = web();
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![], true));
    let scenario = server.run(vec![Call::AddFinalizer("web")]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn create_applies_the_lvs_nodes_then_patches_the_status() {
    let service = web().finalized();
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![], true));
    let scenario =
        server.run(vec![Call::ApplyLvsNode("lvs1"), Call::ApplyLvsNode("lvs2"), Call::PatchStatus("web")]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;

    let lvs1 = &written.applied[0];
    assert_eq!(lvs1.labels().get(NODE_LABEL).map(String::as_str), Some("lvs1"));
    let services = &lvs1.spec.director.as_ref().expect("lvs1 directs").services;
    assert_eq!((services[0].owner.name.as_str(), services[0].destinations.len()), ("web", 2));
    let status = written.status.expect("status");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        conditions(&status),
        [
            ("Accepted", "True", "Accepted"),
            ("Programmed", "False", "Pending"),
            ("Healthy", "Unknown", "Pending"),
            ("Ready", "False", "Pending"),
            ("Reconciling", "True", "Pending"),
            ("Stalled", "False", "NotStalled"),
        ]
    );
}

#[tokio::test]
async fn update_applies_the_new_spec_and_waits_for_the_agents() {
    let before = web().finalized();
    let after = before.clone().with_third_real_server();
    let (ctx, server) = context(&cluster(vec![after.clone()], vec![before], true));
    let scenario =
        server.run(vec![Call::ApplyLvsNode("lvs1"), Call::ApplyLvsNode("lvs2"), Call::PatchStatus("web")]);
    reconcile(Arc::new(after), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;

    let services = &written.applied[0].spec.director.as_ref().unwrap().services;
    assert_eq!((services[0].owner.generation, services[0].destinations.len()), (2, 3));
    let status = written.status.unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.real_server_count, Some(3));
    // The agents still run generation 1.
    assert_eq!(conditions(&status)[1], ("Programmed", "False", "Pending"));
}

#[tokio::test]
async fn deletion_removes_the_service_and_waits_for_the_agents() {
    let service = web().finalized().deleting();
    // The agents still hold web: its LvsNodes are no longer needed.
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![web()], true));
    let scenario = server.run(vec![Call::DeleteLvsNode("lvs1"), Call::DeleteLvsNode("lvs2")]);
    let error = reconcile(Arc::new(service), ctx).await.expect_err("the finalizer stays");
    timeout_after_1s(scenario).await;
    assert!(matches!(error.cause(), Error::CleanupPending(nodes) if nodes == &["lvs1", "lvs2"]), "{error}");
}

#[tokio::test]
async fn deletion_releases_the_finalizer_once_every_agent_dropped_the_service() {
    let deleted = web().finalized().deleting();
    let other = service("other", "2026-01-01T00:00:00Z");
    let mut other = other.finalized();
    other.spec.port = Some(443);
    // The agents applied the state without web.
    let (ctx, server) = context(&cluster(vec![deleted.clone(), other.clone()], vec![other], true));
    let scenario = server.run(vec![Call::RemoveFinalizer("web")]);
    reconcile(Arc::new(deleted), ctx).await.expect("reconcile");
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_conflict_is_refused_with_a_warning_event() {
    let older = service("older", "2025-12-01T00:00:00Z").finalized();
    let newer = web().finalized();
    let services = vec![older.clone(), newer.clone()];
    let (ctx, server) = context(&cluster(services.clone(), services, true));
    let scenario = server.run(vec![Call::CreateEvent("Conflict"), Call::PatchStatus("web")]);
    reconcile(Arc::new(newer), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;

    let status = written.status.unwrap();
    assert_eq!(
        conditions(&status),
        [
            ("Accepted", "False", "Conflict"),
            ("Programmed", "False", "NotAccepted"),
            ("Healthy", "False", "NotAccepted"),
            ("Ready", "False", "Conflict"),
            ("Reconciling", "False", "Reconciled"),
            ("Stalled", "True", "Conflict"),
        ]
    );
    assert!(status.conditions[0].message.contains("default/older"), "{}", status.conditions[0].message);
    assert_eq!(written.events[0].type_.as_deref(), Some("Warning"));
    assert_eq!(written.events[0].regarding.as_ref().and_then(|r| r.name.as_deref()), Some("web"));
}

#[tokio::test]
async fn status_aggregates_the_agents_reports() {
    let service = web().finalized();
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![service.clone()], true));
    let scenario = server.run(vec![Call::CreateEvent("Programmed"), Call::PatchStatus("web")]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    let status = timeout_after_1s(scenario).await.status.unwrap();

    assert_eq!(
        conditions(&status),
        [
            ("Accepted", "True", "Accepted"),
            ("Programmed", "True", "Programmed"),
            ("Healthy", "True", "Healthy"),
            ("Ready", "True", "Ready"),
            ("Reconciling", "False", "Reconciled"),
            ("Stalled", "False", "NotStalled"),
        ]
    );
    let directors: Vec<(&str, bool)> =
        status.directors.iter().map(|d| (d.node.as_str(), d.programmed)).collect();
    assert_eq!(directors, [("lvs1", true), ("lvs2", true)]);
    let real_servers: Vec<(&str, bool, u16)> =
        status.real_servers.iter().map(|r| (r.address.as_str(), r.healthy, r.weight)).collect();
    assert_eq!(real_servers, [("198.51.100.1", true, 1), ("198.51.100.2", true, 1)]);
    assert_eq!(status.real_server_count, Some(2));
}

#[tokio::test]
async fn nothing_changed_nothing_written() {
    let service = web().finalized();
    let cluster = cluster(vec![service.clone()], vec![service.clone()], false);
    // The status a previous reconcile wrote for this very state.
    let translation = cluster.translation(&cluster.services);
    let key = ("default".to_owned(), "web".to_owned());
    let verdict = &translation.verdicts[&key];
    let reports: Vec<Arc<LvsNode>> = cluster.lvs_nodes.iter().cloned().map(Arc::new).collect();
    let written = status::aggregate(&service, verdict, &translation.lvs_nodes, &reports, &now());
    let written = status::with_allocation(written, translation.allocations.get(&key));
    let service = service.with_status(written);

    let (ctx, server) = context(&Cluster { services: vec![service.clone()], ..cluster });
    let scenario = server.run(vec![]);
    let action = reconcile(Arc::new(service), ctx).await.expect("reconcile without any call");
    timeout_after_1s(scenario).await;
    assert_eq!(action, Action::requeue(RESYNC));
}

#[tokio::test]
async fn errors_are_counted_by_reason() {
    let (ctx, _server) = context(&Cluster::default());
    let pending = Error::CleanupPending(vec!["lvs1".into()]);
    assert_eq!(error_policy(Arc::new(web()), &pending, Arc::clone(&ctx)), Action::requeue(CLEANUP_POLL));
    assert_eq!(error_policy(Arc::new(web()), &Error::StoresClosed, Arc::clone(&ctx)), Action::requeue(RETRY));
    let text = ctx.metrics.encode();
    assert!(text.contains(r#"lvs_controller_reconcile_errors_total{reason="cleanup_pending"} 1"#), "{text}");
    assert!(text.contains(r#"lvs_controller_reconcile_errors_total{reason="stores_closed"} 1"#), "{text}");
}

#[tokio::test]
async fn a_service_without_vip_gets_one_from_the_pool_shown_in_both_statuses() {
    let mut service = web().finalized();
    service.spec.vip = None;
    // The pool's status as written before this service existed.
    let mut cluster = cluster(vec![], vec![], true);
    cluster.services = vec![service.clone()];
    let (ctx, server) = context(&cluster);
    let scenario = server.run(vec![
        Call::ApplyLvsNode("lvs1"),
        Call::ApplyLvsNode("lvs2"),
        Call::PatchPoolStatus("lab"),
        Call::PatchStatus("web"),
    ]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;

    let status = written.status.expect("status");
    assert_eq!((status.vip.as_deref(), status.pool.as_deref()), (Some("192.0.2.1"), Some("lab")));
    assert_eq!(conditions(&status)[0], ("Accepted", "True", "Accepted"));
    let vips = &written.applied[0].spec.director.as_ref().unwrap().vips;
    assert_eq!(vips[0].address.to_string(), "192.0.2.1");
    // 192.0.2.0/24 without its network and broadcast addresses: 254.
    let pool = &written.pool_statuses[0];
    assert_eq!((pool.used, pool.free), (1, 253));
    assert_eq!((pool.conditions[0].type_.as_str(), pool.conditions[0].status.as_str()), ("Valid", "True"));
}

#[tokio::test]
async fn the_allocation_read_back_from_the_status_is_kept() {
    // web holds 192.0.2.7 from an earlier allocation (another replica wrote it).
    let mut service = web().finalized();
    service.spec.vip = None;
    let service = service.with_status(lvs_crds::VirtualServiceStatus {
        vip: Some("192.0.2.7".into()),
        pool: Some("lab".into()),
        ..Default::default()
    });
    let cluster = cluster(vec![service.clone()], vec![], true);
    let (ctx, server) = context(&cluster);
    let scenario =
        server.run(vec![Call::ApplyLvsNode("lvs1"), Call::ApplyLvsNode("lvs2"), Call::PatchStatus("web")]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;
    assert_eq!(written.status.unwrap().vip.as_deref(), Some("192.0.2.7"));
    let vips = &written.applied[0].spec.director.as_ref().unwrap().vips;
    assert_eq!(vips[0].address.to_string(), "192.0.2.7");
}

#[tokio::test]
async fn a_vip_outside_every_admitting_pool_is_refused_with_a_warning_event() {
    let mut service = web().finalized();
    service.spec.vip = Some("198.51.100.10".into());
    let (ctx, server) = context(&cluster(vec![service.clone()], vec![], true));
    let scenario = server.run(vec![Call::CreateEvent("VipNotInPool"), Call::PatchStatus("web")]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;

    let status = written.status.unwrap();
    assert_eq!(conditions(&status)[0], ("Accepted", "False", "VipNotInPool"));
    assert_eq!(
        status.conditions[0].message,
        "vip 198.51.100.10 lies in no VipPool that admits namespace default (admitting: lab)"
    );
    assert_eq!((status.vip, status.pool), (None, None));
    assert_eq!(written.events[0].type_.as_deref(), Some("Warning"));
    assert!(written.applied.is_empty(), "no node gets anything");
}

#[tokio::test]
async fn a_namespace_no_pool_admits_is_refused() {
    let service = web().finalized();
    let mut cluster = cluster(vec![service.clone()], vec![], true);
    cluster.vip_pools[0].spec.namespaces = vec!["other".into()];
    let cluster = cluster.with_pool_statuses();
    let (ctx, server) = context(&cluster);
    let scenario = server.run(vec![Call::CreateEvent("NoPool"), Call::PatchStatus("web")]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    let status = timeout_after_1s(scenario).await.status.unwrap();
    assert_eq!(conditions(&status)[0], ("Accepted", "False", "NoPool"));
    assert_eq!(status.conditions[0].message, "no VipPool admits namespace default");
}

#[tokio::test]
async fn directors_come_from_the_pool() {
    // The pool directs with lvs2 only; web asks for every director-labelled node.
    let service = web().finalized();
    let mut cluster = cluster(vec![service.clone()], vec![], true);
    let mut lvs2 = cluster.nodes[1].clone();
    lvs2.metadata.labels.as_mut().unwrap().insert("pool".into(), "lab".into());
    cluster.nodes[1] = lvs2;
    cluster.vip_pools[0].spec.directors = Some(lvs_crds::virtual_service::Directors {
        node_selector: [("pool".into(), "lab".into())].into(),
        interface: None,
    });
    let cluster = cluster.with_pool_statuses();
    let (ctx, server) = context(&cluster);
    let scenario = server.run(vec![Call::ApplyLvsNode("lvs2"), Call::PatchStatus("web")]);
    reconcile(Arc::new(service), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;
    assert_eq!(written.applied.len(), 1);
    let directors: Vec<&str> =
        written.status.as_ref().unwrap().directors.iter().map(|d| d.node.as_str()).collect();
    assert_eq!(directors, ["lvs2"]);
}

#[tokio::test]
async fn a_vrrp_conflict_refuses_the_newer_service_alone() {
    let failover = |vrid| lvs_crds::virtual_service::Failover {
        vrrp: lvs_crds::virtual_service::Vrrp {
            virtual_router_id: vrid,
            advert_interval_ms: 1000,
            preempt: true,
        },
    };
    let mut older = service("older", "2025-12-01T00:00:00Z").finalized();
    older.spec.failover = Some(failover(51));
    // The same VIP (shared on another port) with another router: the agent
    // could not hold both.
    let mut newer = web().finalized();
    newer.spec.port = Some(443);
    newer.spec.failover = Some(failover(52));
    let services = vec![older.clone(), newer.clone()];
    let (ctx, server) = context(&cluster(services.clone(), services, true));
    let scenario = server.run(vec![Call::CreateEvent("VrrpConflict"), Call::PatchStatus("web")]);
    reconcile(Arc::new(newer), ctx).await.expect("reconcile");
    let written = timeout_after_1s(scenario).await;

    let status = written.status.unwrap();
    assert_eq!(conditions(&status)[0], ("Accepted", "False", "VrrpConflict"));
    assert!(
        status.conditions[0].message.contains("older VirtualService default/older"),
        "{}",
        status.conditions[0].message
    );
    assert_eq!(written.events[0].type_.as_deref(), Some("Warning"));
    // The older service's LvsNodes stay as they are: nothing applied.
    assert!(written.applied.is_empty());
}
