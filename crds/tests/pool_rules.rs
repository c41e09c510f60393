//! VipPool's rules on good and bad manifests, as rules.rs does for
//! VirtualService: every bad one is refused by the (emulated) API server — its
//! OpenAPI schema or a CEL rule, as the table says — and by the Rust side
//! (`VipPoolSpec::validate`), both naming the field; every good one passes
//! both; every CEL rule refuses some bad manifest and fits the cost budget.
//!
//! One rule is the Rust side's alone: a range must not end before it starts
//! (CEL cannot compare addresses); the controller reports it in the pool's
//! `Valid` condition and uses the pool's other entries.

mod common;

use std::collections::BTreeSet;

use common::{ApiServer, By, ServerError, open_api_schema, spec_json};
use lvs_crds::{VipPool, VipPoolSpec};
use serde_json::Value;

const GOOD: &[&str] = &[
    // Every field set.
    r#"{addresses: [192.0.2.0/28, "192.0.2.100-192.0.2.120", "2001:db8::/120", "2001:db8::1:10-2001:db8::1:20"],
        namespaces: [web, shop], namespaceSelector: {matchLabels: {team: web},
        matchExpressions: [{key: tier, operator: In, values: [frontend]}]},
        directors: {nodeSelector: {lvs.dev/director: "true"}, interface: eth0},
        realServerNodeSelector: {lvs.dev/real-server: "true"},
        forwardingMethods: [DirectRouting, NAT, Tunnel, FullNAT],
        allowFwmark: true, allowSharedVip: true, autoAssign: false}"#,
    // The least: addresses and one way to admit namespaces.
    "{addresses: [192.0.2.10/32], namespaces: [web]}",
    "{addresses: [198.51.100.7-198.51.100.7], namespaceSelector: {}}",
    // A CIDR with host bits set is its network.
    "{addresses: [192.0.2.9/24], namespaces: [web]}",
];

const BAD: &[(&str, &str, &str, By)] = &[
    ("no addresses", "{addresses: [], namespaces: [web]}", "spec.addresses", By::Schema),
    (
        "a name, not an address",
        "{addresses: [web.example.com], namespaces: [web]}",
        "spec.addresses",
        By::Cel,
    ),
    ("prefix too long", "{addresses: [192.0.2.0/33], namespaces: [web]}", "spec.addresses", By::Cel),
    ("half a range", "{addresses: [192.0.2.1-], namespaces: [web]}", "spec.addresses", By::Cel),
    (
        "a range of families",
        r#"{addresses: ["192.0.2.1-2001:db8::1"], namespaces: [web]}"#,
        "spec.addresses",
        By::Cel,
    ),
    (
        "three ends",
        "{addresses: [192.0.2.1-192.0.2.2-192.0.2.3], namespaces: [web]}",
        "spec.addresses",
        By::Cel,
    ),
    ("IPv4-mapped", r#"{addresses: ["::ffff:192.0.2.0/120"], namespaces: [web]}"#, "spec.addresses", By::Cel),
    ("admits nobody", "{addresses: [192.0.2.0/28]}", "spec.namespaces", By::Cel),
    (
        "no forwarding method",
        "{addresses: [192.0.2.0/28], namespaces: [web], forwardingMethods: []}",
        "spec.forwardingMethods",
        By::Schema,
    ),
    (
        "unknown forwarding",
        "{addresses: [192.0.2.0/28], namespaces: [web], forwardingMethods: [Magic]}",
        "spec.forwardingMethods[0]",
        By::Schema,
    ),
];

thread_local! {
    static API_SERVER: ApiServer = ApiServer::of::<VipPool>();
}

fn server_errors(spec: &Value) -> Vec<ServerError> {
    API_SERVER.with(|server| server.errors(spec))
}

/// What the Rust side says: deserialization errors (unknown enum values),
/// else `validate`'s.
fn rust_errors(spec: &str) -> Vec<String> {
    match lvs_crds::yaml::from_str::<VipPoolSpec>(spec) {
        // lvs_crds::yaml's error starts with the field's path.
        Err(error) => vec![format!("spec.{error}")],
        Ok(spec) => spec.validate().err().unwrap_or_default().iter().map(ToString::to_string).collect(),
    }
}

fn lines(errors: &[ServerError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}

#[test]
fn good_pools_pass_both_sides() {
    for spec in GOOD {
        let server = server_errors(&spec_json(spec));
        assert!(server.is_empty(), "API server refuses a good pool:\n{spec}\n{}", lines(&server));
        let rust = rust_errors(spec);
        assert!(rust.is_empty(), "Rust refuses a good pool:\n{spec}\n{}", rust.join("\n"));
    }
}

#[test]
fn bad_pools_fail_both_sides_naming_the_field() {
    for &(what, spec, field, by) in BAD {
        let server = server_errors(&spec_json(spec));
        let named = server.iter().any(|e| {
            e.by == by
                && e.path.starts_with("spec.")
                && field.starts_with(&e.path)
                && (by == By::Schema || e.rule.is_some())
        });
        assert!(named, "{what}: the API server's {by:?} does not name {field}:\n{}", lines(&server));
        let rust = rust_errors(spec);
        assert!(
            rust.iter().any(|e| e.contains(field)),
            "{what}: Rust does not name {field}:\n{}",
            rust.join("\n")
        );
    }
}

#[test]
fn a_reversed_range_is_the_rust_sides_alone() {
    let spec = "{addresses: [192.0.2.9-192.0.2.1], namespaces: [web]}";
    assert!(server_errors(&spec_json(spec)).is_empty(), "CEL cannot compare addresses");
    assert_eq!(
        rust_errors(spec),
        ["spec.addresses[0]: 192.0.2.9-192.0.2.1: the range ends (192.0.2.1) before it starts (192.0.2.9)"]
    );
}

#[test]
fn every_cel_rule_refuses_some_bad_pool_and_fits_the_cost_budget() {
    let failed: BTreeSet<String> = BAD
        .iter()
        .flat_map(|(_, spec, _, _)| server_errors(&spec_json(spec)))
        .filter_map(|e| e.rule)
        .collect();
    let schema = open_api_schema::<VipPool>();
    let compiled = kube_cel::compile_schema(&schema);
    assert!(!compiled.has_errors(), "{:?}", compiled.compilation_errors());
    let rules = cel_rules_with_nodes(&schema["properties"]["spec"]);
    assert!(rules.len() >= 2, "only {} CEL rules", rules.len());
    for (node, rule) in rules {
        assert!(failed.contains(&rule), "no bad pool fails the CEL rule\n  {rule}");
        let warnings = kube_cel::estimate_rule_cost(&rule, &kube_cel::compile_schema(node));
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}

fn cel_rules_with_nodes(schema: &Value) -> Vec<(&Value, String)> {
    let mut rules: Vec<_> = schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|rule| (schema, rule["rule"].as_str().unwrap().to_owned()))
        .collect();
    let children = schema["properties"].as_object().into_iter().flat_map(|p| p.values());
    for child in children.chain([&schema["items"], &schema["additionalProperties"]]) {
        if child.is_object() {
            rules.extend(cel_rules_with_nodes(child));
        }
    }
    rules
}
