//! `VipPool`: addresses the cluster's administrator hands to namespaces, and
//! what the VirtualServices that use them may do on the nodes.
//!
//! Cluster-scoped: tenants (who may write VirtualServices in their
//! namespace) cannot write it. Every VirtualService of the cluster mode takes
//! its VIP, its directors and its permissions from a pool that admits its
//! namespace (see `docs/security.md`).

// KubeSchema copies each struct it derives into a private scope, where
// `pub` is unreachable; the lint would flag every copy.
#![allow(unreachable_pub)]

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{
    ValidationError,
    validation::parse_ip,
    virtual_service::{AddressFamily, Directors, Forwarding},
};

/// Most entries of `spec.addresses` (bounds the CEL rule that checks them).
pub const MAX_ADDRESS_ENTRIES: usize = 64;

/// A pool of VIPs and the rules for the VirtualServices that use it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lvs.dev",
    version = "v1alpha1",
    kind = "VipPool",
    doc = "A pool of virtual IP addresses owned by the cluster's administrator: which namespaces may use it, which nodes direct its VIPs, and what its VirtualServices may change on nodes.",
    shortname = "vippool",
    category = "lvs",
    status = "VipPoolStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"USED","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"FREE","type":"integer","jsonPath":".status.free"}"#,
    printcolumn = r#"{"name":"AUTO","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("size(self.namespaces) > 0 || has(self.namespaceSelector)")
        .message("a pool admits no namespace: set namespaces or namespaceSelector")
        .field_path(".namespaces")
)]
#[serde(rename_all = "camelCase")]
pub struct VipPoolSpec {
    /// The pool's addresses: CIDRs (`192.0.2.0/28`, `2001:db8::/120`) or
    /// ranges `first-last` (`192.0.2.10-192.0.2.20`), IPv4 and IPv6. A CIDR of
    /// IPv4 shorter than /31 leaves out its network and broadcast addresses,
    /// one of IPv6 shorter than /127 its subnet-router anycast address.
    #[schemars(length(min = 1, max = MAX_ADDRESS_ENTRIES), inner(length(min = 1, max = 91)))]
    #[x_kube(validation = Rule::new(
        "self.all(a, isCIDR(a) || (size(a.split('-')) == 2 && isIP(a.split('-')[0]) && isIP(a.split('-')[1]) \
         && ip(a.split('-')[0]).family() == ip(a.split('-')[1]).family()))"
    ).message("each entry must be a CIDR or a range first-last of two addresses of one family"))]
    pub addresses: Vec<String>,

    /// Namespaces that may use the pool, by name.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,

    /// Namespaces that may use the pool, by their labels (`{}`: every
    /// namespace). A namespace is admitted when `namespaces` names it or this
    /// selects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// The nodes that direct the pool's VIPs, and the interface that holds
    /// them. Absent: the nodes labelled `lvs.dev/director: "true"`. A
    /// VirtualService's own `directors.nodeSelector` only narrows this set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directors: Option<Directors>,

    /// Labels of the nodes that the pool's DirectRouting and Tunnel services
    /// may make real servers (the VIP bound on `lvs0`, ARP and rp_filter
    /// sysctls), and that `realServerSelector` may select. Absent: no node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_server_node_selector: Option<BTreeMap<String, String>>,

    /// The forwarding methods the pool's services may use. FullNAT (the
    /// directors masquerade to any real server address) only when listed.
    #[serde(default = "default_forwarding_methods")]
    #[schemars(length(min = 1, max = 4))]
    pub forwarding_methods: Vec<Forwarding>,

    /// Whether firewall-mark services (which have no VIP) may use the pool's
    /// directors.
    #[serde(default)]
    pub allow_fwmark: bool,

    /// Whether services may share one VIP on different ports (and protocols).
    #[serde(default)]
    pub allow_shared_vip: bool,

    /// Whether VirtualServices that name neither a `vip` nor a `pool` get
    /// their address from this pool. When false, only those naming the pool
    /// or one of its addresses do.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
}

fn default_forwarding_methods() -> Vec<Forwarding> {
    vec![Forwarding::DirectRouting, Forwarding::Nat, Forwarding::Tunnel]
}

fn default_true() -> bool {
    true
}

/// What the controller counted in a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VipPoolStatus {
    /// Addresses of the pool held by services.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub used: u64,

    /// Addresses of the pool still to give (reserved addresses left out;
    /// capped at 2^63-1 for large IPv6 pools).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub free: u64,

    /// `Valid` (the addresses parse, every range is in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Condition types of `VipPool.status.conditions`.
pub mod conditions {
    /// The pool's addresses parse and every range is in order.
    pub const VALID: &str = "Valid";
}

/// One entry of `spec.addresses` as an inclusive interval of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressRange {
    pub family: AddressFamily,
    pub first: u128,
    pub last: u128,
}

impl AddressRange {
    /// The interval of one address.
    pub fn single(address: IpAddr) -> Self {
        let n = to_number(address);
        Self { family: address.into(), first: n, last: n }
    }

    /// The interval of a CIDR, all of it.
    pub fn of_net(net: &ipnet::IpNet) -> Self {
        Self { family: net.addr().into(), first: to_number(net.network()), last: to_number(net.broadcast()) }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        AddressFamily::from(address) == self.family && (self.first..=self.last).contains(&to_number(address))
    }

    /// Number of addresses.
    pub fn size(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }
}

/// An address as a number (IPv4 in the low 32 bits); families are kept apart by the caller.
pub fn to_number(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of a number of `family`.
pub fn from_number(family: AddressFamily, number: u128) -> IpAddr {
    match family {
        AddressFamily::IPv4 => IpAddr::V4((number as u32).into()),
        AddressFamily::IPv6 => IpAddr::V6(number.into()),
    }
}

impl VipPoolSpec {
    /// The pool's addresses as intervals (CIDRs without their network and
    /// broadcast or anycast addresses), or every entry that is not a CIDR or
    /// an ordered range, naming `spec.addresses[i]` and the value.
    pub fn ranges(&self) -> Result<Vec<AddressRange>, Vec<ValidationError>> {
        let mut ranges = Vec::new();
        let mut errors = Vec::new();
        for (i, entry) in self.addresses.iter().enumerate() {
            match parse_entry(entry) {
                Ok(range) => ranges.extend(range),
                Err(message) => errors.push(ValidationError {
                    field: format!("spec.addresses[{i}]"),
                    value: Some(entry.clone()),
                    message,
                }),
            }
        }
        if errors.is_empty() { Ok(ranges) } else { Err(errors) }
    }

    /// Check the spec against the rules of the API (the CRD's CEL and
    /// schema, and the order of ranges, which CEL cannot compare).
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut errors = self.ranges().err().unwrap_or_default();
        if self.addresses.is_empty() {
            errors.push(ValidationError {
                field: "spec.addresses".into(),
                value: None,
                message: "at least one CIDR or range is required".into(),
            });
        }
        if self.addresses.len() > MAX_ADDRESS_ENTRIES {
            errors.push(ValidationError {
                field: "spec.addresses".into(),
                value: Some(self.addresses.len().to_string()),
                message: format!("at most {MAX_ADDRESS_ENTRIES} entries"),
            });
        }
        if self.namespaces.is_empty() && self.namespace_selector.is_none() {
            errors.push(ValidationError {
                field: "spec.namespaces".into(),
                value: None,
                message: "a pool admits no namespace: set namespaces or namespaceSelector".into(),
            });
        }
        if self.forwarding_methods.is_empty() {
            errors.push(ValidationError {
                field: "spec.forwardingMethods".into(),
                value: None,
                message: "at least one forwarding method is required".into(),
            });
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Whether the pool admits the namespace `name` with `labels`.
    pub fn admits(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.iter().any(|n| n == name)
            || self.namespace_selector.as_ref().is_some_and(|s| selector_matches(s, labels))
    }
}

/// One `spec.addresses` entry: a CIDR or `first-last`.
fn parse_entry(entry: &str) -> Result<Option<AddressRange>, String> {
    if let Some((first, last)) = entry.split_once('-') {
        let parse = |text: &str| {
            parse_ip(text.trim()).ok_or_else(|| format!("{text:?} is not an IPv4 or IPv6 address"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if AddressFamily::from(first) != AddressFamily::from(last) {
            return Err("the range mixes IPv4 and IPv6".into());
        }
        if to_number(first) > to_number(last) {
            return Err(format!("the range ends ({last}) before it starts ({first})"));
        }
        return Ok(Some(AddressRange {
            family: first.into(),
            first: to_number(first),
            last: to_number(last),
        }));
    }
    let net: ipnet::IpNet =
        entry.parse().map_err(|_| "must be a CIDR or a range first-last of two addresses".to_owned())?;
    if parse_ip(&net.addr().to_string()).is_none() {
        return Err("IPv4-mapped IPv6 addresses are not allowed".into());
    }
    let mut range = AddressRange::of_net(&net.trunc());
    // Network and broadcast (IPv4), subnet-router anycast (IPv6) are no host's.
    match net {
        ipnet::IpNet::V4(v4) if v4.prefix_len() < 31 => {
            range.first += 1;
            range.last -= 1;
        }
        ipnet::IpNet::V6(v6) if v6.prefix_len() < 127 => range.first += 1,
        _ => {}
    }
    Ok(Some(range))
}

/// Kubernetes label selector semantics: every `matchLabels` pair and every
/// `matchExpressions` requirement holds (an empty selector selects all).
/// An unknown operator selects nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector.match_labels.iter().flatten();
    let by_labels = pairs.clone().all(|(key, value)| labels.get(key) == Some(value));
    by_labels
        && selector.match_expressions.iter().flatten().all(|requirement| {
            let values = requirement.values.as_deref().unwrap_or_default();
            let value = labels.get(&requirement.key);
            match requirement.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}
