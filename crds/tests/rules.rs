//! The API's rules on good and bad manifests: every bad one must be refused by
//! the (emulated) API server — by its OpenAPI schema or by a CEL rule, as the
//! table says — and by the Rust side, both naming the field; every good one
//! must pass both; and every CEL rule of the generated CRD must refuse at least
//! one bad manifest, so that a rule that can never fail is caught.

mod common;

use std::collections::BTreeSet;

use common::{By, open_api_schema, rust_errors, server_errors, spec_json};
use lvs_crds::{LvsNode, VirtualService};
use serde_json::Value;

/// Specs the API accepts.
const GOOD: &[&str] = &[
    // The documented example (docs/api.md), every field set.
    r#"{vip: 192.168.16.100, port: 80, protocol: TCP, scheduler: wlc, forwarding: DirectRouting,
        persistence: {timeoutSeconds: 300, netmask: 255.255.255.255},
        realServers: [{address: 192.168.16.21, port: 80, weight: 1}, {address: 192.168.16.22}],
        realServerSelector: {nodeSelector: {role: web}, port: 80},
        directors: {nodeSelector: {lvs.dev/director: "true"}, interface: eth0},
        healthCheck: {type: HTTP, path: /, port: 80, expectedStatus: [200, 204], bodyContains: ok,
                      intervalSeconds: 2, timeoutSeconds: 1, rise: 2, fall: 3, onFailure: Quiesce},
        failover: {vrrp: {virtualRouterId: 51, advertIntervalMs: 1000, preempt: true}},
        connectionSync: true, drainSeconds: 30, sorryServer: {address: 192.168.16.200, port: 80}}"#,
    // No vip: one is allocated from a pool (named, or the first admitting one).
    r#"{port: 80, pool: lab, realServers: [{address: 192.168.16.21}]}"#,
    r#"{port: 443, forwarding: NAT, backendService: {name: web}}"#,
    // NAT maps ports and may use a backend Service.
    r#"{vip: 192.168.16.100, port: 80, forwarding: NAT, scheduler: wrr,
        realServers: [{address: 192.168.17.21, port: 8080, weight: 2, upperThreshold: 100, lowerThreshold: 50}],
        backendService: {name: web, port: 8080}}"#,
    r#"{vip: 192.168.16.100, port: 443, forwarding: FullNAT, backendService: {name: web}}"#,
    // Firewall mark services: the family is the real servers'.
    r#"{fwmark: 1, scheduler: rr, realServers: [{address: 192.168.16.21}, {address: 192.168.16.22}]}"#,
    r#"{fwmark: 4294967295, persistence: {netmask: "64"}, realServers: [{address: "2001:db8::21"}]}"#,
    // IPv6 with a prefix-length netmask; port 0 with persistence.
    r#"{vip: "2001:db8::100", port: 0, persistence: {timeoutSeconds: 60, netmask: "64"},
        realServers: [{address: "2001:db8::21"}]}"#,
    // UDP: one-packet scheduling and a payload check.
    r#"{vip: 192.168.16.100, port: 53, protocol: UDP, onePacket: true, forwarding: NAT,
        healthCheck: {type: UDP, payload: ping}, realServers: [{address: 192.168.17.21}]}"#,
    // Tunnel with GUE, scheduler flags of their scheduler.
    r#"{vip: 192.168.16.100, port: 80, forwarding: Tunnel, scheduler: mh, schedulerFlags: [mh-fallback, mh-port],
        tunnel: {encapsulation: GUE, port: 6080, checksum: RemoteChecksum},
        realServers: [{address: 192.168.17.21, port: 80}]}"#,
    r#"{vip: 192.168.16.100, port: 80, forwarding: Tunnel, scheduler: sh, schedulerFlags: [sh-port],
        tunnel: {encapsulation: GRE, checksum: Checksum}, realServers: [{address: 192.168.17.21}]}"#,
    // A real server's port 0 is the default: the service's port. One address
    // may serve on several ports (NAT).
    r#"{vip: 192.168.16.100, port: 80, forwarding: NAT,
        realServers: [{address: 192.168.16.21, port: 0}, {address: 192.168.16.21, port: 8080},
                      {address: 192.168.16.22}, {address: 192.168.16.22, port: 8080}]}"#,
    // Paths and hosts with everything but control characters (and spaces in paths).
    r#"{vip: 192.168.16.100, port: 443, healthCheck: {type: HTTPS, path: "/health?full=1&x=%20#top",
        host: "web.example:8443", expectedStatus: [200]}, realServers: [{address: 192.168.16.21}]}"#,
    r#"{vip: 192.168.16.100, port: 80, failover: {vrrp: {virtualRouterId: 1, advertIntervalMs: 10}},
        realServers: [{address: 192.168.16.21}]}"#,
    // Only a sorry server; every other scheduler name.
    r#"{vip: 192.168.16.100, port: 80, sorryServer: {address: 192.168.16.200}}"#,
    r#"{vip: 192.168.16.100, port: 80, scheduler: twos, realServerSelector: {nodeSelector: {role: web}}}"#,
    r#"{vip: 192.168.16.100, port: 25, protocol: SCTP, scheduler: ovf, persistence: {netmask: 0.0.0.0},
        realServers: [{address: 192.168.16.21, weight: 0}], healthCheck: {type: None}}"#,
];

/// (what is wrong, spec, field both sides must name, what refuses it server-side)
const BAD: &[(&str, &str, &str, By)] = &[
    (
        "bad vip",
        "{vip: 192.168.16.300, port: 80, realServers: [{address: 192.168.16.21}]}",
        "spec.vip",
        By::Cel,
    ),
    (
        "vip is a name",
        "{vip: web.example.com, port: 80, realServers: [{address: 192.168.16.21}]}",
        "spec.vip",
        By::Cel,
    ),
    (
        "IPv4-mapped vip",
        r#"{vip: "::ffff:192.168.16.100", port: 80, sorryServer: {address: "2001:db8::1"}}"#,
        "spec.vip",
        By::Cel,
    ),
    (
        "bad real server address",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: web1}]}",
        "spec.realServers[0].address",
        By::Cel,
    ),
    (
        "bad sorry server address",
        "{vip: 192.168.16.100, port: 80, sorryServer: {address: 192.168.16}}",
        "spec.sorryServer.address",
        By::Cel,
    ),
    (
        "port 70000",
        "{vip: 192.168.16.100, port: 70000, realServers: [{address: 192.168.16.21}]}",
        "spec.port",
        By::Schema,
    ),
    (
        "port -1",
        "{vip: 192.168.16.100, port: -1, realServers: [{address: 192.168.16.21}]}",
        "spec.port",
        By::Schema,
    ),
    (
        "real server port 65536",
        "{vip: 192.168.16.100, port: 80, forwarding: NAT, realServers: [{address: 192.168.16.21, port: 65536}]}",
        "spec.realServers[0].port",
        By::Schema,
    ),
    (
        "the same real server twice",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21}, {address: 192.168.16.21}]}",
        "spec.realServers[1]",
        By::Schema,
    ),
    (
        "the same real server twice, once with the default port 0",
        "{vip: 192.168.16.100, port: 80, forwarding: NAT,
          realServers: [{address: 192.168.16.21, port: 0}, {address: 192.168.16.22}, {address: 192.168.16.21}]}",
        "spec.realServers[2]",
        By::Schema,
    ),
    (
        "the same real server and port twice",
        "{vip: 192.168.16.100, port: 80, forwarding: NAT,
          realServers: [{address: 192.168.16.21, port: 8080}, {address: 192.168.16.21, port: 8080, weight: 2}]}",
        "spec.realServers[1]",
        By::Schema,
    ),
    (
        "unknown scheduler",
        "{vip: 192.168.16.100, port: 80, scheduler: fastest, realServers: [{address: 192.168.16.21}]}",
        "spec.scheduler",
        By::Schema,
    ),
    (
        "unknown protocol",
        "{vip: 192.168.16.100, port: 80, protocol: ICMP, realServers: [{address: 192.168.16.21}]}",
        "spec.protocol",
        By::Schema,
    ),
    (
        "unknown forwarding",
        "{vip: 192.168.16.100, port: 80, forwarding: Masquerade, realServers: [{address: 192.168.16.21}]}",
        "spec.forwarding",
        By::Schema,
    ),
    (
        "port mapping with DirectRouting",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21, port: 80}, {address: 192.168.16.22, port: 8080}]}",
        "spec.realServers[1].port",
        By::Cel,
    ),
    (
        "port mapping with Tunnel",
        "{vip: 192.168.16.100, port: 80, forwarding: Tunnel, realServers: [{address: 192.168.17.21, port: 8080}]}",
        "spec.realServers[0].port",
        By::Cel,
    ),
    (
        "real server port with a DirectRouting fwmark",
        "{fwmark: 1, realServers: [{address: 192.168.16.21, port: 80}]}",
        "spec.realServers[0].port",
        By::Cel,
    ),
    (
        "selector port mapping with DirectRouting",
        "{vip: 192.168.16.100, port: 80, realServerSelector: {nodeSelector: {role: web}, port: 8080}}",
        "spec.realServerSelector.port",
        By::Cel,
    ),
    (
        "sorry server port mapping with DirectRouting",
        "{vip: 192.168.16.100, port: 80, sorryServer: {address: 192.168.16.200, port: 8080}}",
        "spec.sorryServer.port",
        By::Cel,
    ),
    (
        "tunnel options without Tunnel",
        "{vip: 192.168.16.100, port: 80, forwarding: NAT, tunnel: {encapsulation: IPIP}, realServers: [{address: 192.168.17.21}]}",
        "spec.tunnel",
        By::Cel,
    ),
    (
        "GUE without port",
        "{vip: 192.168.16.100, port: 80, forwarding: Tunnel, tunnel: {encapsulation: GUE}, realServers: [{address: 192.168.17.21}]}",
        "spec.tunnel.port",
        By::Cel,
    ),
    (
        "remote checksum with IPIP",
        "{vip: 192.168.16.100, port: 80, forwarding: Tunnel, tunnel: {checksum: RemoteChecksum}, realServers: [{address: 192.168.17.21}]}",
        "spec.tunnel.checksum",
        By::Cel,
    ),
    (
        "fwmark together with vip",
        "{vip: 192.168.16.100, fwmark: 1, realServers: [{address: 192.168.16.21}]}",
        "spec.fwmark",
        By::Cel,
    ),
    (
        "fwmark together with port",
        "{fwmark: 1, port: 80, realServers: [{address: 192.168.16.21}]}",
        "spec.fwmark",
        By::Cel,
    ),
    ("fwmark 0", "{fwmark: 0, realServers: [{address: 192.168.16.21}]}", "spec.fwmark", By::Schema),
    // Without vip, the VIP is allocated from a pool; the port is still required.
    ("neither fwmark nor port", "{realServers: [{address: 192.168.16.21}]}", "spec.port", By::Cel),
    ("empty pool name", "{port: 80, pool: '', realServers: [{address: 192.168.16.21}]}", "spec.pool", By::Schema),
    (
        "vip without port",
        "{vip: 192.168.16.100, realServers: [{address: 192.168.16.21}]}",
        "spec.port",
        By::Cel,
    ),
    (
        "weight -1",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21, weight: -1}]}",
        "spec.realServers[0].weight",
        By::Schema,
    ),
    (
        "weight 65536",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21, weight: 65536}]}",
        "spec.realServers[0].weight",
        By::Schema,
    ),
    (
        "port 0 without persistence",
        "{vip: 192.168.16.100, port: 0, realServers: [{address: 192.168.16.21}]}",
        "spec.port",
        By::Cel,
    ),
    (
        "backendService with DirectRouting",
        "{vip: 192.168.16.100, port: 80, backendService: {name: web}}",
        "spec.backendService",
        By::Cel,
    ),
    (
        "backendService with Tunnel",
        "{vip: 192.168.16.100, port: 80, forwarding: Tunnel, backendService: {name: web}}",
        "spec.backendService",
        By::Cel,
    ),
    (
        "sh flag with wlc",
        "{vip: 192.168.16.100, port: 80, schedulerFlags: [sh-port], realServers: [{address: 192.168.16.21}]}",
        "spec.schedulerFlags",
        By::Cel,
    ),
    (
        "mh flag with sh",
        "{vip: 192.168.16.100, port: 80, scheduler: sh, schedulerFlags: [sh-port, mh-fallback], realServers: [{address: 192.168.16.21}]}",
        "spec.schedulerFlags",
        By::Cel,
    ),
    (
        "unknown scheduler flag",
        "{vip: 192.168.16.100, port: 80, scheduler: sh, schedulerFlags: [sh-random], realServers: [{address: 192.168.16.21}]}",
        "spec.schedulerFlags[0]",
        By::Schema,
    ),
    (
        "onePacket with TCP",
        "{vip: 192.168.16.100, port: 80, onePacket: true, realServers: [{address: 192.168.16.21}]}",
        "spec.onePacket",
        By::Cel,
    ),
    (
        "VRRP id 0",
        "{vip: 192.168.16.100, port: 80, failover: {vrrp: {virtualRouterId: 0}}, realServers: [{address: 192.168.16.21}]}",
        "spec.failover.vrrp.virtualRouterId",
        By::Schema,
    ),
    (
        "VRRP id 256",
        "{vip: 192.168.16.100, port: 80, failover: {vrrp: {virtualRouterId: 256}}, realServers: [{address: 192.168.16.21}]}",
        "spec.failover.vrrp.virtualRouterId",
        By::Schema,
    ),
    (
        "VRRP advert every 5 ms",
        "{vip: 192.168.16.100, port: 80, failover: {vrrp: {virtualRouterId: 51, advertIntervalMs: 5}}, realServers: [{address: 192.168.16.21}]}",
        "spec.failover.vrrp.advertIntervalMs",
        By::Schema,
    ),
    (
        "VRRP advert every 1005 ms (not whole centiseconds)",
        "{vip: 192.168.16.100, port: 80, failover: {vrrp: {virtualRouterId: 51, advertIntervalMs: 1005}}, realServers: [{address: 192.168.16.21}]}",
        "spec.failover.vrrp.advertIntervalMs",
        By::Cel,
    ),
    (
        "failover with fwmark",
        "{fwmark: 1, failover: {vrrp: {virtualRouterId: 51}}, realServers: [{address: 192.168.16.21}]}",
        "spec.failover",
        By::Cel,
    ),
    (
        "non-contiguous netmask",
        "{vip: 192.168.16.100, port: 80, persistence: {netmask: 255.0.255.0}, realServers: [{address: 192.168.16.21}]}",
        "spec.persistence.netmask",
        By::Cel,
    ),
    (
        "IPv4 netmask on IPv6",
        r#"{vip: "2001:db8::100", port: 80, persistence: {netmask: 255.255.255.0}, realServers: [{address: "2001:db8::21"}]}"#,
        "spec.persistence.netmask",
        By::Cel,
    ),
    (
        "IPv6 prefix 129",
        r#"{vip: "2001:db8::100", port: 80, persistence: {netmask: "129"}, realServers: [{address: "2001:db8::21"}]}"#,
        "spec.persistence.netmask",
        By::Cel,
    ),
    (
        "persistence timeout 0",
        "{vip: 192.168.16.100, port: 80, persistence: {timeoutSeconds: 0}, realServers: [{address: 192.168.16.21}]}",
        "spec.persistence.timeoutSeconds",
        By::Schema,
    ),
    (
        "lower threshold above upper",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21, upperThreshold: 10, lowerThreshold: 20}]}",
        "spec.realServers[0].lowerThreshold",
        By::Cel,
    ),
    (
        "lower threshold without upper",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21, lowerThreshold: 20}]}",
        "spec.realServers[0].lowerThreshold",
        By::Cel,
    ),
    (
        "upper threshold 0",
        "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21, upperThreshold: 0}]}",
        "spec.realServers[0].upperThreshold",
        By::Schema,
    ),
    (
        "mixed families",
        r#"{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21}, {address: "2001:db8::22"}]}"#,
        "spec.realServers[1].address",
        By::Cel,
    ),
    (
        "mixed families under fwmark",
        r#"{fwmark: 1, realServers: [{address: 192.168.16.21}, {address: "2001:db8::22"}]}"#,
        "spec.realServers[1].address",
        By::Cel,
    ),
    (
        "sorry server of another family",
        r#"{vip: 192.168.16.100, port: 80, sorryServer: {address: "2001:db8::200"}}"#,
        "spec.sorryServer.address",
        By::Cel,
    ),
    ("no real servers", "{vip: 192.168.16.100, port: 80}", "spec.realServers", By::Cel),
    (
        "health check timeout above interval",
        "{vip: 192.168.16.100, port: 80, healthCheck: {intervalSeconds: 2, timeoutSeconds: 5}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.timeoutSeconds",
        By::Cel,
    ),
    (
        "health check interval 0",
        "{vip: 192.168.16.100, port: 80, healthCheck: {intervalSeconds: 0, timeoutSeconds: 0}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.intervalSeconds",
        By::Schema,
    ),
    (
        "health check rise 0",
        "{vip: 192.168.16.100, port: 80, healthCheck: {rise: 0}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.rise",
        By::Schema,
    ),
    (
        "HTTP path on a TCP check",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: TCP, path: /health}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.path",
        By::Cel,
    ),
    (
        "CR LF in the path (a header injected into the check's request)",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTP, path: \"/health\\r\\nX-Injected: 1\"}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.path",
        By::Cel,
    ),
    (
        "space in the path",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTP, path: '/health HTTP/1.0'}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.path",
        By::Cel,
    ),
    (
        "DEL in the path",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTP, path: \"/\\x7f\"}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.path",
        By::Cel,
    ),
    (
        "LF in the host",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTPS, host: \"web.example\\nX-Injected: 1\"}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.host",
        By::Cel,
    ),
    (
        "NUL in the host",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTP, host: \"web\\0.example\"}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.host",
        By::Cel,
    ),
    (
        "path without slash",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTP, path: health}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.path",
        By::Cel,
    ),
    (
        "payload on an HTTP check",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTP, payload: ping}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.payload",
        By::Cel,
    ),
    (
        "status code 700",
        "{vip: 192.168.16.100, port: 80, healthCheck: {type: HTTP, expectedStatus: [700]}, realServers: [{address: 192.168.16.21}]}",
        "spec.healthCheck.expectedStatus[0]",
        By::Schema,
    ),
    (
        "interface name too long",
        "{vip: 192.168.16.100, port: 80, directors: {interface: an-interface-name}, realServers: [{address: 192.168.16.21}]}",
        "spec.directors.interface",
        By::Schema,
    ),
];

#[test]
fn good_specs_pass_both_sides() {
    for spec in GOOD {
        let server = server_errors(&spec_json(spec));
        assert!(server.is_empty(), "API server refuses a good spec:\n{spec}\n{}", lines(&server));
        let rust = rust_errors(spec);
        assert!(rust.is_empty(), "Rust refuses a good spec:\n{spec}\n{}", rust.join("\n"));
    }
}

#[test]
fn bad_specs_fail_both_sides_naming_the_field() {
    assert!(BAD.len() >= 20);
    for &(what, spec, field, by) in BAD {
        let server = server_errors(&spec_json(spec));
        // The server names the field or, for rules on a list, the list.
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
fn every_cel_rule_refuses_some_bad_spec() {
    let failed: BTreeSet<String> = BAD
        .iter()
        .flat_map(|(_, spec, _, _)| server_errors(&spec_json(spec)))
        .filter_map(|e| e.rule)
        .collect();
    let rules = cel_rules(&open_api_schema::<VirtualService>()["properties"]["spec"]);
    assert!(rules.len() >= 20, "only {} CEL rules", rules.len());
    for rule in &rules {
        assert!(failed.contains(rule), "no bad spec fails the CEL rule\n  {rule}");
    }
}

#[test]
fn every_cel_rule_compiles_and_fits_the_cost_budget() {
    for schema in [open_api_schema::<VirtualService>(), open_api_schema::<LvsNode>()] {
        let compiled = kube_cel::compile_schema(&schema);
        assert!(!compiled.has_errors(), "{:?}", compiled.compilation_errors());
        for (node, rule) in cel_rules_with_nodes(&schema) {
            let warnings = kube_cel::estimate_rule_cost(&rule, &kube_cel::compile_schema(node));
            assert!(warnings.is_empty(), "{rule}: {warnings:?}");
        }
    }
}

#[test]
#[ignore = "prints what both sides say about every bad spec, for reading"]
fn show_messages() {
    for &(what, spec, _, _) in BAD {
        println!(
            "== {what}\n{}  rust: {}",
            lines(&server_errors(&spec_json(spec))),
            rust_errors(spec).join("\n        ")
        );
    }
}

/// Every `x-kubernetes-validations` rule in a schema, depth first.
fn cel_rules(schema: &Value) -> Vec<String> {
    cel_rules_with_nodes(schema).into_iter().map(|(_, rule)| rule).collect()
}

/// Every `x-kubernetes-validations` rule with the schema node it sits on (its `self`).
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

fn lines(errors: &[common::ServerError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}
