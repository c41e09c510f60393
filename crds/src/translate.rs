//! The translation VirtualServices (+ Nodes, EndpointSlices) -> per-node
//! [`LvsNode`] desired state. Pure: no IO, no clock, no randomness; the same
//! input in any order gives byte-identical output.

use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1::Node, discovery::v1::EndpointSlice};

use crate::{LvsNode, ValidationError, VirtualService};

/// Largest serialized size of one LvsNode object by default: 1 MiB (etcd
/// refuses objects over 1.5 MiB; the rest is headroom for metadata and status).
pub const DEFAULT_MAX_OBJECT_BYTES: usize = 1 << 20;

/// Everything the translation reads.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub virtual_services: Vec<VirtualService>,
    pub nodes: Vec<Node>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// Knobs of the translation.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    /// VIPs must lie inside one of these (empty = any VIP allowed).
    pub allowed_vip_cidrs: Vec<ipnet::IpNet>,
    /// Max serialized size (JSON) of one LvsNode object.
    pub max_object_bytes: usize,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self { allowed_vip_cidrs: Vec::new(), max_object_bytes: DEFAULT_MAX_OBJECT_BYTES }
    }
}

/// The translation's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    /// Every LvsNode that should exist, sorted by name; byte-identical for identical input.
    pub lvs_nodes: Vec<LvsNode>,
    /// One verdict per VirtualService, keyed by (namespace, name).
    pub verdicts: BTreeMap<(String, String), Verdict>,
}

/// Whether a VirtualService is programmed, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Another VirtualService (older) claims the same (vip, port, protocol) / fwmark.
    Conflict {
        winner: (String, String),
        key: String,
    },
    Invalid(Vec<ValidationError>),
    VipNotAllowed {
        vip: String,
    },
}

impl Verdict {
    /// The `reason` of the `Accepted` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Accepted => "Accepted",
            Verdict::Conflict { .. } => "Conflict",
            Verdict::Invalid(_) => "Invalid",
            Verdict::VipNotAllowed { .. } => "VipNotAllowed",
        }
    }

    /// The `message` of the `Accepted` condition.
    pub fn message(&self) -> String {
        match self {
            Verdict::Accepted => "valid, and no older VirtualService claims its key".to_owned(),
            Verdict::Conflict { winner: (namespace, name), key } => {
                format!("{key} is already claimed by the older VirtualService {namespace}/{name}")
            }
            Verdict::Invalid(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            Verdict::VipNotAllowed { vip } => format!("vip {vip} lies outside the allowed VIP CIDRs"),
        }
    }
}

/// Resolve the cluster's VirtualServices into the LvsNode objects of every
/// node, and judge each VirtualService.
pub fn translate(state: &ClusterState, options: &TranslateOptions) -> Translation {
    // Skeleton: the real translation follows.
    let _ = (state, options);
    Translation::default()
}
