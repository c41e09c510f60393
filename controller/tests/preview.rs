//! `lvs-controller translate -f DIR` (issue 11, offline preview): the binary,
//! run on files with no cluster, prints what the controller's own functions
//! decide, the same on every run.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use lvs_controller::preview;
use lvs_crds::translate::TranslateOptions;

const NOW: &str = "2026-01-01T00:00:00Z";

const NODES: &str = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata: {name: director1, labels: {lvs.dev/director: "true"}}
    status: {addresses: [{type: InternalIP, address: 192.168.16.11}]}
  - apiVersion: v1
    kind: Node
    metadata: {name: rs1}
    status: {addresses: [{type: InternalIP, address: 192.168.16.21}]}
"#;

/// The administrator's pool: both namespaces, real servers on any node.
const POOLS: &str = r#"
apiVersion: lvs.dev/v1alpha1
kind: VipPool
metadata: {name: lab, generation: 1}
spec:
  addresses: [192.168.16.100-192.168.16.109]
  namespaces: [shop, blog]
  realServerNodeSelector: {}
"#;

/// Two VirtualServices claiming one key (the older wins), one given its VIP by
/// the pool, and an Istio object of the same kind name, which is not ours.
const SERVICES: &str = r#"
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: web, namespace: shop, generation: 1, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  vip: 192.168.16.100
  port: 80
  forwarding: DirectRouting
  realServers: [{address: 192.168.16.21}]
---
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: late, namespace: blog, generation: 1, creationTimestamp: "2025-06-01T00:00:00Z"}
spec:
  vip: 192.168.16.100
  port: 80
  forwarding: DirectRouting
  realServers: [{address: 192.168.16.21}]
---
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {name: api, namespace: shop, generation: 1, creationTimestamp: "2025-02-01T00:00:00Z"}
spec:
  port: 443
  forwarding: NAT
  realServers: [{address: 10.0.0.1}]
---
apiVersion: v1
kind: Service
metadata:
  name: shop-lb
  namespace: shop
  creationTimestamp: "2025-03-01T00:00:00Z"
  annotations: {lvs.dev/forwarding: NAT}
spec:
  type: LoadBalancer
  loadBalancerClass: lvs.dev/ipvs
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews]}
"#;

/// An empty directory of this test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lvs-preview-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_objects(dir: &Path) {
    fs::create_dir_all(dir.join("nodes")).unwrap();
    fs::write(dir.join("nodes/nodes.yaml"), NODES).unwrap();
    fs::write(dir.join("services.yaml"), SERVICES).unwrap();
    fs::write(dir.join("pools.yaml"), POOLS).unwrap();
    fs::write(dir.join("README.md"), "not read").unwrap();
}

fn run(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lvs-controller"))
        .args(["translate", "-f"])
        .arg(dir)
        .arg(format!("--now={NOW}"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[test]
fn the_preview_prints_the_controllers_decisions_the_same_on_every_run() {
    let dir = scratch("decisions");
    write_objects(&dir);

    let first = run(&dir);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let stdout = String::from_utf8(first.stdout.clone()).unwrap();
    let stderr = String::from_utf8(first.stderr.clone()).unwrap();

    // The director gets the winner's service; rs1 binds the VIP (DirectRouting).
    assert!(stdout.contains("# LvsNode director1: apply"), "{stdout}");
    assert!(stdout.contains("# LvsNode rs1: apply"), "{stdout}");
    assert!(stdout.contains("address: \"192.168.16.100\""), "{stdout}");
    // Statuses: the older accepted, the newer refused by name.
    assert!(stdout.contains("# VirtualService shop/web: status"), "{stdout}");
    assert!(stdout.contains("# VirtualService blog/late: status"), "{stdout}");
    assert!(stdout.contains("reason: Conflict"), "{stdout}");
    assert!(stdout.contains("already claimed by the older VirtualService shop/web"), "{stdout}");
    assert!(stdout.contains("lastTransitionTime: \"2026-01-01T00:00:00Z\""), "{stdout}");
    // The allocation: the pool's lowest free address (.100 is held by shop/web),
    // shown in the status as the controller writes it, and the pool's counts.
    let api = stdout.split("# VirtualService shop/api: status").nth(1).unwrap();
    assert!(api.contains("vip: \"192.168.16.101\"") && api.contains("pool: lab"), "{api}");
    // A Service of type LoadBalancer of ours: the next free address, as its ingress.
    let lb = stdout.split("# Service shop/shop-lb: status").nth(1).unwrap();
    assert!(lb.contains("ip: \"192.168.16.102\""), "{lb}");
    let pool = stdout.split("# VipPool lab: status").nth(1).unwrap();
    assert!(pool.contains("used: 3") && pool.contains("free: 7"), "{pool}");
    // The Istio object is skipped, and said so; the README is not read.
    assert!(stderr.contains("skipped networking.istio.io/v1 VirtualService"), "{stderr}");
    assert!(!stderr.contains("README"), "{stderr}");

    // Reproducible, and the library's own answer.
    assert_eq!(run(&dir).stdout, first.stdout);
    let objects = preview::load(&dir).unwrap();
    let now = Time(NOW.parse::<Timestamp>().unwrap());
    let library = preview::render(&preview::preview(&objects, &TranslateOptions::default(), &now)).unwrap();
    assert_eq!(library, stdout);
}

#[test]
fn existing_lvs_nodes_no_node_needs_are_deleted_and_unchanged_ones_kept() {
    let dir = scratch("existing");
    write_objects(&dir);
    // The first preview's LvsNodes, as if they existed, plus one for a gone node.
    let first = String::from_utf8(run(&dir).stdout).unwrap();
    let existing: String = first
        .split("---\n")
        .filter(|doc| doc.contains("kind: LvsNode"))
        .map(|doc| format!("---\n{doc}"))
        .collect();
    let gone = r#"
---
apiVersion: lvs.dev/v1alpha1
kind: LvsNode
metadata: {name: old-node, labels: {lvs.dev/node: old-node}}
spec: {node: old-node, revision: "1"}
"#;
    fs::write(dir.join("existing.yaml"), format!("{existing}{gone}")).unwrap();

    let second = String::from_utf8(run(&dir).stdout).unwrap();
    assert!(second.contains("# LvsNode director1: unchanged"), "{second}");
    assert!(second.contains("# LvsNode rs1: unchanged"), "{second}");
    assert!(second.contains("# LvsNode old-node: delete"), "{second}");
}

#[test]
fn a_broken_document_is_named_by_file_and_place() {
    let dir = scratch("broken");
    fs::write(
        dir.join("bad.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: x}\nspec: {port: seventy}\n",
    )
    .unwrap();
    let output = run(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("bad.yaml (document 2)"), "{stderr}");
}
