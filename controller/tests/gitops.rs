//! GitOps: Argo CD's health checks (deploy/argocd/*.lua) run by a real Lua 5.1
//! interpreter (`lua5.1`, as Argo CD's gopher-lua speaks it; tests/lab/install
//! installs it) on the statuses the controller writes, made by its own
//! `status::aggregate`; and deploy/argocd/argocd-cm.yaml, which carries the
//! scripts into Argo CD's configuration, kept up to date.

use std::{fmt::Write, path::Path, process::Command, sync::Arc};

use k8s_openapi::{
    api::core::v1::{Node, NodeAddress, NodeStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use lvs_controller::status::{aggregate, pool_status};
use lvs_crds::{
    ClusterState, LvsNode, LvsNodeStatus, TranslateOptions, VipPool, VirtualService,
    allocation::PoolUsage,
    lvs_node::{DestinationReport, ServiceReport},
    translate,
    translate::Verdict,
};
use serde_json::Value;

const SCRIPTS: [(&str, &str); 2] =
    [("VirtualService", "virtualservice-health.lua"), ("VipPool", "vippool-health.lua")];

fn argocd_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/argocd")
}

/// `value` as a Lua table constructor (JSON objects and arrays alike).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => {
            let fields: Vec<String> = fields.iter().map(|(k, v)| format!("[{k:?}] = {}", lua(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Argo CD's verdict on `object` by `script`: (status, message).
fn health(script: &str, object: &impl serde::Serialize) -> (String, String) {
    let object = serde_json::to_value(object).unwrap();
    let program = format!(
        "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status, \"\\n\", hs.message or \"\")",
        lua(&object),
        argocd_dir().join(script).display().to_string()
    );
    let output = Command::new("lua5.1")
        .args(["-e", &program])
        .output()
        .expect("lua5.1 is missing: tests/lab/install installs it (apt-get install lua5.1)");
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), message.to_owned())
}

fn now() -> Time {
    Time(Timestamp::from_second(1_800_000_000).unwrap())
}

/// A NAT VirtualService `default/web` on the director lvs1, generation 2, and
/// what the translation makes of it.
fn web() -> (VirtualService, Vec<LvsNode>) {
    let mut service: VirtualService = lvs_crds::yaml::from_str(
        "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: web, namespace: default}\n\
         spec: {vip: 192.168.16.100, port: 80, forwarding: NAT, realServers: [{address: 10.0.0.21}]}",
    )
    .unwrap();
    service.metadata.generation = Some(2);
    let director = Node {
        metadata: ObjectMeta {
            name: Some("lvs1".into()),
            labels: Some([("lvs.dev/director".to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: "10.0.0.1".into() }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    let state =
        ClusterState { virtual_services: vec![service.clone()], nodes: vec![director], ..Default::default() };
    let desired = translate(&state, &TranslateOptions::default()).lvs_nodes;
    (service, desired)
}

/// The director's report: the current state applied, the real server healthy or not.
fn reported(desired: &[LvsNode], healthy: bool) -> Vec<Arc<LvsNode>> {
    let mut object = desired[0].clone();
    let service = &object.spec.director.as_ref().unwrap().services[0];
    let destinations = (service.destinations.iter())
        .map(|d| DestinationReport {
            address: d.address,
            port: d.port,
            healthy,
            weight: if healthy { d.weight } else { 0 },
        })
        .collect();
    let report = ServiceReport {
        owner: service.owner.clone(),
        key: service.key.clone(),
        programmed: true,
        error: None,
        destinations,
    };
    object.status = Some(LvsNodeStatus {
        applied_revision: Some(object.spec.revision.clone()),
        services: vec![report],
        ..LvsNodeStatus::default()
    });
    vec![Arc::new(object)]
}

#[test]
fn argo_cd_health_of_a_virtual_service_follows_its_status() {
    let script = "virtualservice-health.lua";
    let (service, desired) = web();
    let with_status = |verdict: &Verdict, desired: &[LvsNode], reported: &[Arc<LvsNode>]| {
        let mut object = service.clone();
        object.status = Some(aggregate(&service, verdict, desired, reported, &now()));
        object
    };
    let accepted = Verdict::Accepted;

    assert_eq!(health(script, &service), ("Progressing".into(), "waiting for lvs-controller".into()));
    let (status, message) = health(script, &with_status(&accepted, &desired, &[]));
    assert_eq!(status, "Progressing", "the director has not applied it yet: {message}");
    assert!(message.starts_with("Pending: programmed on 0 of 1 directors"), "{message}");

    let (status, message) = health(script, &with_status(&accepted, &desired, &reported(&desired, true)));
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Healthy", "accepted, programmed on every director, and healthy")
    );

    let (status, message) = health(script, &with_status(&accepted, &desired, &reported(&desired, false)));
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("NoHealthyRealServers: "), "{message}");

    let conflict = Verdict::Conflict {
        winner: ("default".into(), "older".into()),
        winner_kind: lvs_crds::lvs_node::OwnerKind::VirtualService,
        key: "TCP 192.168.16.100:80".into(),
    };
    let (status, message) = health(script, &with_status(&conflict, &[], &[]));
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("Conflict: TCP 192.168.16.100:80 is already claimed"), "{message}");
    let (status, message) = health(script, &with_status(&accepted, &[], &[]));
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Degraded", "NoDirectors: no node matches the directors' nodeSelector")
    );

    // A spec change the controller has not seen yet: its old status says nothing.
    let mut edited = with_status(&accepted, &desired, &reported(&desired, true));
    edited.metadata.generation = Some(3);
    let (status, message) = health(script, &edited);
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Progressing", "lvs-controller has not observed generation 3 yet")
    );
}

#[test]
fn argo_cd_health_of_a_pool_follows_valid() {
    let script = "vippool-health.lua";
    let mut pool: VipPool = lvs_crds::yaml::from_str(
        "apiVersion: lvs.dev/v1alpha1\nkind: VipPool\nmetadata: {name: lab}\nspec: {addresses: [192.168.16.100/30]}",
    )
    .unwrap();
    assert_eq!(health(script, &pool).0, "Progressing");
    pool.status = Some(pool_status(&pool, &PoolUsage { used: 1, free: 3, errors: Vec::new() }, &now()));
    assert_eq!(
        health(script, &pool),
        ("Healthy".into(), "1 used, 3 free; every address entry parses".into())
    );
}

/// The ConfigMap patch that hands the scripts to Argo CD.
fn render_argocd_cm() -> String {
    let mut out = String::from(
        "# Generated from deploy/argocd/*.lua by controller/tests/gitops.rs (UPDATE_DEPLOY=1 rewrites it).\n\
         # Argo CD's health checks of lvs.dev objects, merged into its configuration:\n\
         #   kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm.yaml\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: argocd\n  \
         labels: {app.kubernetes.io/name: argocd-cm, app.kubernetes.io/part-of: argocd}\ndata:\n",
    );
    for (kind, file) in SCRIPTS {
        let script = std::fs::read_to_string(argocd_dir().join(file)).unwrap();
        writeln!(out, "  resource.customizations.health.lvs.dev_{kind}: |").unwrap();
        for line in script.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                writeln!(out, "    {line}").unwrap();
            }
        }
    }
    out
}

#[test]
fn the_argocd_configmap_carries_the_scripts() {
    let path = argocd_dir().join("argocd-cm.yaml");
    let rendered = render_argocd_cm();
    if std::env::var_os("UPDATE_DEPLOY").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{} is stale: run `UPDATE_DEPLOY=1 cargo test -p lvs-controller --test gitops`",
        path.display()
    );
    // It is a ConfigMap whose values are the scripts, byte for byte.
    let map: k8s_openapi::api::core::v1::ConfigMap = lvs_crds::yaml::from_str(&committed).unwrap();
    let data = map.data.unwrap();
    for (kind, file) in SCRIPTS {
        let script = std::fs::read_to_string(argocd_dir().join(file)).unwrap();
        assert_eq!(data[&format!("resource.customizations.health.lvs.dev_{kind}")], script);
    }
}
