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
    cluster
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
        ]
    );
    let directors: Vec<(&str, bool)> =
        status.directors.iter().map(|d| (d.node.as_str(), d.programmed)).collect();
    assert_eq!(directors, [("lvs1", true), ("lvs2", true)]);
    let real_servers: Vec<(&str, bool, u64)> =
        status.real_servers.iter().map(|r| (r.address.as_str(), r.healthy, r.active_connections)).collect();
    assert_eq!(real_servers, [("198.51.100.1", true, 6), ("198.51.100.2", true, 6)]);
    assert_eq!(status.real_server_count, Some(2));
}

#[tokio::test]
async fn nothing_changed_nothing_written() {
    let service = web().finalized();
    let cluster = cluster(vec![service.clone()], vec![service.clone()], false);
    // The status a previous reconcile wrote for this very state.
    let translation = translate(&cluster_state(&cluster), &TranslateOptions::default());
    let verdict = &translation.verdicts[&("default".to_owned(), "web".to_owned())];
    let reports: Vec<Arc<LvsNode>> = cluster.lvs_nodes.iter().cloned().map(Arc::new).collect();
    let written = status::aggregate(&service, verdict, &translation.lvs_nodes, &reports, &now());
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

fn cluster_state(cluster: &Cluster) -> ClusterState {
    ClusterState {
        virtual_services: cluster.services.clone(),
        nodes: cluster.nodes.clone(),
        endpoint_slices: cluster.endpoint_slices.clone(),
        services: cluster.load_balancers.clone(),
    }
}
