//! Small builders of cluster objects for the translation tests.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{Node, NodeAddress, NodeStatus},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use lvs_crds::{LvsNodeSpec, Translation, VirtualService, VirtualServiceSpec, assemble};

/// A VirtualService `namespace/name` created at second `created` of the epoch,
/// with the spec written in YAML.
pub fn virtual_service(namespace: &str, name: &str, created: i64, spec: &str) -> VirtualService {
    let spec: VirtualServiceSpec = lvs_crds::yaml::from_str(spec).expect("a spec in YAML");
    with_meta(namespace, name, created, spec)
}

pub fn with_meta(namespace: &str, name: &str, created: i64, spec: VirtualServiceSpec) -> VirtualService {
    let mut vs = VirtualService::new(name, spec);
    vs.metadata.namespace = Some(namespace.to_owned());
    vs.metadata.uid = Some(format!("uid-{namespace}-{name}"));
    vs.metadata.generation = Some(1);
    vs.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("a valid second")));
    vs
}

/// A node with these labels and InternalIPs.
pub fn node(name: &str, labels: &[(&str, &str)], internal_ips: &[&str]) -> Node {
    let addresses = internal_ips
        .iter()
        .map(|ip| NodeAddress { type_: "InternalIP".to_owned(), address: (*ip).to_owned() })
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(strings(labels)),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus { addresses: Some(addresses), ..NodeStatus::default() }),
        ..Node::default()
    }
}

/// A director node (label `lvs.dev/director: "true"`).
pub fn director(name: &str, ip: &str) -> Node {
    node(name, &[("lvs.dev/director", "true")], &[ip])
}

pub fn annotated(mut node: Node, annotations: &[(&str, &str)]) -> Node {
    node.metadata.annotations = Some(strings(annotations));
    node
}

/// An EndpointSlice of Service `namespace/service` with one TCP port and
/// endpoints (address, ready condition).
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    port: i32,
    endpoints: &[(&str, Option<bool>)],
) -> EndpointSlice {
    let family = if endpoints.iter().any(|(a, _)| a.contains(':')) { "IPv6" } else { "IPv4" };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(strings(&[("kubernetes.io/service-name", service)])),
            ..ObjectMeta::default()
        },
        address_type: family.to_owned(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(address, ready)| Endpoint {
                    addresses: vec![(*address).to_owned()],
                    conditions: Some(EndpointConditions { ready: *ready, ..EndpointConditions::default() }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            port: Some(port),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Every node's whole state, reassembled from its chunks.
pub fn states(translation: &Translation) -> BTreeMap<String, LvsNodeSpec> {
    let mut chunks: BTreeMap<&str, Vec<&LvsNodeSpec>> = BTreeMap::new();
    for object in &translation.lvs_nodes {
        chunks.entry(object.spec.node.as_str()).or_default().push(&object.spec);
    }
    chunks
        .into_iter()
        .map(|(node, chunks)| (node.to_owned(), assemble(chunks).expect("a node's chunks are complete")))
        .collect()
}

/// The whole state of `node`; panics if it has none.
pub fn state(translation: &Translation, node: &str) -> LvsNodeSpec {
    states(translation).remove(node).unwrap_or_else(|| panic!("node {node} has no LvsNode"))
}

/// The objects as the API server would receive them.
pub fn json(translation: &Translation) -> Vec<String> {
    translation.lvs_nodes.iter().map(|o| serde_json::to_string(o).unwrap()).collect()
}
