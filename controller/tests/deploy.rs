//! `kubectl kustomize deploy` renders, with the objects and the settings the
//! operator relies on.

use std::path::Path;

use serde_json::Value;

mod kustomize;
use kustomize::find;

fn render() -> Vec<Value> {
    kustomize::render(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"))
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

#[test]
fn the_base_renders_every_object() {
    let objects = render();
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole/lvs-agent",
            "ClusterRole/lvs-controller",
            "ClusterRole/lvs-tenant-edit",
            "ClusterRole/lvs-tenant-view",
            "ClusterRoleBinding/lvs-agent",
            "ClusterRoleBinding/lvs-controller",
            "CustomResourceDefinition/lvsnodes.lvs.dev",
            "CustomResourceDefinition/vippools.lvs.dev",
            "CustomResourceDefinition/virtualservices.lvs.dev",
            "DaemonSet/lvs-agent",
            "Deployment/lvs-controller",
            "Namespace/lvs-system",
            "Role/lvs-controller-lease",
            "RoleBinding/lvs-controller-lease",
            "ServiceAccount/lvs-agent",
            "ServiceAccount/lvs-controller",
        ]
    );
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let cluster_scoped = ["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"];
        if !cluster_scoped.contains(&kind) {
            assert_eq!(object["metadata"]["namespace"], "lvs-system", "{kind}");
        }
    }
}

#[test]
fn the_controller_runs_two_probed_replicas() {
    let objects = render();
    let deployment = find(&objects, "Deployment", "lvs-controller");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["image"], "ghcr.io/lvs-operator/lvs-operator:0.1.0");
    let env = container["env"].as_array().unwrap();
    let from_field = |name: &str| {
        env.iter().find(|e| e["name"] == name).map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    assert_eq!(from_field("POD_NAME"), Some("metadata.name".into()));
    assert_eq!(from_field("LEASE_NAMESPACE"), Some("metadata.namespace".into()));
}

#[test]
fn the_agent_has_the_host_network_and_net_admin_and_net_raw_only() {
    let objects = render();
    let pod = &find(&objects, "DaemonSet", "lvs-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_ne!(security["privileged"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    // Every capability dropped, then the two the agent uses (CRI-O's default
    // set has no NET_RAW, which VRRP and gratuitous ARP need).
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(strings(&security["capabilities"]["add"]), ["NET_ADMIN", "NET_RAW"]);
    let node_name = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "NODE_NAME").unwrap();
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let args = strings(&container["args"]);
    assert_eq!(args[0], "run");
    // The endpoints on the node's address only (not through a VIP), probed.
    assert!(args.contains(&"--metrics-address=$(HOST_IP):9101"), "{args:?}");
    let host_ip = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "HOST_IP").unwrap();
    assert_eq!(host_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}

/// Least privilege: no wildcards, no secrets, and writes only where the
/// binaries write.
#[test]
fn rbac_grants_what_each_binary_uses_and_no_more() {
    let objects = render();
    let rules = |name: &str| -> Vec<(String, Vec<String>)> {
        let role = find(&objects, "ClusterRole", name);
        let mut rules = vec![];
        for rule in role["rules"].as_array().unwrap() {
            for resource in strings(&rule["resources"]) {
                assert!(!resource.contains('*') && resource != "secrets", "{name}: {resource}");
                let verbs: Vec<String> = strings(&rule["verbs"]).into_iter().map(Into::into).collect();
                assert!(!verbs.iter().any(|v| v == "*"), "{name}: {resource}");
                rules.push((resource.to_owned(), verbs));
            }
        }
        rules
    };
    let verbs = |rules: &[(String, Vec<String>)], resource: &str| -> Vec<String> {
        rules.iter().filter(|(r, _)| r == resource).flat_map(|(_, v)| v.clone()).collect()
    };

    let controller = rules("lvs-controller");
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(verbs(&controller, "lvsnodes").iter().any(|v| v == verb), "controller lvsnodes {verb}");
    }
    assert!(verbs(&controller, "virtualservices/status").contains(&"patch".into()));
    assert!(verbs(&controller, "events").contains(&"create".into()));
    assert_eq!(verbs(&controller, "nodes"), ["get", "list", "watch"]);
    assert_eq!(verbs(&controller, "endpointslices"), ["get", "list", "watch"]);
    assert!(!verbs(&controller, "virtualservices").contains(&"delete".into()));
    // The administrator's pools: read, and their counts written.
    assert_eq!(verbs(&controller, "vippools"), ["get", "list", "watch"]);
    assert_eq!(verbs(&controller, "vippools/status"), ["get", "patch"]);
    assert_eq!(verbs(&controller, "namespaces"), ["get", "list", "watch"]);
    // Services of type LoadBalancer: read, finalizer and status only; never created, updated or deleted.
    assert_eq!(verbs(&controller, "services"), ["get", "list", "watch", "patch"]);
    assert_eq!(verbs(&controller, "services/status"), ["get", "patch"]);
    assert_eq!(verbs(&controller, "services/finalizers"), ["update"]);

    let agent = rules("lvs-agent");
    assert_eq!(verbs(&agent, "lvsnodes"), ["get", "list", "watch"]);
    assert_eq!(verbs(&agent, "lvsnodes/status"), ["patch"]);
    // The agent reads no Node: the LvsNode says all it needs.
    assert!(verbs(&agent, "nodes").is_empty());
    assert_eq!(agent.len(), 2);

    let lease = find(&objects, "Role", "lvs-controller-lease");
    let resources: Vec<&str> =
        lease["rules"].as_array().unwrap().iter().flat_map(|r| strings(&r["resources"])).collect();
    assert_eq!(resources, ["leases", "leases"]);
}

/// Tenants get VirtualServices of their namespace through the built-in
/// `edit`/`admin` (and `view`) roles, and nothing cluster-scoped: no VipPool,
/// no LvsNode, no Node, and not the status the controller reads back.
#[test]
fn tenants_get_virtual_services_and_nothing_cluster_scoped() {
    let objects = render();
    let role = |name: &str| find(&objects, "ClusterRole", name);
    let edit = role("lvs-tenant-edit");
    let labels = &edit["metadata"]["labels"];
    assert_eq!(labels["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert_eq!(labels["rbac.authorization.k8s.io/aggregate-to-admin"], "true");
    assert_eq!(
        role("lvs-tenant-view")["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    for name in ["lvs-tenant-edit", "lvs-tenant-view"] {
        for rule in role(name)["rules"].as_array().unwrap() {
            assert_eq!(strings(&rule["apiGroups"]), ["lvs.dev"], "{name}");
            for resource in strings(&rule["resources"]) {
                assert!(resource.starts_with("virtualservices"), "{name}: {resource}");
                let verbs = strings(&rule["verbs"]);
                assert!(!verbs.contains(&"*"), "{name}");
                if resource == "virtualservices/status" {
                    assert_eq!(verbs, ["get", "list", "watch"], "{name}: tenants never write the status");
                }
            }
        }
    }
    let verbs = strings(&edit["rules"][0]["verbs"]);
    for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
        assert!(verbs.contains(&verb), "edit: {verb}");
    }
    // Granted per namespace: aggregated into roles that RoleBindings grant,
    // never bound cluster-wide here.
    let bound: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding")
        .filter_map(|o| o["roleRef"]["name"].as_str())
        .collect();
    assert!(!bound.iter().any(|name| name.starts_with("lvs-tenant")), "{bound:?}");
}
