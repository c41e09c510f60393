//! `VirtualService`: one IPVS virtual service, as users write it.
//!
//! The CEL rules on these types are the server-side half of the API's
//! cross-field rules; [`crate::validation::validate`] is the Rust half and
//! must reject exactly the same manifests (the crate's tests check both on the
//! same samples). The rules use Kubernetes' IP CEL library (`isIP`), so the
//! CRD needs Kubernetes 1.31 or newer.

// KubeSchema copies each struct it derives into a private scope, where
// `pub` is unreachable; the lint would flag every copy.
#![allow(unreachable_pub)]

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most real servers one manifest may list. The bound keeps the CEL rules that
/// iterate over them within the API server's cost budget; nodes found by
/// `realServerSelector` and endpoints of a `backendService` are not limited.
pub const MAX_REAL_SERVERS: usize = 1000;

/// The desired state of one IPVS virtual service: where clients connect (a
/// VIP and port, or a firewall mark), how connections are spread over the real
/// servers, and which nodes direct the traffic.
///
/// `Default` gives an empty spec (neither vip nor fwmark), a starting point
/// for struct-update syntax, not a valid spec.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "lvs.dev",
    version = "v1alpha1",
    kind = "VirtualService",
    doc = "A virtual service of Linux Virtual Server (IPVS): a VIP and port (or a firewall mark) balanced over real servers by director nodes.",
    namespaced,
    shortname = "lvs",
    category = "lvs",
    status = "VirtualServiceStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"VIP","type":"string","jsonPath":".status.vip"}"#,
    printcolumn = r#"{"name":"PORT","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"PROTO","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"MODE","type":"string","jsonPath":".spec.forwarding"}"#,
    printcolumn = r#"{"name":"SCHED","type":"string","jsonPath":".spec.scheduler"}"#,
    printcolumn = r#"{"name":"REAL SERVERS","type":"integer","jsonPath":".status.realServerCount"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!has(self.fwmark) || (!has(self.vip) && !has(self.port))")
        .message("fwmark excludes vip and port")
        .field_path(".fwmark"),
    validation = Rule::new("has(self.fwmark) || has(self.port)")
        .message("port is required without fwmark (0 = all ports)")
        .field_path(".port"),
    validation = Rule::new("!has(self.port) || self.port != 0 || has(self.persistence)")
        .message("port 0 (all ports) needs persistence")
        .field_path(".port"),
    validation = Rule::new(
        "!(self.forwarding in ['DirectRouting', 'Tunnel']) || !has(self.realServers) \
         || self.realServers.all(r, !has(r.port) || r.port == 0 || (has(self.port) && r.port == self.port))"
    )
        .message("DirectRouting and Tunnel cannot map ports: a real server's port must equal spec.port")
        .field_path(".realServers"),
    validation = Rule::new(
        "!(self.forwarding in ['DirectRouting', 'Tunnel']) || !has(self.realServerSelector) \
         || !has(self.realServerSelector.port) || (has(self.port) && self.realServerSelector.port == self.port)"
    )
        .message("DirectRouting and Tunnel cannot map ports: realServerSelector.port must equal spec.port")
        .field_path(".realServerSelector.port"),
    validation = Rule::new(
        "!(self.forwarding in ['DirectRouting', 'Tunnel']) || !has(self.sorryServer) \
         || !has(self.sorryServer.port) || (has(self.port) && self.sorryServer.port == self.port)"
    )
        .message("DirectRouting and Tunnel cannot map ports: sorryServer.port must equal spec.port")
        .field_path(".sorryServer.port"),
    validation = Rule::new("!has(self.tunnel) || self.forwarding == 'Tunnel'")
        .message("tunnel is only allowed with forwarding Tunnel")
        .field_path(".tunnel"),
    validation = Rule::new("!has(self.backendService) || self.forwarding in ['NAT', 'FullNAT']")
        .message("backendService is only allowed with forwarding NAT or FullNAT")
        .field_path(".backendService"),
    validation = Rule::new(
        "!has(self.realServers) || self.realServers.all(r, \
         r.address.contains(':') == (has(self.vip) ? self.vip : self.realServers[0].address).contains(':'))"
    )
        .message("real servers must have the address family of the vip (with fwmark: one family for all)")
        .field_path(".realServers"),
    validation = Rule::new(
        "!has(self.sorryServer) || self.sorryServer.address.contains(':') == \
         (has(self.vip) ? self.vip.contains(':') : \
          has(self.realServers) && size(self.realServers) > 0 && self.realServers[0].address.contains(':'))"
    )
        .message("sorryServer must have the address family of the vip and the real servers")
        .field_path(".sorryServer.address"),
    validation = Rule::new("!has(self.schedulerFlags) || self.schedulerFlags.all(f, f.startsWith(self.scheduler + '-'))")
        .message("scheduler flags must match the scheduler (sh-* only with sh, mh-* only with mh)")
        .field_path(".schedulerFlags"),
    validation = Rule::new("!has(self.onePacket) || !self.onePacket || self.protocol == 'UDP'")
        .message("onePacket is only allowed with protocol UDP")
        .field_path(".onePacket"),
    validation = Rule::new(
        "!has(self.persistence) || !has(self.persistence.netmask) || \
         ((has(self.vip) ? self.vip.contains(':') : \
           has(self.realServers) && size(self.realServers) > 0 && self.realServers[0].address.contains(':')) \
          ? self.persistence.netmask.matches('^([1-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$') \
          : self.persistence.netmask.matches('^((255[.]){3}(255|254|252|248|240|224|192|128|0)\
|(255[.]){2}(254|252|248|240|224|192|128|0)[.]0\
|255[.](254|252|248|240|224|192|128|0)[.]0[.]0\
|(254|252|248|240|224|192|128|0)[.]0[.]0[.]0)$'))"
    )
        .message("persistence.netmask must be a dotted IPv4 netmask (e.g. 255.255.255.0) for IPv4, a prefix length 1-128 for IPv6")
        .field_path(".persistence.netmask"),
    validation = Rule::new("!has(self.failover) || !has(self.fwmark)")
        .message("failover moves the vip between directors: it needs a vip, not a fwmark")
        .field_path(".failover"),
    validation = Rule::new(
        "(has(self.realServers) && size(self.realServers) > 0) || has(self.realServerSelector) \
         || has(self.backendService) || has(self.sorryServer)"
    )
        .message("no real servers: set realServers, realServerSelector or backendService (or at least a sorryServer)")
        .field_path(".realServers")
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// The virtual IP address clients connect to, IPv4 or IPv6; it must lie
    /// in a VipPool that admits the namespace. Absent (and no `fwmark`): an
    /// address is allocated from such a pool and shown in `status.vip`; the
    /// family is then the real servers' (IPv4 without static ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IPv4 or IPv6 address"))]
    #[schemars(length(max = 45))]
    pub vip: Option<String>,

    /// Firewall mark that selects the packets of this service (`ipvsadm -f`),
    /// instead of `vip` and `port` (only in a pool with `allowFwmark`). The address family is the real servers'
    /// (IPv4 when there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub fwmark: Option<u32>,

    /// The port clients connect to; 0 means all ports and needs `persistence`.
    /// Required without `fwmark`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,

    /// The VipPool to take the VIP (and the directors) from. Absent: the
    /// first pool by name that admits the namespace and contains `vip`, or,
    /// without `vip`, assigns automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pool: Option<String>,

    /// Transport protocol of the service.
    #[serde(default)]
    pub protocol: Protocol,

    /// How new connections are spread over the real servers (ipvsadm `-s`).
    #[serde(default)]
    pub scheduler: Scheduler,

    /// Options of the `sh` and `mh` schedulers (ipvsadm `-b`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub scheduler_flags: Vec<SchedulerFlag>,

    /// How packets reach the real servers.
    #[serde(default)]
    pub forwarding: Forwarding,

    /// Encapsulation options; only with `forwarding: Tunnel` (defaults to IPIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,

    /// Send a client's connections to the same real server for a while
    /// (ipvsadm `-p`, `-M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,

    /// Schedule each UDP datagram on its own, without connection state
    /// (ipvsadm `-o`); only with protocol UDP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_packet: bool,

    /// Real servers listed by address; each address and port at most once.
    // A list-type map: the API server refuses duplicate (address, port) keys
    // in linear time, where a CEL rule would be quadratic in the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_REAL_SERVERS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["address".into(), "port".into()]))]
    pub real_servers: Vec<RealServer>,

    /// Real servers found by node labels: every matching node's InternalIP
    /// (Kubernetes mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_server_selector: Option<RealServerSelector>,

    /// Real servers taken from the ready endpoints of a Service in this
    /// namespace (Kubernetes mode, NAT or FullNAT only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_service: Option<BackendService>,

    /// Which nodes direct this service. Absent: the nodes labelled
    /// `lvs.dev/director: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directors: Option<Directors>,

    /// How the directors check the real servers. Absent: no checks, every real
    /// server counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// How the directors share the VIP. Absent: every director holds the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,

    /// Run the IPVS connection sync daemon between the directors, so that a
    /// new master keeps established connections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connection_sync: bool,

    /// Seconds a removed real server keeps serving its established connections
    /// with weight 0 before it is deleted. Absent or 0: deleted at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub drain_seconds: Option<u32>,

    /// Where clients go when no real server is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<SorryServer>,
}

/// IP address family.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum AddressFamily {
    #[default]
    IPv4,
    IPv6,
}

impl From<IpAddr> for AddressFamily {
    fn from(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Self::IPv4,
            IpAddr::V6(_) => Self::IPv6,
        }
    }
}

/// Transport protocol of a virtual service.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

/// IPVS scheduler names, as ipvsadm spells them.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    // Variants carry no doc comments on purpose: schemars would turn
    // documented variants into a oneOf, which is not a structural schema.
    Rr,
    Wrr,
    Lc,
    #[default]
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Mh,
    Fo,
    Ovf,
    Twos,
}

/// Options of the source-hashing (`sh`) and Maglev-hashing (`mh`) schedulers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerFlag {
    ShFallback,
    ShPort,
    MhFallback,
    MhPort,
}

/// How packets reach the real servers.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum Forwarding {
    #[serde(rename = "NAT")]
    Nat,
    #[default]
    DirectRouting,
    Tunnel,
    #[serde(rename = "FullNAT")]
    FullNat,
}

/// Encapsulation of `forwarding: Tunnel`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[x_kube(
    validation = Rule::new("self.encapsulation == 'GUE' ? has(self.port) : !has(self.port)")
        .message("port is required with GUE and not allowed otherwise")
        .field_path(".port"),
    validation = Rule::new("self.checksum != 'RemoteChecksum' || self.encapsulation == 'GUE'")
        .message("RemoteChecksum is only available with GUE")
        .field_path(".checksum")
)]
#[serde(rename_all = "camelCase")]
pub struct Tunnel {
    /// Encapsulation protocol (IPIP, GUE or GRE).
    #[serde(default)]
    pub encapsulation: TunnelEncapsulation,

    /// UDP destination port of the GUE encapsulation; required with GUE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,

    /// Checksums of the outer packet (GUE and GRE).
    #[serde(default)]
    pub checksum: TunnelChecksum,
}

/// Encapsulation protocols of IPVS tunnelling.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum TunnelEncapsulation {
    #[default]
    #[serde(rename = "IPIP")]
    Ipip,
    #[serde(rename = "GUE")]
    Gue,
    #[serde(rename = "GRE")]
    Gre,
}

/// Checksum options of the tunnel's outer packet: none, a checksum, or remote
/// checksum offload (GUE only).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum TunnelChecksum {
    #[default]
    None,
    Checksum,
    RemoteChecksum,
}

/// Client affinity (ipvsadm `-p` and `-M`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// Seconds a client stays with its real server after its last connection.
    #[serde(default = "default_persistence_timeout")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub timeout_seconds: u32,

    /// Clients whose addresses share this mask share a real server: a dotted
    /// netmask for IPv4 (e.g. `255.255.255.0`), a prefix length for IPv6
    /// (e.g. `64`). Absent: each client on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub netmask: Option<String>,
}

fn default_persistence_timeout() -> u32 {
    300
}

/// A real server given by address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[x_kube(validation = Rule::new("!has(self.lowerThreshold) || (has(self.upperThreshold) && self.lowerThreshold <= self.upperThreshold)")
    .message("lowerThreshold needs an upperThreshold at least as large")
    .field_path(".lowerThreshold"))]
#[serde(rename_all = "camelCase")]
pub struct RealServer {
    /// IP address of the real server, of the vip's family.
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IPv4 or IPv6 address"))]
    #[schemars(length(max = 45))]
    pub address: String,

    /// Port on the real server. Absent or 0: the service's port. Only NAT
    /// and FullNAT may use another port than the service's.
    // A key of the realServers list-map, which the API server wants not
    // nullable and required or defaulted: 0 stands for "absent" and
    // deserializes as `None`.
    #[serde(default, deserialize_with = "zero_is_none", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u16", extend("default" = 0))]
    pub port: Option<u16>,

    /// Relative share of new connections; 0 takes no new connections.
    #[serde(default = "default_weight")]
    pub weight: u16,

    /// Most active connections before the server takes no new ones (ipvsadm
    /// `-x`). Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub upper_threshold: Option<u32>,

    /// Active connections under which an overloaded server takes new ones
    /// again (ipvsadm `-y`). Absent: three quarters of `upperThreshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub lower_threshold: Option<u32>,
}

fn default_weight() -> u16 {
    1
}

/// A real server's port 0, the schema's default, is the same as no port.
fn zero_is_none<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
    Ok(Option::<u16>::deserialize(deserializer)?.filter(|&port| port != 0))
}

/// Real servers found by node labels.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RealServerSelector {
    /// Labels a node must carry to be a real server.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,

    /// Port on the nodes. Absent: the service's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
}

/// Real servers from a Service's EndpointSlices.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackendService {
    /// Name of the Service, in the VirtualService's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Port of the endpoints as the EndpointSlices list it (the Service's
    /// target port). Absent: the EndpointSlices' only port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
}

/// The nodes that direct a service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Directors {
    /// Labels a node must carry to direct this service.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,

    /// Network interface that holds the VIP. Absent: the interface of the
    /// route towards the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub interface: Option<String>,
}

/// Health checking of the real servers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[x_kube(
    validation = Rule::new("self.timeoutSeconds <= self.intervalSeconds")
        .message("timeoutSeconds must not exceed intervalSeconds")
        .field_path(".timeoutSeconds"),
    validation = Rule::new("self.type in ['HTTP', 'HTTPS'] || !(has(self.path) || has(self.host) || has(self.expectedStatus) || has(self.bodyContains))")
        .message("path, host, expectedStatus and bodyContains are only allowed with type HTTP or HTTPS"),
    validation = Rule::new("self.type == 'UDP' || !has(self.payload)")
        .message("payload is only allowed with type UDP")
        .field_path(".payload")
)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Kind of check: connect (TCP), request (HTTP, HTTPS), datagram
    /// exchange (UDP) or none.
    #[serde(rename = "type", default)]
    pub kind: HealthCheckType,

    /// HTTP(S) request path.
    // Control characters or spaces would split the request line and let the
    // value inject headers or a second request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')").message("must start with /"),
        validation = Rule::new("!self.matches('[\\x00-\\x20\\x7f]')")
            .message("must not contain control characters or spaces")
    )]
    #[schemars(length(max = 1024))]
    pub path: Option<String>,

    /// HTTP(S) Host header. Absent: the real server's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("!self.matches('[\\x00-\\x1f\\x7f]')").message("must not contain control characters")
    )]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,

    /// Port to check. Absent: the real server's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,

    /// HTTP status codes that count as healthy. Absent: 200-399.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(range(min = 100, max = 599)))]
    pub expected_status: Option<Vec<u16>>,

    /// Text the HTTP(S) response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub body_contains: Option<String>,

    /// UDP datagram to send; a healthy server answers anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub payload: Option<String>,

    /// Seconds between checks.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,

    /// Seconds a check may take; at most `intervalSeconds`.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,

    /// Consecutive successes that make a failed server healthy again.
    #[serde(default = "default_rise")]
    #[schemars(range(min = 1, max = 100))]
    pub rise: u32,

    /// Consecutive failures that make a server unhealthy.
    #[serde(default = "default_fall")]
    #[schemars(range(min = 1, max = 100))]
    pub fall: u32,

    /// What happens to an unhealthy server: removed from the service, or
    /// kept with weight 0 so its established connections finish.
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_interval() -> u32 {
    2
}
fn default_timeout() -> u32 {
    1
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Kind of health check.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum HealthCheckType {
    #[default]
    TCP,
    HTTP,
    HTTPS,
    UDP,
    None,
}

/// What happens to a real server that fails its health check.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum OnFailure {
    #[default]
    Remove,
    Quiesce,
}

/// How the directors share the VIP.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// VRRP between the directors: one master holds the VIP.
    pub vrrp: Vrrp,
}

/// VRRP parameters shared by the directors of one VIP; each director's
/// priority comes from its node (annotation `lvs.dev/vrrp-priority`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Vrrp {
    /// Virtual router ID, 1-255, unique on the directors' network.
    #[schemars(range(min = 1))]
    pub virtual_router_id: u8,

    /// Milliseconds between the master's advertisements, a multiple of 10
    /// from 10 to 40950 (VRRPv3 counts in centiseconds).
    #[serde(default = "default_advert_interval")]
    #[x_kube(validation = Rule::new("self % 10 == 0").message("must be a multiple of 10 (VRRPv3 counts in centiseconds)"))]
    #[schemars(range(min = 10, max = 40950))]
    pub advert_interval_ms: u32,

    /// Whether a director with a higher priority takes the VIP from a
    /// master with a lower one.
    #[serde(default = "default_preempt")]
    pub preempt: bool,
}

fn default_advert_interval() -> u32 {
    1000
}
fn default_preempt() -> bool {
    true
}

/// Where clients go when no real server is healthy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SorryServer {
    /// IP address of the sorry server.
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IPv4 or IPv6 address"))]
    #[schemars(length(max = 45))]
    pub address: String,

    /// Port on the sorry server. Absent: the service's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
}

/// What the controller and the agents observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Accepted` (valid and not in conflict), `Programmed` (in the kernel of
    /// every director) and `Healthy` (at least one healthy real server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The VIP allocated to the service (its `spec.vip`, or one chosen from
    /// the pool). Read back by the controller: an allocation survives
    /// restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45))]
    pub vip: Option<String>,

    /// The VipPool the service uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub pool: Option<String>,

    /// Number of real servers the service resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub real_server_count: Option<u32>,

    /// One row per director node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directors: Vec<DirectorStatus>,

    /// One row per real server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub real_servers: Vec<RealServerStatus>,
}

/// One director's view of the service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectorStatus {
    /// Node name of the director.
    pub node: String,

    /// Whether the director's kernel holds the service as specified.
    pub programmed: bool,

    /// The director's VRRP state for the VIP, with failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_state: Option<VrrpState>,
}

/// State of a VRRP instance (RFC 5798).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VrrpState {
    Initialize,
    Backup,
    Master,
    Fault,
}

/// One real server as the directors see it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RealServerStatus {
    /// IP address of the real server.
    pub address: String,

    /// Port on the real server (absent for fwmark services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,

    /// Whether it passes its health check (true without a check).
    pub healthy: bool,

    /// Weight in the kernel (0 while quiesced or draining).
    // No connection counts: a status changes only when something meaningful
    // does (the counts are the agents' metrics
    // `lvs_agent_real_server_active_connections` and `..._inactive_connections`).
    pub weight: u16,
}

/// Condition types and reasons of `VirtualService.status.conditions`.
pub mod conditions {
    /// The spec is valid and its (vip, port, protocol) is not claimed by an
    /// older VirtualService.
    pub const ACCEPTED: &str = "Accepted";
    /// Every director's kernel holds the service as specified.
    pub const PROGRAMMED: &str = "Programmed";
    /// At least one real server passes its health check.
    pub const HEALTHY: &str = "Healthy";
    /// The sum of the three above: True when each is (`kubectl wait
    /// --for=condition=Ready`, Argo CD's health).
    pub const READY: &str = "Ready";
    /// kstatus' abnormal-true condition: the directors have not all applied
    /// the current generation, or not yet reported on it.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus' abnormal-true condition: nothing will change without a
    /// person (refused, a programming error, no director).
    pub const STALLED: &str = "Stalled";

    /// Reason of `Accepted=False`: an older VirtualService has the same key.
    pub const REASON_CONFLICT: &str = "Conflict";
    /// Reason of `Accepted=False`: the spec breaks a validation rule.
    pub const REASON_INVALID: &str = "Invalid";
    /// Reason of `Accepted=False`: its VRRP settings conflict with an older
    /// VirtualService's or Service's on a shared director.
    pub const REASON_VRRP_CONFLICT: &str = "VrrpConflict";
}
