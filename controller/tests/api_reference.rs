//! docs/api.md is generated from the VirtualService CRD's schema (the field
//! doc comments, bounds, defaults and CEL rules of crds/), so it cannot drift
//! from the API. This test fails when the file is stale; regenerate it with
//! `UPDATE_DOCS=1 cargo test -p lvs-controller --test api_reference`.

use std::{fmt::Write as _, path::Path};

use kube::CustomResourceExt;
use lvs_crds::VirtualService;
use serde_json::Value;

const HEADER: &str = "\
<!-- Generated from the CRD schema by controller/tests/api_reference.rs; do not edit.
     Regenerate: UPDATE_DOCS=1 cargo test -p lvs-controller --test api_reference -->

# API reference: VirtualService (`lvs.dev/v1alpha1`)

Namespaced; short name `lvs`; category `lvs` (`kubectl get lvs` lists VirtualServices
only; the internal LvsNodes are in `lvs-internal`). `kubectl explain
virtualservices.lvs.dev.spec` shows the same descriptions. The kind shares its name
with Istio's VirtualService (`networking.istio.io`); both CRDs install side by side,
and with both installed `kubectl get virtualservice` may pick either: address ours by
its full name, `kubectl get virtualservices.lvs.dev`, or by `lvs`.

Every rule below is enforced twice: by the API server (OpenAPI bounds and the CEL
rules, Kubernetes 1.31 or newer) and by the Rust function `lvs_crds::validate`,
which the standalone `lvs-agent apply` uses, with the same messages naming the
field. Further rules need the whole cluster and are the controller's:

- **Conflicts.** Two VirtualServices may not claim the same (vip, port, protocol)
  (or the same fwmark and family): the older one (creationTimestamp, then
  namespace/name) wins; the others get `Accepted=False`, reason `Conflict`, and
  are not programmed. The winner depends only on the set of VirtualServices, so
  nothing flaps.
- **VipPools.** In the cluster, each VirtualService takes its VIP from a
  `VipPool` (cluster-scoped, the administrator's) that admits its namespace:
  `vip` must lie in one, without `vip` one is allocated and shown in
  `status.vip` and `status.pool`. The pool also decides the directors (its
  selector, narrowed by `directors.nodeSelector`), the interface, the nodes
  that may be made real servers, the forwarding methods, fwmark services and
  VIP sharing; VRRP settings must agree with the older VirtualServices on a
  shared director. Refusals give `Accepted=False` with the reasons below;
  docs/security.md states the model. The standalone agent has no pools (and
  needs `vip` or `fwmark`).

Types: `integer` fields carry their range in *Rules*; *Default* is what the API
server fills in when the field is absent (an absent field without default means
\"not set\", as its description says). The status is written by `lvs-controller`
only; docs/architecture.md explains how it is aggregated.
";

fn schema() -> Value {
    let crd = serde_json::to_value(VirtualService::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Markdown for a table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

fn type_of(schema: &Value) -> String {
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&schema["items"])),
        Some("object") if schema.get("additionalProperties").is_some() => {
            format!("map[string]{}", type_of(&schema["additionalProperties"]))
        }
        Some(kind) if schema.get("enum").is_some() => format!("{kind} (enum)"),
        Some(kind) => kind.to_owned(),
        None => "any".to_owned(),
    }
}

fn number(value: &Value) -> String {
    value.as_f64().map_or_else(|| value.to_string(), |n| format!("{n}"))
}

fn rules(schema: &Value, required: bool) -> Vec<String> {
    let mut rules = vec![];
    if required {
        rules.push("**required**".to_owned());
    }
    let bound = |min: &str, max: &str, what: &str| match (schema.get(min), schema.get(max)) {
        (Some(min), Some(max)) => Some(format!("{what}{}–{}", number(min), number(max))),
        (Some(min), None) => Some(format!("{what}≥ {}", number(min))),
        (None, Some(max)) => Some(format!("{what}≤ {}", number(max))),
        (None, None) => None,
    };
    rules.extend(bound("minimum", "maximum", ""));
    rules.extend(bound("minLength", "maxLength", "length "));
    rules.extend(bound("minItems", "maxItems", "items "));
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> =
            values.iter().map(|v| format!("`{}`", v.as_str().unwrap_or_default())).collect();
        rules.push(format!("one of {}", values.join(", ")));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        rules.push(format!("matches `{pattern}`"));
    }
    if let Some(keys) = schema["x-kubernetes-list-map-keys"].as_array() {
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        rules.push(format!("unique by `{}`", keys.join("`, `")));
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        rules.push(format!(
            "{} (`{}`)",
            rule["message"].as_str().unwrap_or_default(),
            rule["rule"].as_str().unwrap()
        ));
    }
    rules
}

/// One table row per field under `path`, depth first in field-name order.
fn rows(path: &str, schema: &Value, out: &mut String) {
    let required: Vec<&str> =
        schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(properties) = schema["properties"].as_object() else { return };
    for (name, field) in properties {
        let field_path = format!("{path}.{name}");
        let default = field.get("default").map_or_else(String::new, |d| format!("`{d}`"));
        let field_rules = rules(field, required.contains(&name.as_str())).join("; ");
        let description = field["description"].as_str().unwrap_or_default();
        writeln!(
            out,
            "| `{field_path}` | {} | {default} | {} | {} |",
            type_of(field),
            cell(&field_rules),
            cell(description)
        )
        .unwrap();
        if field["type"] == "array" {
            // Rules on each item (a real server's, an HTTP status code's) get a row of their own.
            let items = &field["items"];
            let item_path = format!("{field_path}[]");
            let item_rules = rules(items, false).join("; ");
            if !item_rules.is_empty() {
                writeln!(
                    out,
                    "| `{item_path}` | {} |  | {} | each item |",
                    type_of(items),
                    cell(&item_rules)
                )
                .unwrap();
            }
            rows(&item_path, items, out);
        } else {
            rows(&field_path, field, out);
        }
    }
}

fn section(title: &str, path: &str, schema: &Value, out: &mut String) {
    writeln!(out, "\n## `{path}`: {title}\n").unwrap();
    if let Some(description) = schema["description"].as_str() {
        writeln!(out, "{description}\n").unwrap();
    }
    writeln!(out, "| Field | Type | Default | Rules | Description |").unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    rows(path, schema, out);
    let object_rules = schema["x-kubernetes-validations"].as_array();
    if let Some(object_rules) = object_rules.filter(|r| !r.is_empty()) {
        writeln!(out, "\nRules across the fields of `{path}`:\n").unwrap();
        for rule in object_rules {
            let field = rule["fieldPath"].as_str().map_or_else(String::new, |f| format!(" (`{path}{f}`)"));
            writeln!(
                out,
                "- {}{field}: `{}`",
                rule["message"].as_str().unwrap_or_default(),
                rule["rule"].as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
            )
            .unwrap();
        }
    }
}

/// The conditions' reasons, from the constants the controller uses.
fn conditions() -> String {
    use lvs_controller::status::reasons::*;
    let rows = [
        ("Accepted", "True", "Accepted", "valid, and no older VirtualService claims its key"),
        (
            "Accepted",
            "False",
            "Conflict",
            "an older VirtualService, or Service of type LoadBalancer, claims the same key; the message names it",
        ),
        ("Accepted", "False", "Invalid", "the spec breaks rules above; the message lists them"),
        ("Accepted", "False", "NoPool", "no VipPool admits the namespace"),
        (
            "Accepted",
            "False",
            "PoolNotFound, PoolNotAdmitted",
            "`spec.pool` names no pool, or one that does not admit the namespace",
        ),
        ("Accepted", "False", "VipNotInPool", "`vip` lies in no pool that admits the namespace"),
        (
            "Accepted",
            "False",
            "VipReserved",
            "`vip` is a node's or the API server's address, or inside the Service or pod CIDRs",
        ),
        (
            "Accepted",
            "False",
            "VipInUse",
            "another (older, or earlier allocated) service holds the VIP on the same ports, or its pool does not share",
        ),
        (
            "Accepted",
            "False",
            "NoAutoAssign, PoolExhausted",
            "no pool assigns automatically, or no free address is left",
        ),
        (
            "Accepted",
            "False",
            "ForwardingNotAllowed, FwmarkNotAllowed, InterfaceNotAllowed, DirectorsOutsidePool, RealServerNodesNotAllowed",
            "the pool does not allow the forwarding method, fwmark services, the interface, the directors or the real-server nodes",
        ),
        (
            "Accepted",
            "False",
            "VrrpConflict",
            "its VRRP settings contradict an older VirtualService's or Service's on a shared director",
        ),
        ("Accepted", "False", "NoVip", "standalone agent only: neither `vip` nor `fwmark`"),
        ("Programmed", "True", PROGRAMMED, "every director reports this generation applied without error"),
        (
            "Programmed",
            "False",
            PENDING,
            "some director has not applied this generation yet; the message names them",
        ),
        (
            "Programmed",
            "False",
            PROGRAMMING_FAILED,
            "an agent reported an error; the message has `node: error`",
        ),
        ("Programmed", "False", NO_DIRECTORS, "no node matches the directors' selector"),
        ("Programmed, Healthy", "False", NOT_ACCEPTED, "not accepted (see `Accepted`)"),
        (
            "Healthy",
            "True",
            HEALTHY,
            "at least one real server passes its health check on every director reporting it",
        ),
        ("Healthy", "False", NO_HEALTHY_REAL_SERVERS, "every real server fails its health check"),
        ("Healthy", "False", NO_REAL_SERVERS, "the service resolved to no real server"),
        ("Healthy", "Unknown", PENDING, "no director has reported on the real servers yet"),
        ("Ready", "True", "Ready", "Accepted, Programmed and Healthy are all True"),
        (
            "Ready",
            "False, Unknown",
            "the first part's",
            "the first of Accepted, Programmed, Healthy that is False (else Unknown), with its reason; the message names it",
        ),
        (
            "Reconciling",
            "True",
            PENDING,
            "accepted, and some director has not applied or reported this generation yet (kstatus: InProgress)",
        ),
        ("Reconciling", "False", "Reconciled", "nothing waits for the directors"),
        (
            "Stalled",
            "True",
            "Accepted's reason, ProgrammingFailed, NoDirectors",
            "only a person can help: not accepted, an agent's error, no director (kstatus: Failed)",
        ),
        ("Stalled", "False", "NotStalled", "nothing waits on a person"),
    ];
    let mut out = String::from(
        "\n## Conditions\n\n\
         `lastTransitionTime` changes only when a condition's status does; each condition\n\
         carries the `observedGeneration` it describes.\n\n\
         | Type | Status | Reason | When |\n|---|---|---|---|\n",
    );
    for (kind, status, reason, when) in rows {
        writeln!(out, "| {kind} | {status} | `{reason}` | {when} |").unwrap();
    }
    out.push_str(
        "\nEvents (`kubectl describe lvs NAME`), once per transition: a `Warning` whose reason is the\n\
         condition's when a condition turns False for a reason other than `Pending` and\n\
         `NotAccepted`; a `Normal` event `Programmed` when the service becomes programmed.\n\n\
         A Service of type LoadBalancer of class `lvs.dev/ipvs` is no VirtualService, but its\n\
         ports are judged with them (the older wins a key either way); its outcome is its\n\
         condition `lvs.dev/Accepted` (reasons `Accepted`, `NoAddress`, `Conflict`, `Invalid`,\n\
         `VipNotAllowed`, `VrrpConflict` and the pools' refusals) and its `status.loadBalancer.ingress`. Its annotations are listed in\n\
         [architecture.md](architecture.md#services-of-type-loadbalancer).\n",
    );
    out
}

fn render() -> String {
    let schema = schema();
    let mut out = HEADER.to_owned();
    section("what the user writes", "spec", &schema["properties"]["spec"], &mut out);
    section("what the controller reports", "status", &schema["properties"]["status"], &mut out);
    out.push_str(&conditions());
    out
}

#[test]
fn api_reference_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    let rendered = render();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == rendered,
        "docs/api.md is stale: run `UPDATE_DOCS=1 cargo test -p lvs-controller --test api_reference`"
    );
}

#[test]
fn every_spec_field_is_documented() {
    let rendered = render();
    let schema = schema();
    for field in schema["properties"]["spec"]["properties"].as_object().unwrap().keys() {
        assert!(rendered.contains(&format!("| `spec.{field}` |")), "spec.{field} missing");
    }
    assert!(rendered.contains("`spec.realServers[].weight`"));
}
