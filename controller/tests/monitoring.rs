//! The monitoring kit (deploy/monitoring): it renders with the base, its
//! PodMonitors select the agent's and the controller's pods on ports they
//! declare, and every PromQL expression (alerts, dashboard) parses. That the
//! metrics they use exist is checked beside each binary's metrics.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
};

use promql_parser::{
    parser::{Expr, parse},
    util::{ExprVisitor, walk_expr},
};
use serde_json::Value;

mod kustomize;
use kustomize::find;

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The base with the component, as docs/metrics.md shows it. kustomize takes
/// only relative paths: from a temporary directory to the repository.
fn render() -> Vec<Value> {
    // One directory per rendering: the tests run in parallel.
    static RENDERINGS: AtomicUsize = AtomicUsize::new(0);
    let rendering = RENDERINGS.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("lvs-monitoring-{}-{rendering}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let up = "../".repeat(dir.components().count() - 1);
    let repo = repo();
    let repo = repo.strip_prefix("/").unwrap().display();
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [{up}{repo}/deploy]\ncomponents: [{up}{repo}/deploy/monitoring]\n"
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
    let objects = kustomize::render(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    objects
}

/// The metric names an expression reads.
fn metrics_of(expr: &str) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = ();
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
            let selector = match expr {
                Expr::VectorSelector(selector) => selector,
                Expr::MatrixSelector(matrix) => &matrix.vs,
                _ => return Ok(true),
            };
            self.0.extend(selector.name.clone());
            Ok(true)
        }
    }
    let parsed = parse(expr).unwrap_or_else(|error| panic!("{expr:?} does not parse: {error}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap();
    names.0
}

#[test]
fn the_pod_monitors_select_each_binarys_pods_on_a_declared_port() {
    let objects = render();
    for (monitor, workload_kind, workload) in
        [("lvs-agent", "DaemonSet", "lvs-agent"), ("lvs-controller", "Deployment", "lvs-controller")]
    {
        let monitor = find(&objects, "PodMonitor", monitor);
        let workload = find(&objects, workload_kind, workload);
        assert_eq!(monitor["metadata"]["namespace"], "lvs-system");
        let pod = &workload["spec"]["template"];
        let Value::Object(selector) = &monitor["spec"]["selector"]["matchLabels"] else {
            panic!("{monitor:?} has no matchLabels")
        };
        for (key, value) in selector {
            assert_eq!(&pod["metadata"]["labels"][key.as_str()], value, "the pod's label {key:?}");
        }
        let ports: Vec<&Value> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .map(|p| &p["name"])
            .collect();
        for endpoint in monitor["spec"]["podMetricsEndpoints"].as_array().unwrap() {
            assert!(
                ports.contains(&&endpoint["port"]),
                "port {:?} not declared: {ports:?}",
                endpoint["port"]
            );
            assert_eq!(endpoint["path"], "/metrics");
        }
    }
}

/// Each alert the docs promise, with an expression that parses and reads
/// our metrics, a severity and a summary.
#[test]
fn the_alerts_parse_and_cover_what_docs_promise() {
    let objects = render();
    let rule = find(&objects, "PrometheusRule", "lvs-operator");
    assert_eq!(rule["metadata"]["namespace"], "lvs-system");
    let rules: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let mut alerts = BTreeSet::new();
    for rule in rules {
        let alert = rule["alert"].as_str().unwrap();
        let names = metrics_of(rule["expr"].as_str().unwrap());
        assert!(
            !names.is_empty()
                && names.iter().all(|n| n.starts_with("lvs_agent_") || n.starts_with("lvs_controller_")),
            "{alert} reads {names:?}"
        );
        assert!(["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap()), "{alert}");
        assert!(rule["annotations"]["summary"].as_str().is_some_and(|s| !s.is_empty()), "{alert}");
        alerts.insert(alert.to_string());
    }
    let expected = [
        // no healthy real server, VRRP flapping, two masters for one VIP,
        // programming failures, rounds stalled
        "LvsServiceNoHealthyRealServer",
        "LvsVrrpFlapping",
        "LvsVipTwoMasters",
        "LvsProgrammingFailures",
        "LvsControllerReconcileErrors",
        "LvsAgentStalled",
        "LvsIpvsUnreadable",
    ];
    assert_eq!(alerts, expected.iter().map(|a| a.to_string()).collect());
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    for alert in expected {
        assert!(docs.contains(&format!("| `{alert}` |")), "docs/metrics.md does not explain {alert}");
    }
}

/// The dashboard is in the ConfigMap Grafana's sidecar loads, is the file
/// in the repository, and each panel's queries parse (Grafana's variables
/// replaced by values).
#[test]
fn the_dashboard_loads_and_its_queries_parse() {
    let objects = render();
    let config_map = find(&objects, "ConfigMap", "lvs-operator-dashboard");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let text = config_map["data"]["lvs-operator.json"].as_str().unwrap();
    let file = std::fs::read_to_string(repo().join("deploy/monitoring/dashboard.json")).unwrap();
    assert_eq!(text, file);
    let dashboard: serde_json::Value = serde_json::from_str(text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut read = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "5m");
            read.extend(metrics_of(&expr));
        }
    }
    for needed in [
        "lvs_agent_service_connections_total",
        "lvs_agent_service_healthy_real_servers",
        "lvs_agent_vip_master",
        "lvs_agent_failures_total",
        "lvs_controller_reconcile_duration_seconds_bucket",
    ] {
        assert!(read.contains(needed), "the dashboard does not show {needed}: {read:?}");
    }
}
