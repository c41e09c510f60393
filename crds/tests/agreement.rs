//! The API server (OpenAPI schema + CEL rules of the generated CRD) and the
//! Rust side (deserialization + `validate`) accept exactly the same specs.
//!
//! Specs are drawn from near the rules' edges: every field is absent or takes
//! one of a few values, good and bad, so that most specs break some rule and
//! many break none. Two real servers sometimes share an address (duplicates
//! when their ports agree, an absent port being the default 0).

mod common;

use common::server_errors;
use lvs_crds::{VirtualServiceSpec, validate};
use proptest::{option, prelude::*, sample::select, strategy::ValueTree};
use serde_json::{Map, Value, json};

/// `Some(value)` sets the field, `None` leaves it out.
fn object(fields: impl IntoIterator<Item = (&'static str, Option<Value>)>) -> Value {
    let map: Map<String, Value> =
        fields.into_iter().filter_map(|(name, value)| Some((name.to_owned(), value?))).collect();
    Value::Object(map)
}

/// Present with probability `p`, then one of `values` (a value listed twice
/// is twice as likely).
fn maybe(p: f64, values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    option::weighted(p, select(values))
}

fn address(family: &str, i: usize) -> Value {
    match family {
        "v4" => json!(format!("192.168.17.{}", 21 + i)),
        "v6" => json!(format!("2001:db8::{}", 21 + i)),
        _ => json!(format!("rs{i}.example")),
    }
}

fn real_server(i: usize) -> impl Strategy<Value = Value> {
    (
        select([["v4"; 12].as_slice(), &["v6", "bad"]].concat()),
        maybe(0.2, vec![json!(80), json!(80), json!(8080), json!(0)]),
        maybe(0.3, vec![json!(2), json!(65535), json!(0), json!(65536)]),
        maybe(0.2, vec![json!(10), json!(10), json!(0)]),
        maybe(0.08, vec![json!(5), json!(20)]),
    )
        .prop_map(move |(family, port, weight, upper, lower)| {
            object([
                ("address", Some(address(family, i))),
                ("port", port),
                ("weight", weight),
                ("upperThreshold", upper),
                ("lowerThreshold", lower),
            ])
        })
}

fn real_servers() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(json!([]))),
        4 => real_server(0).prop_map(|a| Some(json!([a]))),
        4 => (real_server(0), real_server(1)).prop_map(|(a, b)| Some(json!([a, b]))),
        1 => (real_server(0), real_server(0)).prop_map(|(a, b)| Some(json!([a, b]))),
    ]
}

fn tunnel() -> impl Strategy<Value = Option<Value>> {
    let fields = (
        maybe(0.5, vec![json!("IPIP"), json!("GUE"), json!("GRE")]),
        maybe(0.4, vec![json!(6080)]),
        maybe(0.3, vec![json!("None"), json!("Checksum"), json!("RemoteChecksum")]),
    );
    option::weighted(
        0.08,
        fields.prop_map(|(encapsulation, port, checksum)| {
            object([("encapsulation", encapsulation), ("port", port), ("checksum", checksum)])
        }),
    )
}

fn persistence() -> impl Strategy<Value = Option<Value>> {
    let fields = (
        maybe(0.5, vec![json!(300), json!(300), json!(0)]),
        maybe(0.4, vec![json!("255.255.255.0"), json!("255.0.255.0"), json!("64"), json!("129")]),
    );
    option::weighted(
        0.2,
        fields.prop_map(|(timeout, netmask)| object([("timeoutSeconds", timeout), ("netmask", netmask)])),
    )
}

fn health_check() -> impl Strategy<Value = Option<Value>> {
    let fields = (
        maybe(0.6, vec![json!("TCP"), json!("HTTP"), json!("UDP"), json!("None")]),
        maybe(0.2, vec![json!("/"), json!("/"), json!("health"), json!("/a\r\nb"), json!("/a b")]),
        maybe(0.2, vec![json!("ping")]),
        maybe(0.3, vec![json!(2), json!(2), json!(0)]),
        maybe(0.3, vec![json!(1), json!(5)]),
        maybe(0.2, vec![json!([200]), json!([700])]),
    );
    option::weighted(
        0.3,
        fields.prop_map(|(kind, path, payload, interval, timeout, status)| {
            object([
                ("type", kind),
                ("path", path),
                ("payload", payload),
                ("intervalSeconds", interval),
                ("timeoutSeconds", timeout),
                ("expectedStatus", status),
            ])
        }),
    )
}

fn spec() -> impl Strategy<Value = Value> {
    let v4 = json!("192.168.16.100");
    let key = (
        maybe(
            0.9,
            vec![
                v4.clone(),
                v4.clone(),
                v4.clone(),
                v4.clone(),
                v4,
                json!("2001:db8::100"),
                json!("192.168.16.300"),
            ],
        ),
        maybe(0.1, vec![json!(1), json!(1), json!(0)]),
        maybe(
            0.9,
            vec![json!(80), json!(80), json!(80), json!(80), json!(80), json!(8080), json!(0), json!(70000)],
        ),
        maybe(0.3, vec![json!("TCP"), json!("UDP"), json!("SCTP")]),
        maybe(0.1, vec![json!(true), json!(false)]),
    );
    let scheduling = (
        maybe(0.3, vec![json!("wlc"), json!("sh"), json!("mh"), json!("magic")]),
        maybe(
            0.15,
            vec![
                json!([]),
                json!(["sh-port"]),
                json!(["mh-port", "mh-fallback"]),
                json!(["sh-port", "mh-port"]),
            ],
        ),
        maybe(0.6, vec![json!("NAT"), json!("DirectRouting"), json!("Tunnel"), json!("FullNAT")]),
        tunnel(),
        persistence(),
    );
    let servers = (
        real_servers(),
        maybe(
            0.15,
            vec![json!({"nodeSelector": {"role": "web"}}), json!({"port": 80}), json!({"port": 8080})],
        ),
        maybe(0.1, vec![json!({"name": "web"}), json!({"name": "web", "port": 8080})]),
        maybe(
            0.15,
            vec![json!({"address": "192.168.16.200"}), json!({"address": "2001:db8::200", "port": 8080})],
        ),
    );
    let operation = (
        health_check(),
        maybe(
            0.15,
            vec![
                json!({"vrrp": {"virtualRouterId": 51}}),
                json!({"vrrp": {"virtualRouterId": 0}}),
                json!({"vrrp": {"virtualRouterId": 51, "advertIntervalMs": 5}}),
                json!({"vrrp": {"virtualRouterId": 51, "advertIntervalMs": 1005}}),
            ],
        ),
        maybe(0.15, vec![json!({"interface": "eth0"}), json!({"interface": "an-interface-name"})]),
    );
    (key, scheduling, servers, operation).prop_map(
        |(
            (vip, fwmark, port, protocol, one_packet),
            (scheduler, flags, forwarding, tunnel, persistence),
            (real_servers, selector, backend, sorry),
            (health_check, failover, directors),
        )| {
            object([
                ("vip", vip),
                ("fwmark", fwmark),
                ("port", port),
                ("protocol", protocol),
                ("onePacket", one_packet),
                ("scheduler", scheduler),
                ("schedulerFlags", flags),
                ("forwarding", forwarding),
                ("tunnel", tunnel),
                ("persistence", persistence),
                ("realServers", real_servers),
                ("realServerSelector", selector),
                ("backendService", backend),
                ("sorryServer", sorry),
                ("healthCheck", health_check),
                ("failover", failover),
                ("directors", directors),
            ])
        },
    )
}

/// The Rust side's verdict: deserialization, then validation.
fn rust_errors(spec: &Value) -> Vec<String> {
    match serde_json::from_value::<VirtualServiceSpec>(spec.clone()) {
        Err(error) => vec![error.to_string()],
        Ok(spec) => validate(&spec).err().into_iter().flatten().map(|e| e.to_string()).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn api_server_and_rust_agree(spec in spec()) {
        let server = server_errors(&spec);
        let rust = rust_errors(&spec);
        prop_assert_eq!(
            server.is_empty(),
            rust.is_empty(),
            "\nspec: {}\nAPI server: {:#?}\nRust: {:#?}",
            spec,
            server.iter().map(ToString::to_string).collect::<Vec<_>>(),
            rust
        );
    }
}

/// The generator must keep producing both kinds, or the agreement above
/// proves little.
#[test]
fn specs_are_a_mix_of_good_and_bad() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = spec();
    let samples = 1000;
    let good = (0..samples)
        .filter(|_| server_errors(&strategy.new_tree(&mut runner).unwrap().current()).is_empty())
        .count();
    println!("{good} of {samples} generated specs are valid");
    assert!(good >= samples / 50 && good <= samples / 2, "{good} of {samples} generated specs are valid");
}
