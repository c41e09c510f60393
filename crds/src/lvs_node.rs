//! `LvsNode`: the resolved desired state of one node, written by the
//! controller and read by that node's agent.
//!
//! Everything here is resolved: addresses are parsed, ports and defaults are
//! filled in, real servers come from every source (static list, node selector,
//! EndpointSlices), so the agent needs no other object. One node's state may be
//! split over several objects named `<node>`, `<node>-1`, ... (see
//! [`LvsNode::object_name`]) so that none exceeds 1 MiB; they all carry the
//! label [`NODE_LABEL`] and the same [`LvsNodeSpec::revision`].

// KubeSchema copies each struct it derives into a private scope, where
// `pub` is unreachable; the lint would flag every copy.
#![allow(unreachable_pub)]

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::virtual_service::{
    AddressFamily, Forwarding, HealthCheck, Protocol, Scheduler, SchedulerFlag, Tunnel, VrrpState,
};

/// Label on every LvsNode object: the name of the node it is for.
pub const NODE_LABEL: &str = "lvs.dev/node";

/// The desired state of one node, or one chunk of it.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "lvs.dev",
    version = "v1alpha1",
    kind = "LvsNode",
    doc = "The resolved desired state of one node (or one chunk of it), written by lvs-controller and applied by that node's lvs-agent. Internal: not for users.",
    // Not in the user-facing category `lvs`: `kubectl get lvs` lists VirtualServices only.
    category = "lvs-internal",
    status = "LvsNodeStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"NODE","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"CHUNK","type":"integer","jsonPath":".spec.chunk"}"#,
    printcolumn = r#"{"name":"APPLIED","type":"integer","jsonPath":".status.appliedGeneration"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LvsNodeSpec {
    /// Name of the node this state is for.
    pub node: String,

    /// Index of this object among the node's chunks: 0 for `<node>`, n for
    /// `<node>-n`.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub chunk: u32,

    /// How many chunks the node's state has. The agent applies the state only
    /// when it holds all of them with the same revision.
    #[serde(default = "one")]
    #[schemars(range(max = u32::MAX))]
    pub chunks: u32,

    /// Identifies the node's whole desired state (all chunks): chunks with
    /// different revisions belong to different versions of the state.
    #[serde(default)]
    pub revision: String,

    /// What the node does as a director. Absent: it directs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub director: Option<DirectorState>,

    /// What the node does as a real server. Absent: it serves no VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_server: Option<RealServerState>,
}

fn one() -> u32 {
    1
}

impl LvsNode {
    /// Name of chunk `chunk` of `node`'s state: `<node>`, then `<node>-1`, ...
    ///
    /// Chunk names of node `a` can equal the first name of a node called
    /// `a-1`: the translation then skips that suffix (chunk 1 of `a` becomes
    /// `a-2`), and readers select by [`NODE_LABEL`] and `spec.node`, never by
    /// name.
    pub fn object_name(node: &str, chunk: u32) -> String {
        match chunk {
            0 => node.to_owned(),
            n => format!("{node}-{n}"),
        }
    }
}

/// The director half of a node's state.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectorState {
    /// IPVS services to program, each with all its destinations.
    // Shared: the agent keeps each VirtualService's translation and the node's
    // services, one copy for both (megabytes at 10,000 services).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Arc<IpvsService>>,

    /// VIPs this node may hold, with their VRRP parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<DirectorVip>,

    /// The IPVS connection sync daemon. Absent: not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_sync: Option<ConnectionSync>,

    /// Whether the node must forward IP packets (`net.ipv4.ip_forward`,
    /// `net.ipv6.conf.all.forwarding`): true when a service uses NAT or
    /// FullNAT.
    #[serde(default)]
    pub ip_forward: bool,

    /// Whether the node must masquerade the traffic it forwards to FullNAT
    /// destinations (with `net.ipv4.vs.conntrack=1`).
    #[serde(default)]
    pub full_nat_masquerade: bool,
}

/// What identifies an IPVS service in the kernel.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct IpvsServiceKey {
    /// Address family of the service and its destinations.
    pub family: AddressFamily,

    /// The VIP; absent for fwmark services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,

    /// Port of the VIP (0: all ports); 0 for fwmark services.
    #[serde(default)]
    pub port: u16,

    /// Transport protocol of the VIP.
    #[serde(default)]
    pub protocol: Protocol,

    /// Firewall mark; absent for VIP services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub fwmark: Option<u32>,
}

/// One fully resolved IPVS service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpvsService {
    /// The VirtualService this service comes from.
    pub owner: ServiceOwner,

    /// What identifies the service in the kernel.
    pub key: IpvsServiceKey,

    /// The IPVS scheduler.
    pub scheduler: Scheduler,

    /// Options of the `sh` and `mh` schedulers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduler_flags: Vec<SchedulerFlag>,

    /// Client affinity. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<IpvsPersistence>,

    /// Schedule each UDP datagram on its own.
    #[serde(default)]
    pub one_packet: bool,

    /// The real servers, sorted by address and port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<Destination>,

    /// Health check of the destinations. Absent: all count as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Seconds a removed destination keeps weight 0 before it is deleted.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub drain_seconds: u32,

    /// Destination used while no other one is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<Destination>,
}

/// Client affinity of an IPVS service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct IpvsPersistence {
    /// Seconds a client stays with its destination.
    #[schemars(range(max = u32::MAX))]
    pub timeout_seconds: u32,

    /// Prefix length of the client addresses that share a destination
    /// (32 or 128: each client on its own).
    pub prefix_length: u8,
}

/// One IPVS destination (real server).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Address of the real server.
    pub address: IpAddr,

    /// Port on the real server (0 for fwmark services).
    pub port: u16,

    /// Weight; 0 takes no new connections.
    pub weight: u16,

    /// Forwarding method; FullNAT is programmed as NAT plus masquerading.
    pub forwarding: Forwarding,

    /// Encapsulation, with forwarding Tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,

    /// Most active connections; 0: no limit.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub upper_threshold: u32,

    /// Active connections under which an overloaded destination takes new
    /// ones again; 0: the kernel's default.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub lower_threshold: u32,
}

/// The VirtualService (or Service of type LoadBalancer) an entry comes from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOwner {
    /// Kind of the owner. Absent: VirtualService.
    #[serde(default, skip_serializing_if = "OwnerKind::is_virtual_service")]
    pub kind: OwnerKind,

    /// Namespace of the VirtualService.
    pub namespace: String,

    /// Name of the VirtualService.
    pub name: String,

    /// UID of the VirtualService (empty in standalone mode).
    #[serde(default)]
    pub uid: String,

    /// The VirtualService's `metadata.generation` this entry was made from.
    #[serde(default)]
    pub generation: i64,
}

/// The kinds of object that own IPVS services: a VirtualService and a
/// Service of type LoadBalancer of the same namespace and name are different
/// owners.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum OwnerKind {
    #[default]
    VirtualService,
    Service,
}

impl OwnerKind {
    pub fn is_virtual_service(&self) -> bool {
        *self == OwnerKind::VirtualService
    }
}

/// A VIP a director may hold.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct DirectorVip {
    /// The VIP, added as /32 (IPv4) or /128 (IPv6).
    pub address: IpAddr,

    /// Interface to add it to. Absent: the interface of the route towards it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,

    /// VRRP instance deciding whether this node holds the VIP. Absent: it
    /// always does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp: Option<VrrpInstance>,
}

/// One director's VRRP instance for one VIP.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct VrrpInstance {
    /// Virtual router ID, 1-255.
    pub virtual_router_id: u8,

    /// Milliseconds between advertisements.
    #[schemars(range(max = u32::MAX))]
    pub advert_interval_ms: u32,

    /// Whether a higher priority takes the VIP from a lower one.
    pub preempt: bool,

    /// This director's priority, 1-254.
    pub priority: u8,
}

/// The IPVS connection sync daemon of a director.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSync {
    /// Interface the sync messages are multicast on.
    pub interface: String,

    /// Sync ID shared by the directors (ipvsadm `--syncid`).
    pub sync_id: u8,
}

/// The real-server half of a node's state.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RealServerState {
    /// VIPs to accept traffic for, one entry per VirtualService (an address
    /// may appear more than once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<RealServerVip>,
}

/// A VIP a real server accepts without announcing it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RealServerVip {
    /// The VIP.
    pub address: IpAddr,

    /// DirectRouting: the VIP on a local dummy device with the ARP sysctls.
    /// Tunnel: the VIP on the tunnel device, `rp_filter` relaxed.
    pub mode: RealServerMode,

    /// Encapsulation, with mode Tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,

    /// The VirtualService this VIP comes from.
    pub owner: ServiceOwner,
}

/// How packets for a VIP reach a real server.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RealServerMode {
    DirectRouting,
    Tunnel,
}

/// The agent's report on the objects of its node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LvsNodeStatus {
    /// The `metadata.generation` of this object the agent last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation: Option<i64>,

    /// The `spec.revision` the agent last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,

    /// `Applied` (the kernel matches this object) and `Degraded` (some part
    /// failed), with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// One row per service of this object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceReport>,

    /// One row per VIP of this object the node may hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipReport>,

    /// Errors not tied to one service, e.g. a sysctl that could not be set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The result of programming one service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    /// The VirtualService the service comes from.
    pub owner: ServiceOwner,

    /// The service.
    pub key: IpvsServiceKey,

    /// Whether the kernel holds the service as specified.
    pub programmed: bool,

    /// Why it is not programmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,

    /// One row per destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationReport>,
}

/// Health and load of one destination.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationReport {
    /// Address of the destination.
    pub address: IpAddr,

    /// Port of the destination.
    pub port: u16,

    /// Whether it passes its health check (true without a check).
    pub healthy: bool,

    /// Weight in the kernel now.
    // No connection counts: they change with every connection, and a status
    // is written when it changes (counts are in the agent's metrics).
    pub weight: u16,
}

/// The VRRP state of one VIP on this node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VipReport {
    /// The VIP.
    pub address: IpAddr,

    /// VRRP state; Master (holding the VIP) without VRRP.
    pub vrrp_state: VrrpState,

    /// Whether the node holds the VIP now.
    pub held: bool,
}
