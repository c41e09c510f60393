//! The translation VirtualServices (+ Nodes, EndpointSlices) -> per-node
//! [`LvsNode`] desired state. Pure: no IO, no clock, no randomness; the same
//! input in any order gives byte-identical output, so the controller writes
//! nothing when nothing changed.
//!
//! - Pools (cluster mode, [`ClusterState::vip_pools`]): each valid
//!   VirtualService gets its VIP and pool, is checked against the pool and
//!   narrowed to it (see the `tenancy` module); without pools (the standalone
//!   agent) everything is allowed.
//! - Verdicts: each VirtualService is checked in age order (creationTimestamp,
//!   then namespace/name; objects without a timestamp count as the newest):
//!   an invalid spec or one its pool refuses is refused; else it
//!   claims its key, (vip, port, protocol) or (fwmark, family), and a key
//!   already claimed by an older one is a conflict. The winner is therefore a
//!   function of the set of VirtualServices alone, and never flaps.
//! - Directors: the nodes matching `spec.directors.nodeSelector`; absent or
//!   empty, the nodes labelled `lvs.dev/director: "true"` (an empty selector
//!   would otherwise make every node a director). Each gets the IPVS service,
//!   the VIP with its VRRP parameters (priority from the node annotation
//!   `lvs.dev/vrrp-priority`, default 100) and the sysctl needs.
//! - Destinations: static `realServers`, then the InternalIPs (of the
//!   service's family) of the nodes matching `realServerSelector`, then the
//!   ready endpoints of the `backendService`'s EndpointSlices; the first
//!   source of an (address, port) wins, the list is sorted.
//! - Real servers: with DirectRouting or Tunnel, a node one of whose
//!   addresses is a destination (or the sorry server) of a VIP service gets
//!   that VIP to bind. fwmark services have no VIP to bind.
//! - Services of type LoadBalancer of our class ([`service_lb`]): each port
//!   on each of its addresses becomes a service as a VirtualService's would,
//!   owned by `kind: Service`; they claim their keys in the same age order as
//!   VirtualServices (a Service all its keys or none), and their verdicts are
//!   kept apart in [`Translation::load_balancers`].
//! - Objects: a node's state is split into chunks (`<node>`, `<node>-1`, ...)
//!   of at most `max_object_bytes` of JSON each, see [`TranslateOptions`].

use std::{
    collections::{BTreeMap, HashMap, HashSet, hash_map::Entry},
    io,
    net::IpAddr,
    ops::Range,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use serde::Serialize;

use crate::{
    LvsNode, LvsNodeSpec, NODE_LABEL, ValidationError, VipPool, VirtualService,
    allocation::PoolUsage,
    lvs_node::{
        ConnectionSync, Destination, DirectorState, DirectorVip, IpvsPersistence, IpvsService,
        IpvsServiceKey, OwnerKind, RealServerMode, RealServerState, RealServerVip, ServiceOwner,
        VrrpInstance,
    },
    service_lb::{self, LoadBalancerPort, LoadBalancerRequest},
    validation::{netmask_prefix_length, parse_ip},
    virtual_service::{AddressFamily, BackendService, Forwarding, Protocol, VirtualServiceSpec},
};

mod tenancy;

use tenancy::{OwnerId, RealServerNodes, Tenancy};
pub use tenancy::{SERVICE_KIND, VIRTUAL_SERVICE_KIND, claim_of, owner_of, reservations, service_claims};

/// Largest serialized size of one LvsNode object by default: 1 MiB (etcd
/// refuses objects over 1.5 MiB; the rest is headroom for status and
/// managed fields).
pub const DEFAULT_MAX_OBJECT_BYTES: usize = 1 << 20;

/// Label that makes a node a director of the services that name no
/// `directors.nodeSelector`.
pub const DIRECTOR_LABEL: (&str, &str) = ("lvs.dev/director", "true");

/// Node annotation with the node's VRRP priority, 1-254.
pub const VRRP_PRIORITY_ANNOTATION: &str = "lvs.dev/vrrp-priority";

/// VRRP priority of a node without a valid [`VRRP_PRIORITY_ANNOTATION`].
pub const DEFAULT_VRRP_PRIORITY: u8 = 100;

/// Label of an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the translation reads.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Unique by (namespace, name), as in a cluster.
    pub virtual_services: Vec<VirtualService>,
    /// Unique by name.
    pub nodes: Vec<Node>,
    /// Of every namespace; only those labelled `kubernetes.io/service-name`
    /// with a VirtualService's `backendService`, or a Service of ours, count.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// The administrator's VipPools (the cluster mode): every VirtualService
    /// takes its VIP, directors and permissions from a pool that admits its
    /// namespace. `None`: no pools at all (the standalone agent, whose
    /// manifests the host's administrator writes): every VIP, director and
    /// node is allowed, and a VirtualService needs a `vip` or `fwmark`.
    pub vip_pools: Option<Vec<VipPool>>,
    /// The namespaces with their labels, for the pools' `namespaceSelector`.
    pub namespaces: Vec<Namespace>,
    /// Unique by (namespace, name); only those of type LoadBalancer and our
    /// class count (see [`service_lb::is_ours`]).
    pub services: Vec<Service>,
}

/// Knobs of the translation.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    /// Max serialized size (JSON) of one LvsNode object. Only a single
    /// service too large for any object (tens of thousands of destinations)
    /// can exceed it: it gets a chunk of its own.
    pub max_object_bytes: usize,
    /// The cluster's Service CIDRs: never a VIP (with pools).
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// The cluster's pod CIDRs: never a VIP (with pools).
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// The API server's addresses: never a VIP (with pools).
    pub api_server_addresses: Vec<IpAddr>,
    /// Also serve the Services of type LoadBalancer that name no class: we
    /// are the cluster's default load-balancer implementation.
    pub default_load_balancer_class: bool,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            service_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
            api_server_addresses: Vec::new(),
            default_load_balancer_class: false,
        }
    }
}

/// The translation's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    /// Every LvsNode that should exist, sorted by name; byte-identical for identical input.
    pub lvs_nodes: Vec<LvsNode>,
    /// One verdict per VirtualService.
    pub verdicts: BTreeMap<ObjectId, Verdict>,
    /// With pools: the VIP (none for fwmark services) and pool of each
    /// VirtualService that got one, accepted or not (the address stays held).
    pub allocations: BTreeMap<ObjectId, VipAllocation>,
    /// With pools: each pool's count, by name.
    pub pools: BTreeMap<String, PoolUsage>,
    /// One per Service of ours: apart from `verdicts`, since a Service and a
    /// VirtualService may share a namespace and name.
    pub load_balancers: BTreeMap<ObjectId, LoadBalancerOutcome>,
}

/// A VirtualService's VIP and pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipAllocation {
    /// None for a fwmark service.
    pub vip: Option<IpAddr>,
    pub pool: String,
    /// An earlier VIP that was released because its pool no longer holds it.
    pub released: Option<IpAddr>,
}

/// What became of a Service of type LoadBalancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancerOutcome {
    pub verdict: Verdict,
    /// Its addresses, one per family served, when accepted: its `status.loadBalancer.ingress`.
    pub addresses: Vec<IpAddr>,
}

/// (namespace, name) of a VirtualService.
pub type ObjectId = (String, String);

/// A VirtualService's (namespace, name); the namespace is empty when it has
/// none (a manifest of the standalone agent may name none).
pub fn object_id(vs: &VirtualService) -> ObjectId {
    (vs.metadata.namespace.clone().unwrap_or_default(), vs.metadata.name.clone().unwrap_or_default())
}

/// How messages name an object: `namespace/name`, or the name alone without a namespace.
pub fn qualified_name((namespace, name): &ObjectId) -> String {
    if namespace.is_empty() { name.clone() } else { format!("{namespace}/{name}") }
}

/// A VirtualService's place in the conflict order, the older first: by
/// creationTimestamp (objects without one count as the newest), then by
/// namespace/name. Of the VirtualServices that claim one key, the oldest wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    undated: bool,
    created: Option<Time>,
    pub id: ObjectId,
}

impl Age {
    pub fn of(vs: &VirtualService) -> Self {
        Self::of_meta(&vs.metadata)
    }

    /// The age of any object, by its metadata.
    pub fn of_meta(meta: &ObjectMeta) -> Self {
        let created = meta.creation_timestamp.clone();
        let id = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        Age { undated: created.is_none(), created, id }
    }
}

/// Whether a VirtualService is programmed, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// An older VirtualService or Service claims the same (vip, port, protocol) / fwmark.
    Conflict {
        winner: ObjectId,
        /// Of the winner.
        winner_kind: OwnerKind,
        key: String,
    },
    Invalid(Vec<ValidationError>),
    /// Refused by the pools: no admitting pool, an address not allowed, a
    /// forwarding method, node or VRRP setting the pool does not allow.
    Refused {
        reason: &'static str,
        message: String,
    },
    /// The VIP is the address of a node: taking it would cut the node off.
    VipIsNodeAddress {
        vip: String,
        node: String,
    },
    /// A Service of type LoadBalancer got no address.
    NoAddress,
}

impl Verdict {
    /// The verdict on a VirtualService that claims `claim`, which the older `winner` holds.
    pub fn conflict(winner: ObjectId, claim: &IpvsServiceKey) -> Self {
        Self::conflict_with((winner, OwnerKind::VirtualService), claim)
    }

    /// The same, when the winner may be a VirtualService or a Service.
    pub fn conflict_with((winner, winner_kind): (ObjectId, OwnerKind), claim: &IpvsServiceKey) -> Self {
        Verdict::Conflict { winner, winner_kind, key: describe_claim(claim) }
    }

    /// The `reason` of the `Accepted` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Accepted => "Accepted",
            Verdict::Conflict { .. } => "Conflict",
            Verdict::Invalid(_) => "Invalid",
            Verdict::Refused { reason, .. } => reason,
            Verdict::VipIsNodeAddress { .. } => "VipNotAllowed",
            Verdict::NoAddress => "NoAddress",
        }
    }

    /// The `message` of the `Accepted` condition.
    pub fn message(&self) -> String {
        match self {
            Verdict::Accepted => "valid, and no older VirtualService claims its key".to_owned(),
            Verdict::Conflict { winner, winner_kind, key } => {
                format!("{key} is already claimed by the older {winner_kind:?} {}", qualified_name(winner))
            }
            Verdict::Invalid(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            Verdict::Refused { message, .. } => message.clone(),
            Verdict::VipIsNodeAddress { vip, node } => format!("vip {vip} is an address of node {node}"),
            Verdict::NoAddress => format!(
                "no address: request one with spec.loadBalancerIP or the annotation {}",
                service_lb::VIP_ANNOTATION
            ),
        }
    }
}

/// Resolve the cluster's VirtualServices into the LvsNode objects of every
/// node, and judge each VirtualService.
pub fn translate(state: &ClusterState, options: &TranslateOptions) -> Translation {
    let nodes = NodeIndex::new(&state.nodes);
    let backends = Backends::new(&state.endpoint_slices);
    let tenancy = state.vip_pools.as_deref().map(|pools| tenancy::admit(state, pools, options));
    let effective = tenancy.as_ref().map_or(&state.virtual_services[..], |t| &t.effective[..]);
    let balancers = load_balancers(state, &nodes, &backends, options, tenancy.as_ref());
    let judged = judge(effective, balancers, Some(&nodes));
    let mut verdicts = judged.verdicts;

    // The Services' ports as VirtualServices (each with its one director under
    // `externalTrafficPolicy: Local`), kept here: the resolved services borrow them.
    let ports: Vec<(VirtualService, Option<usize>)> =
        judged.load_balancers.iter().flat_map(|lb| lb.virtual_services(&nodes)).collect();
    let mut services: Vec<Resolved<'_>> = (judged.accepted.iter())
        .map(|&vs| {
            let mut resolved = resolve(vs, OwnerKind::VirtualService, &nodes, &backends);
            if let Some(tenancy) = tenancy.as_ref() {
                resolved.real_server_nodes =
                    tenancy.real_server_nodes.get(&resolved.id()).cloned().unwrap_or(RealServerNodes::None);
            }
            resolved
        })
        .collect();
    // A Service's real servers are its own endpoints: the nodes among them
    // (host-network pods) are the only ones its ports may change.
    for (port, director) in &ports {
        let mut resolved = resolve(port, OwnerKind::Service, &nodes, &backends);
        resolved.real_server_nodes = RealServerNodes::Any;
        if let Some(director) = director {
            resolved.directors = vec![*director];
        }
        services.push(resolved);
    }
    let mut load_balancers = judged.load_balancer_outcomes;
    let (mut allocations, mut pools) = (BTreeMap::new(), BTreeMap::new());
    if let Some(tenancy) = tenancy.as_ref() {
        verdicts.extend(tenancy.verdicts.clone());
        let ages: HashMap<OwnerId, Age> = (effective.iter())
            .map(|vs| ((OwnerKind::VirtualService, object_id(vs)), Age::of(vs)))
            .chain(judged.load_balancers.iter().map(|lb| {
                ((OwnerKind::Service, service_lb::service_id(lb.service)), Age::of_meta(&lb.service.metadata))
            }))
            .collect();
        let refused = tenancy::vrrp_conflicts(&services, &ages, &nodes);
        services.retain(|resolved| !refused.contains_key(&resolved.owner()));
        for ((kind, id), verdict) in refused {
            if kind == OwnerKind::Service {
                load_balancers.insert(id, LoadBalancerOutcome { verdict, addresses: Vec::new() });
            } else {
                verdicts.insert(id, verdict);
            }
        }
        allocations.clone_from(&tenancy.allocations);
        pools.clone_from(&tenancy.allocation.pools);
    }
    for resolved in &mut services {
        resolved.fingerprint = Fingerprint::of(&resolved.service);
    }
    // In key order once, so that every node's lists come out in key order.
    services.sort_by(|a, b| a.service.key.cmp(&b.service.key));

    let mut desired: BTreeMap<usize, NodeState<'_>> = BTreeMap::new();
    for resolved in &services {
        for &director in &resolved.directors {
            let node = desired.entry(director).or_default();
            node.services.push(resolved);
            if let Some(vip) = resolved.director_vip(nodes.vrrp_priority(director)) {
                node.director_vips.push(vip);
            }
        }
        if let Some(vip) = &resolved.real_server_vip {
            for real_server in nodes.owners_of(resolved.real_server_addresses()) {
                if nodes.may_change(real_server, &resolved.real_server_nodes) {
                    desired.entry(real_server).or_default().real_server_vips.push(vip.clone());
                }
            }
        }
    }

    let names = ChunkNames { node_names: nodes.nodes.iter().map(|n| node_name(n)).collect() };
    let mut lvs_nodes: Vec<LvsNode> = desired
        .into_iter()
        .flat_map(|(node, state)| state.into_objects(nodes.name(node), options.max_object_bytes, &names))
        .collect();
    lvs_nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Translation { lvs_nodes, verdicts, allocations, pools, load_balancers }
}

/// One VirtualService's part of one node's desired state, translated alone.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePart {
    /// On its own: `Invalid`, `Refused` (no vip) or `Accepted` (conflicts between
    /// VirtualServices are the caller's to settle).
    pub verdict: Verdict,
    /// Its service when accepted, whether or not the node directs it.
    pub service: Option<Arc<IpvsService>>,
    /// Whether the node is one of its directors.
    pub directs: bool,
    /// The VIP a director of it holds, with the node's VRRP priority.
    pub director_vip: Option<DirectorVip>,
    /// The VIP the node binds when it is one of its DirectRouting or Tunnel real servers.
    pub real_server_vip: Option<RealServerVip>,
    /// The director settings it asks for alone (no services, no VIPs).
    pub director_settings: Option<DirectorState>,
}

/// What [`translate`] makes of one VirtualService for one node, without
/// building LvsNode objects: for an agent that keeps its manifests' state
/// per VirtualService and updates it one document at a time. No
/// EndpointSlices: `backendService` contributes no destinations here.
pub fn translate_for_node(vs: &VirtualService, node: &Node, _options: &TranslateOptions) -> NodePart {
    let judged = judge(std::slice::from_ref(vs), Vec::new(), None);
    let verdict = judged.verdicts.into_values().next().unwrap_or(Verdict::Accepted);
    let mut part = NodePart {
        verdict,
        service: None,
        directs: false,
        director_vip: None,
        real_server_vip: None,
        director_settings: None,
    };
    if judged.accepted.is_empty() {
        return part;
    }
    let nodes = NodeIndex::new(std::slice::from_ref(node));
    let resolved = resolve(vs, OwnerKind::VirtualService, &nodes, &Backends::new(&[]));
    part.directs = !resolved.directors.is_empty();
    part.director_vip = resolved.director_vip(nodes.vrrp_priority(0));
    if !nodes.owners_of(resolved.real_server_addresses()).is_empty() {
        part.real_server_vip = resolved.real_server_vip.clone();
    }
    part.director_settings = Some(resolved.director_settings);
    part.service = Some(resolved.service);
    part
}

/// The verdicts, and what is accepted.
struct Judged<'a> {
    accepted: Vec<&'a VirtualService>,
    verdicts: BTreeMap<ObjectId, Verdict>,
    load_balancers: Vec<LoadBalancer<'a>>,
    load_balancer_outcomes: BTreeMap<ObjectId, LoadBalancerOutcome>,
}

/// Verdicts in age order, VirtualServices and Services of type LoadBalancer
/// alike: each valid, allowed one claims its keys unless an older one did (a
/// Service claims all its ports' keys, or none).
fn judge<'a>(
    services: &'a [VirtualService],
    balancers: Vec<(Age, Result<LoadBalancer<'a>, Verdict>)>,
    nodes: Option<&NodeIndex<'_>>,
) -> Judged<'a> {
    enum Candidate<'a> {
        Virtual(&'a VirtualService),
        Balancer(Result<LoadBalancer<'a>, Verdict>),
    }
    let mut queue: Vec<(Age, OwnerKind, Candidate<'a>)> = services
        .iter()
        .map(|vs| (Age::of(vs), OwnerKind::VirtualService, Candidate::Virtual(vs)))
        .chain(balancers.into_iter().map(|(age, b)| (age, OwnerKind::Service, Candidate::Balancer(b))))
        .collect();
    queue.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));

    let mut claims: HashMap<IpvsServiceKey, (ObjectId, OwnerKind)> = HashMap::new();
    let mut judged = Judged {
        accepted: Vec::new(),
        verdicts: BTreeMap::new(),
        load_balancers: Vec::new(),
        load_balancer_outcomes: BTreeMap::new(),
    };
    for (Age { id, .. }, kind, candidate) in queue {
        match candidate {
            Candidate::Virtual(vs) => {
                let spec = &vs.spec;
                let verdict = if let Err(errors) = spec.validate() {
                    Verdict::Invalid(errors)
                } else if spec.vip.is_none() && spec.fwmark.is_none() {
                    // With pools, the allocation gave it one.
                    Verdict::Refused {
                        reason: "NoVip",
                        message: "without VipPools (the standalone agent) a vip or fwmark is required".into(),
                    }
                } else {
                    let key = service_key(spec);
                    match claims.entry(claim(&key)) {
                        Entry::Occupied(winner) => Verdict::conflict_with(winner.get().clone(), winner.key()),
                        Entry::Vacant(free) => {
                            free.insert((id.clone(), kind));
                            judged.accepted.push(vs);
                            Verdict::Accepted
                        }
                    }
                };
                judged.verdicts.insert(id, verdict);
            }
            Candidate::Balancer(Err(verdict)) => {
                judged
                    .load_balancer_outcomes
                    .insert(id, LoadBalancerOutcome { verdict, addresses: Vec::new() });
            }
            Candidate::Balancer(Ok(balancer)) => {
                let keys: Vec<IpvsServiceKey> =
                    balancer.ports.iter().map(|p| claim(&service_key(&p.spec))).collect();
                let taken = keys.iter().find_map(|key| claims.get_key_value(key));
                let verdict = if let Some((vip, node)) = nodes.and_then(|nodes| {
                    balancer.addresses.iter().find_map(|vip| Some((vip, nodes.by_address.get(vip)?[0])))
                }) {
                    let node = nodes.map(|n| n.name(node).to_owned()).unwrap_or_default();
                    Verdict::VipIsNodeAddress { vip: vip.to_string(), node }
                } else if let Some((key, winner)) = taken {
                    Verdict::conflict_with(winner.clone(), key)
                } else {
                    Verdict::Accepted
                };
                let accepted = verdict == Verdict::Accepted;
                let addresses = if accepted { balancer.addresses.clone() } else { Vec::new() };
                if accepted {
                    for key in keys {
                        claims.insert(key, (id.clone(), kind));
                    }
                    judged.load_balancers.push(balancer);
                }
                judged.load_balancer_outcomes.insert(id, LoadBalancerOutcome { verdict, addresses });
            }
        }
    }
    judged
}

/// A Service of ours, ready to be judged: its addresses and its ports.
struct LoadBalancer<'a> {
    service: &'a Service,
    addresses: Vec<IpAddr>,
    ports: Vec<LoadBalancerPort>,
    /// `externalTrafficPolicy: Local`.
    local: bool,
}

impl LoadBalancer<'_> {
    /// Its ports as VirtualServices. With `externalTrafficPolicy: Local`, one
    /// per port and director with ready endpoints on its own node, holding
    /// those alone; no such director, no service.
    fn virtual_services(&self, nodes: &NodeIndex<'_>) -> Vec<(VirtualService, Option<usize>)> {
        let meta = &self.service.metadata;
        let metadata = ObjectMeta {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            generation: meta.generation,
            ..ObjectMeta::default()
        };
        let as_virtual_service = |spec| VirtualService { metadata: metadata.clone(), spec, status: None };
        let mut result = Vec::new();
        for port in &self.ports {
            if !self.local {
                result.push((as_virtual_service(port.spec.clone()), None));
                continue;
            }
            for director in nodes.directors(&port.spec) {
                let name = nodes.name(director);
                // The real servers were made from the endpoints, in their order.
                let local: Vec<_> = (port.spec.real_servers.iter().zip(&port.endpoints))
                    .filter(|(_, endpoint)| endpoint.node.as_deref() == Some(name))
                    .map(|(real_server, _)| real_server.clone())
                    .collect();
                if !local.is_empty() {
                    let spec = VirtualServiceSpec { real_servers: local, ..port.spec.clone() };
                    result.push((as_virtual_service(spec), Some(director)));
                }
            }
        }
        result
    }
}

/// The Services of ours, in any order, each with its addresses and ports or
/// what refuses it. With pools, the addresses are the allocation's and each
/// port is held within its pool (directors, interface, forwarding method).
fn load_balancers<'a>(
    state: &'a ClusterState,
    nodes: &NodeIndex<'_>,
    backends: &Backends<'_>,
    options: &TranslateOptions,
    tenancy: Option<&Tenancy>,
) -> Vec<(Age, Result<LoadBalancer<'a>, Verdict>)> {
    let pools = state.vip_pools.as_deref().unwrap_or_default();
    let ours = state.services.iter().filter(|s| service_lb::is_ours(s, options.default_load_balancer_class));
    ours.map(|service| {
        (
            Age::of_meta(&service.metadata),
            load_balancer(service, nodes, backends, tenancy.map(|t| (t, pools))),
        )
    })
    .collect()
}

fn load_balancer<'a>(
    service: &'a Service,
    nodes: &NodeIndex<'_>,
    backends: &Backends<'_>,
    tenancy: Option<(&Tenancy, &[VipPool])>,
) -> Result<LoadBalancer<'a>, Verdict> {
    let (request, settings) = match (service_lb::request(service), service_lb::settings(service)) {
        (Ok(request), Ok(settings)) => (request, settings),
        (request, settings) => {
            let errors = request.err().into_iter().chain(settings.err()).flatten().collect();
            return Err(Verdict::Invalid(errors));
        }
    };
    let given: Vec<(IpAddr, Option<String>)> = match tenancy {
        Some((tenancy, _)) => {
            tenancy.service_addresses(&request)?.into_iter().map(|(ip, pool)| (ip, Some(pool))).collect()
        }
        None => assign_addresses(&request)?.into_iter().map(|ip| (ip, None)).collect(),
    };
    let addresses: Vec<IpAddr> = given.iter().map(|(ip, _)| *ip).collect();
    let (namespace, name) = &request.id;
    let slices = backends.by_service.get(&(namespace.as_str(), name.as_str())).map_or(&[][..], Vec::as_slice);
    let mut ports =
        service_lb::ports(service, &settings, &addresses, slices, |ip| nodes.by_address.contains_key(&ip))
            .map_err(Verdict::Invalid)?;
    if let Some((_, pools)) = tenancy {
        for port in &mut ports {
            let vip = port.spec.vip.as_deref().and_then(parse_ip);
            let pool_name =
                given.iter().find(|(ip, _)| Some(*ip) == vip).and_then(|(_, pool)| pool.as_deref());
            let pool = pools.iter().find(|p| p.metadata.name.as_deref() == pool_name);
            let pool = pool.ok_or(Verdict::NoAddress)?;
            port.spec = tenancy::service_port_within(&service.metadata, &port.spec, pool)?;
        }
    }
    Ok(LoadBalancer { service, addresses, ports, local: settings.local })
}

/// The addresses of a Service's load balancer, one per family it is served
/// in, or why it gets none.
///
/// Without VipPools only (the cluster mode always has them, so this is for
/// translations made without pools): a Service gets the addresses it
/// requested (`spec.loadBalancerIP`, the annotation `lvs.dev/vip`) and nothing
/// else: without one it is refused (`NoAddress`), and with `RequireDualStack`
/// it needs one of each family.
fn assign_addresses(request: &LoadBalancerRequest) -> Result<Vec<IpAddr>, Verdict> {
    let addresses: Vec<IpAddr> = (request.families.iter())
        .filter_map(|family| {
            request.requested.iter().find(|ip| AddressFamily::from(**ip) == *family).copied()
        })
        .collect();
    if addresses.is_empty() || (request.require_every_family && addresses.len() < request.families.len()) {
        return Err(Verdict::NoAddress);
    }
    Ok(addresses)
}

/// The kernel's key of a valid spec's service.
fn service_key(spec: &VirtualServiceSpec) -> IpvsServiceKey {
    IpvsServiceKey {
        family: spec.family(),
        address: spec.vip.as_deref().and_then(parse_ip),
        port: spec.port.unwrap_or(0),
        protocol: spec.protocol,
        fwmark: spec.fwmark,
    }
}

/// What a service with key `key` claims, which no two accepted services may
/// share: its key, but the kernel tells fwmark services apart by (fwmark,
/// family) alone.
pub fn claim(key: &IpvsServiceKey) -> IpvsServiceKey {
    match key.fwmark {
        Some(_) => IpvsServiceKey { protocol: Protocol::default(), ..key.clone() },
        None => key.clone(),
    }
}

/// A claim as people read it: `TCP 192.168.16.100:80`, `fwmark 5 (IPv6)`.
pub fn describe_claim(claim: &IpvsServiceKey) -> String {
    match (claim.fwmark, claim.address) {
        (Some(mark), _) => format!("fwmark {mark} ({:?})", claim.family),
        (None, Some(IpAddr::V6(vip))) => format!("{:?} [{vip}]:{}", claim.protocol, claim.port),
        (None, Some(vip)) => format!("{:?} {vip}:{}", claim.protocol, claim.port),
        (None, None) => format!("{:?} port {}", claim.protocol, claim.port),
    }
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// The nodes, sorted by name, with lookups by label and by address so that
/// no VirtualService scans them all.
struct NodeIndex<'a> {
    nodes: Vec<&'a Node>,
    /// Label key -> value -> nodes.
    by_label: HashMap<&'a str, HashMap<&'a str, Vec<usize>>>,
    by_address: HashMap<IpAddr, Vec<usize>>,
    default_directors: Vec<usize>,
}

impl<'a> NodeIndex<'a> {
    fn new(nodes: &'a [Node]) -> Self {
        let mut nodes: Vec<&Node> = nodes.iter().collect();
        nodes.sort_by_key(|node| node_name(node));
        let mut by_label: HashMap<_, HashMap<_, Vec<usize>>> = HashMap::new();
        let mut by_address: HashMap<_, Vec<usize>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for (key, value) in node.metadata.labels.iter().flatten() {
                by_label.entry(key.as_str()).or_default().entry(value.as_str()).or_default().push(i);
            }
            let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
            for address in addresses.into_iter().flatten().filter_map(|a| parse_ip(&a.address)) {
                let owners = by_address.entry(address).or_default();
                // A node may list one address under several types.
                if owners.last() != Some(&i) {
                    owners.push(i);
                }
            }
        }
        let mut index = Self { nodes, by_label, by_address, default_directors: Vec::new() };
        index.default_directors = index.carrying(DIRECTOR_LABEL.0, DIRECTOR_LABEL.1).to_vec();
        index
    }

    fn name(&self, node: usize) -> &'a str {
        node_name(self.nodes[node])
    }

    /// The nodes carrying the label `key: value`.
    fn carrying(&self, key: &str, value: &str) -> &[usize] {
        self.by_label.get(key).and_then(|values| values.get(value)).map_or(&[], Vec::as_slice)
    }

    /// The nodes carrying every label of `selector` (all nodes for an empty one).
    fn select(&self, selector: &BTreeMap<String, String>) -> Vec<usize> {
        let carrying = selector.iter().map(|(key, value)| self.carrying(key, value));
        let Some(rarest) = carrying.min_by_key(|nodes| nodes.len()) else {
            return (0..self.nodes.len()).collect();
        };
        let matches = |&&i: &&usize| {
            let labels = self.nodes[i].metadata.labels.as_ref();
            selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        };
        rarest.iter().filter(matches).copied().collect()
    }

    /// Whether `node` may be changed as a real server, within `allowed`.
    fn may_change(&self, node: usize, allowed: &RealServerNodes) -> bool {
        match allowed {
            RealServerNodes::Any => true,
            RealServerNodes::None => false,
            RealServerNodes::Matching(selector) => {
                let labels = self.nodes[node].metadata.labels.as_ref();
                selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            }
        }
    }

    fn directors(&self, spec: &VirtualServiceSpec) -> Vec<usize> {
        match spec.directors.as_ref().map(|d| &d.node_selector).filter(|s| !s.is_empty()) {
            Some(selector) => self.select(selector),
            None => self.default_directors.clone(),
        }
    }

    fn internal_ips(&self, node: usize, family: AddressFamily) -> impl Iterator<Item = IpAddr> + 'a {
        let addresses = self.nodes[node].status.as_ref().and_then(|s| s.addresses.as_ref());
        addresses
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| parse_ip(&a.address))
            .filter(move |ip| AddressFamily::from(*ip) == family)
    }

    fn vrrp_priority(&self, node: usize) -> u8 {
        let annotations = self.nodes[node].metadata.annotations.as_ref();
        annotations
            .and_then(|a| a.get(VRRP_PRIORITY_ANNOTATION))
            .and_then(|p| p.trim().parse().ok())
            .filter(|p| (1..=254).contains(p))
            .unwrap_or(DEFAULT_VRRP_PRIORITY)
    }

    /// The nodes having one of `addresses`, each once, sorted.
    fn owners_of(&self, addresses: impl Iterator<Item = IpAddr>) -> Vec<usize> {
        let mut owners: Vec<usize> =
            addresses.filter_map(|a| self.by_address.get(&a)).flatten().copied().collect();
        owners.sort_unstable();
        owners.dedup();
        owners
    }
}

/// EndpointSlices by (namespace, Service name).
struct Backends<'a> {
    by_service: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Backends<'a> {
    fn new(slices: &'a [EndpointSlice]) -> Self {
        let mut by_service: HashMap<_, Vec<_>> = HashMap::new();
        for slice in slices {
            let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
            if let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                by_service.entry((namespace, service.as_str())).or_default().push(slice);
            }
        }
        Self { by_service }
    }

    /// (address, port) of every ready endpoint of `backend` in `namespace`.
    fn endpoints(
        &self,
        namespace: &str,
        backend: &BackendService,
        family: AddressFamily,
        protocol: Protocol,
    ) -> Vec<(IpAddr, u16)> {
        let slices = self.by_service.get(&(namespace, backend.name.as_str())).map_or(&[][..], Vec::as_slice);
        let family_name = format!("{family:?}");
        let mut endpoints = Vec::new();
        for slice in slices.iter().filter(|s| s.address_type == family_name) {
            let Some(port) = slice_port(slice, backend.port, protocol) else { continue };
            let endpoints_of_slice = slice.endpoints.iter().flatten();
            let ready =
                endpoints_of_slice.filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
            let addresses = ready.flat_map(|e| &e.addresses).filter_map(|a| parse_ip(a));
            endpoints.extend(addresses.filter(|ip| AddressFamily::from(*ip) == family).map(|ip| (ip, port)));
        }
        endpoints
    }
}

/// The port a slice's endpoints serve for the wanted port: the wanted one if
/// the slice lists it (or lists "all ports", a port without number), else the
/// slice's only port of the protocol.
fn slice_port(slice: &EndpointSlice, wanted: Option<u16>, protocol: Protocol) -> Option<u16> {
    let protocol = format!("{protocol:?}");
    let ports = slice.ports.iter().flatten().filter(|p| p.protocol.as_deref().unwrap_or("TCP") == protocol);
    let numbers: Vec<Option<u16>> = ports.map(|p| p.port.and_then(|n| u16::try_from(n).ok())).collect();
    match wanted {
        Some(port) => numbers.iter().any(|&n| n.is_none() || n == Some(port)).then_some(port),
        None => match numbers[..] {
            [Some(only)] => Some(only),
            _ => None,
        },
    }
}

/// One accepted VirtualService, resolved.
struct Resolved<'a> {
    spec: &'a VirtualServiceSpec,
    service: Arc<IpvsService>,
    /// Size and hash of `service`'s JSON, computed once for all directors
    /// (by [`translate`], which cuts objects by size).
    fingerprint: Fingerprint,
    directors: Vec<usize>,
    /// The VIP its DirectRouting or Tunnel real servers bind.
    real_server_vip: Option<RealServerVip>,
    /// What its directors need for it alone (no services, no VIPs).
    director_settings: DirectorState,
    /// The nodes its real server VIP may be bound on.
    real_server_nodes: RealServerNodes,
}

fn resolve<'a>(
    vs: &'a VirtualService,
    kind: OwnerKind,
    nodes: &NodeIndex<'_>,
    backends: &Backends<'_>,
) -> Resolved<'a> {
    let spec = &vs.spec;
    let family = spec.family();
    let service_port = spec.port.unwrap_or(0);
    let tunnel = (spec.forwarding == Forwarding::Tunnel).then(|| spec.tunnel.clone().unwrap_or_default());
    let destination = |address, port, weight| Destination {
        address,
        port,
        weight,
        forwarding: spec.forwarding,
        tunnel: tunnel.clone(),
        upper_threshold: 0,
        lower_threshold: 0,
    };

    let mut destinations: Vec<Destination> = spec
        .real_servers
        .iter()
        .filter_map(|server| {
            let mut d =
                destination(parse_ip(&server.address)?, server.port.unwrap_or(service_port), server.weight);
            d.upper_threshold = server.upper_threshold.unwrap_or(0);
            d.lower_threshold = server.lower_threshold.unwrap_or(0);
            Some(d)
        })
        .collect();
    if let Some(selector) = &spec.real_server_selector {
        let port = selector.port.unwrap_or(service_port);
        for node in nodes.select(&selector.node_selector) {
            destinations.extend(nodes.internal_ips(node, family).map(|ip| destination(ip, port, 1)));
        }
    }
    if let Some(backend) = &spec.backend_service {
        let namespace = vs.metadata.namespace.as_deref().unwrap_or_default();
        let endpoints = backends.endpoints(namespace, backend, family, spec.protocol);
        destinations.extend(endpoints.into_iter().map(|(ip, port)| destination(ip, port, 1)));
    }
    // Stable sort: of equal (address, port), the first source's entry stays.
    destinations.sort_by_key(|d| (d.address, d.port));
    destinations.dedup_by_key(|d| (d.address, d.port));
    destinations.shrink_to_fit(); // kept per service, thousands of times

    let sorry_server = spec.sorry_server.as_ref().and_then(|sorry| {
        Some(destination(parse_ip(&sorry.address)?, sorry.port.unwrap_or(service_port), 1))
    });
    let persistence = spec.persistence.as_ref().map(|p| IpvsPersistence {
        timeout_seconds: p.timeout_seconds,
        prefix_length: p.netmask.as_deref().and_then(|m| netmask_prefix_length(m, family)).unwrap_or(
            match family {
                AddressFamily::IPv4 => 32,
                AddressFamily::IPv6 => 128,
            },
        ),
    });
    let owner = ServiceOwner {
        kind,
        namespace: vs.metadata.namespace.clone().unwrap_or_default(),
        name: vs.metadata.name.clone().unwrap_or_default(),
        uid: vs.metadata.uid.clone().unwrap_or_default(),
        generation: vs.metadata.generation.unwrap_or(0),
    };
    let key = service_key(spec);
    let real_server_mode = match spec.forwarding {
        Forwarding::DirectRouting => Some(RealServerMode::DirectRouting),
        Forwarding::Tunnel => Some(RealServerMode::Tunnel),
        Forwarding::Nat | Forwarding::FullNat => None,
    };
    let real_server_vip = key.address.zip(real_server_mode).map(|(address, mode)| RealServerVip {
        address,
        mode,
        tunnel: tunnel.clone(),
        owner: owner.clone(),
    });
    let service = IpvsService {
        owner,
        key,
        scheduler: spec.scheduler,
        scheduler_flags: spec.scheduler_flags.clone(),
        persistence,
        one_packet: spec.one_packet,
        destinations,
        health_check: spec.health_check.clone(),
        drain_seconds: spec.drain_seconds.unwrap_or(0),
        sorry_server,
    };
    Resolved {
        spec,
        fingerprint: Fingerprint::default(),
        service: Arc::new(service),
        directors: nodes.directors(spec),
        real_server_vip,
        director_settings: director_settings(spec),
        real_server_nodes: RealServerNodes::Any,
    }
}

/// What a director of a service of `spec` needs for it alone (no services, no VIPs).
fn director_settings(spec: &VirtualServiceSpec) -> DirectorState {
    let connection_sync = spec.connection_sync.then(|| ConnectionSync {
        // Empty: the service names no interface for its directors.
        interface: spec.directors.as_ref().and_then(|d| d.interface.clone()).unwrap_or_default(),
        // The VRRP router ID is unique among the directors' groups; so is then the
        // sync ID. 0: the service has no failover.
        sync_id: spec.failover.as_ref().map_or(0, |f| f.vrrp.virtual_router_id),
    });
    DirectorState {
        services: Vec::new(),
        vips: Vec::new(),
        connection_sync,
        ip_forward: matches!(spec.forwarding, Forwarding::Nat | Forwarding::FullNat),
        full_nat_masquerade: spec.forwarding == Forwarding::FullNat,
    }
}

/// The director settings of a node, from those of the services it directs
/// (each as [`NodePart::director_settings`] has them) in the order of their
/// keys: IP forwarding and FullNAT masquerading when any service needs them;
/// connection sync when any service is synced, on the interface and with the
/// sync ID of the first synced service that names one. `None` without services.
pub fn merge_director_settings<'a>(
    services: impl IntoIterator<Item = &'a DirectorState>,
) -> Option<DirectorState> {
    let mut merged: Option<DirectorState> = None;
    for service in services {
        let merged = merged.get_or_insert_with(DirectorState::default);
        merged.ip_forward |= service.ip_forward;
        merged.full_nat_masquerade |= service.full_nat_masquerade;
        if let Some(sync) = &service.connection_sync {
            let into = merged
                .connection_sync
                .get_or_insert_with(|| ConnectionSync { interface: String::new(), sync_id: 0 });
            if into.interface.is_empty() {
                into.interface.clone_from(&sync.interface);
            }
            if into.sync_id == 0 {
                into.sync_id = sync.sync_id;
            }
        }
    }
    merged
}

/// A node's director VIPs as its state lists them: sorted (by address,
/// interface, then VRRP parameters), each once (services on one VIP give it once).
pub fn merge_director_vips(vips: &mut Vec<DirectorVip>) {
    vips.sort_by(|a, b| director_vip_order(a).cmp(&director_vip_order(b)));
    vips.dedup();
}

fn director_vip_order(vip: &DirectorVip) -> impl Ord + '_ {
    let vrrp = vip.vrrp.as_ref().map(|v| (v.virtual_router_id, v.advert_interval_ms, v.preempt, v.priority));
    (vip.address, &vip.interface, vrrp)
}

impl Resolved<'_> {
    fn id(&self) -> ObjectId {
        (self.service.owner.namespace.clone(), self.service.owner.name.clone())
    }

    fn owner(&self) -> OwnerId {
        (self.service.owner.kind, self.id())
    }

    /// The VIP a director with VRRP priority `priority` may hold.
    fn director_vip(&self, priority: u8) -> Option<DirectorVip> {
        Some(DirectorVip {
            address: self.service.key.address?,
            interface: self.spec.directors.as_ref().and_then(|d| d.interface.clone()),
            vrrp: self.spec.failover.as_ref().map(|f| VrrpInstance {
                virtual_router_id: f.vrrp.virtual_router_id,
                advert_interval_ms: f.vrrp.advert_interval_ms,
                preempt: f.vrrp.preempt,
                priority,
            }),
        })
    }

    fn real_server_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.service.destinations.iter().chain(&self.service.sorry_server).map(|d| d.address)
    }
}

/// What one node is to do, gathered before it is cut into objects.
#[derive(Default)]
struct NodeState<'a> {
    /// In key order.
    services: Vec<&'a Resolved<'a>>,
    director_vips: Vec<DirectorVip>,
    /// In key order of their services.
    real_server_vips: Vec<RealServerVip>,
}

/// Serialized size of a list's key and brackets (`,"services":[]`), at most.
const LIST_OVERHEAD: usize = 16;

impl NodeState<'_> {
    /// The node's objects: every list cut into consecutive runs so that each
    /// object's JSON stays within `max_bytes`.
    fn into_objects(mut self, node: &str, max_bytes: usize, names: &ChunkNames<'_>) -> Vec<LvsNode> {
        merge_director_vips(&mut self.director_vips);
        // The settings that hold for the whole node: repeated in every chunk, so
        // any one chunk tells them.
        let director = merge_director_settings(self.services.iter().map(|s| &s.director_settings));
        let real_server = (!self.real_server_vips.is_empty()).then(RealServerState::default);

        let vip_fingerprints: Vec<Fingerprint> = self.director_vips.iter().map(Fingerprint::of).collect();
        let real_server_fingerprints: Vec<Fingerprint> =
            self.real_server_vips.iter().map(Fingerprint::of).collect();
        let items: Vec<Fingerprint> = (self.services.iter().map(|s| s.fingerprint))
            .chain(vip_fingerprints)
            .chain(real_server_fingerprints)
            .collect();

        // The revision covers the layout too: a different bound may cut the
        // same state differently, and chunks of two layouts must not mix.
        let mut revision = Fingerprint::default();
        for number in [max_bytes, self.services.len(), self.director_vips.len(), self.real_server_vips.len()]
        {
            revision.add(&(number as u64).to_le_bytes());
        }
        serde_json::to_writer(&mut revision, &director).expect("a DirectorState serializes");
        for item in &items {
            revision.add(&item.hash.to_le_bytes());
        }
        let revision = format!("{:016x}", revision.hash);

        let mut skeleton = LvsNodeSpec {
            node: node.to_owned(),
            chunk: u32::MAX,
            chunks: u32::MAX,
            revision,
            director: director.clone(),
            real_server: real_server.clone(),
        };
        let widest_name = format!("{node}-{}", u32::MAX);
        let overhead =
            Fingerprint::of(&lvs_node(&widest_name, node, skeleton.clone())).bytes + 3 * LIST_OVERHEAD;
        let runs = pack(&items, max_bytes.saturating_sub(overhead));

        let (services_end, vips_end) = (self.services.len(), self.services.len() + self.director_vips.len());
        let chunks = runs.len() as u32;
        skeleton.chunks = chunks;
        runs.into_iter()
            .zip(names.of(node))
            .enumerate()
            .map(|(chunk, (run, name))| {
                let mut spec = LvsNodeSpec { chunk: chunk as u32, ..skeleton.clone() };
                if let Some(director) = &mut spec.director {
                    director.services = self.services[clamp(&run, 0, services_end)]
                        .iter()
                        .map(|s| s.service.clone())
                        .collect();
                    director.vips = self.director_vips[clamp(&run, services_end, vips_end)].to_vec();
                }
                if let Some(real_server) = &mut spec.real_server {
                    real_server.vips = self.real_server_vips[clamp(&run, vips_end, items.len())].to_vec();
                }
                lvs_node(&name, node, spec)
            })
            .collect()
    }
}

/// The part of `run` that falls into the list at `start..end` of the items,
/// relative to that list.
fn clamp(run: &Range<usize>, start: usize, end: usize) -> Range<usize> {
    let from = run.start.clamp(start, end);
    let to = run.end.clamp(start, end);
    from - start..to - start
}

/// Cut items into consecutive runs of at most `budget` bytes (each item
/// costs its size plus a comma); every run has at least one item, and there
/// is at least one run.
fn pack(items: &[Fingerprint], budget: usize) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let cost = item.bytes + 1;
        if i > start && used + cost > budget {
            runs.push(start..i);
            (start, used) = (i, 0);
        }
        used += cost;
    }
    runs.push(start..items.len());
    runs
}

fn lvs_node(name: &str, node: &str, spec: LvsNodeSpec) -> LvsNode {
    let mut object = LvsNode::new(name, spec);
    object.metadata.labels = Some(BTreeMap::from([(NODE_LABEL.to_owned(), node.to_owned())]));
    object
}

/// Names of a node's chunks: `<node>`, then `<node>-1`, `<node>-2`, ...,
/// skipping any suffix that would make the name of another node (whose own
/// first object bears its name).
struct ChunkNames<'a> {
    node_names: HashSet<&'a str>,
}

impl ChunkNames<'_> {
    fn of<'n>(&'n self, node: &'n str) -> impl Iterator<Item = String> + 'n {
        let rest = (1u64..)
            .map(move |n| format!("{node}-{n}"))
            .filter(|name| !self.node_names.contains(name.as_str()));
        std::iter::once(node.to_owned()).chain(rest)
    }
}

/// Length and FNV-1a hash of bytes written, e.g. a value's JSON: sizes the
/// chunks and makes the revision without keeping the text.
#[derive(Clone, Copy, Debug)]
struct Fingerprint {
    bytes: usize,
    hash: u64,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self { bytes: 0, hash: 0xcbf2_9ce4_8422_2325 }
    }
}

impl Fingerprint {
    fn of(value: &impl Serialize) -> Self {
        let mut fingerprint = Self::default();
        serde_json::to_writer(&mut fingerprint, value).expect("API types serialize to JSON");
        fingerprint
    }

    fn add(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.bytes += bytes.len();
    }
}

impl io::Write for Fingerprint {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.add(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A node's whole state from all its chunks, in any order: one spec with
/// `chunk` 0 and `chunks` 1. `None` while chunks are missing or belong to
/// different revisions (the controller writes them one by one).
pub fn assemble<'a>(chunks: impl IntoIterator<Item = &'a LvsNodeSpec>) -> Option<LvsNodeSpec> {
    let mut chunks: Vec<&LvsNodeSpec> = chunks.into_iter().collect();
    chunks.sort_by_key(|chunk| chunk.chunk);
    let first = *chunks.first()?;
    let complete = chunks.len() == first.chunks as usize
        && chunks.iter().enumerate().all(|(i, chunk)| {
            chunk.chunk as usize == i
                && chunk.chunks == first.chunks
                && chunk.revision == first.revision
                && chunk.node == first.node
        });
    if !complete {
        return None;
    }
    let mut whole = LvsNodeSpec { chunk: 0, chunks: 1, ..first.clone() };
    for chunk in &chunks[1..] {
        if let (Some(whole), Some(part)) = (&mut whole.director, &chunk.director) {
            whole.services.extend(part.services.iter().cloned());
            whole.vips.extend(part.vips.iter().cloned());
        }
        if let (Some(whole), Some(part)) = (&mut whole.real_server, &chunk.real_server) {
            whole.vips.extend(part.vips.iter().cloned());
        }
    }
    Some(whole)
}
