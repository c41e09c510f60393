//! The cluster mode's bounds on what a namespace may cause: every
//! VirtualService takes its VIP, directors and permissions from a VipPool
//! that admits its namespace (see `docs/security.md`).
//!
//! Before the verdicts of [`super::judge`], each valid VirtualService is
//! - given its VIP ([`allocate`]: its `vip` must lie in an admitting pool,
//!   without one it gets a free address) and its pool (a fwmark service
//!   takes the first admitting pool that allows fwmark services);
//! - checked against its pool: forwarding method, fwmark, interface;
//! - rewritten into its effective form: the allocated `vip`, the pool's
//!   director selector narrowed by its own, its `realServerSelector`
//!   narrowed by the pool's `realServerNodeSelector` (refused without one).
//!
//! After resolving, [`vrrp_conflicts`] refuses, newer first, each
//! VirtualService or Service whose VRRP settings contradict an older one's on
//! a shared director: every other VIP keeps working.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::apis::meta::v1::ObjectMeta};

use super::{Age, DIRECTOR_LABEL, NodeIndex, ObjectId, Resolved, Verdict, VipAllocation, object_id};
use crate::{
    VirtualService,
    allocation::{Allocation, Claim, Owner, Refusal, Reservation, allocate},
    lvs_node::{IpvsServiceKey, OwnerKind},
    service_lb::{self, LoadBalancerRequest},
    translate::{ClusterState, TranslateOptions, describe_claim},
    validation::parse_ip,
    vip_pool::VipPool,
    virtual_service::{AddressFamily, Directors, VirtualServiceSpec},
};

/// The owner kind of a VirtualService's claims.
pub const VIRTUAL_SERVICE_KIND: &str = "VirtualService";

/// The owner kind of a Service's claims (type LoadBalancer, our class).
pub const SERVICE_KIND: &str = "Service";

/// Which nodes may be changed as real servers of a service (the VIP bound,
/// sysctls).
#[derive(Clone, Debug, Default)]
pub(super) enum RealServerNodes {
    /// Any node (no pools: the standalone agent).
    #[default]
    Any,
    /// The nodes carrying these labels (the pool's `realServerNodeSelector`).
    Matching(BTreeMap<String, String>),
    /// No node (the pool has no `realServerNodeSelector`).
    None,
}

/// The pools' part of a translation.
pub(super) struct Tenancy {
    /// The VirtualServices not refused here, in their effective form
    /// (invalid ones as they are, for the verdicts to say so).
    pub effective: Vec<VirtualService>,
    pub verdicts: BTreeMap<ObjectId, Verdict>,
    pub allocations: BTreeMap<ObjectId, VipAllocation>,
    pub real_server_nodes: HashMap<ObjectId, RealServerNodes>,
    pub allocation: Allocation,
}

/// The claim of a VirtualService with a VIP (given or to allocate).
pub fn claim_of(vs: &VirtualService) -> Claim {
    let spec = &vs.spec;
    Claim {
        owner: owner_of(vs),
        created: vs.metadata.creation_timestamp.clone(),
        family: spec.family(),
        requested: spec.vip.as_deref().and_then(parse_ip),
        pool: spec.pool.clone(),
        previous: vs.status.as_ref().and_then(|s| s.vip.as_deref()).and_then(parse_ip),
        previous_pool: vs.status.as_ref().and_then(|s| s.pool.clone()),
        ports: vec![(spec.port.unwrap_or(0), spec.protocol)],
    }
}

/// The claims of a Service of type LoadBalancer: one per family it serves,
/// in the same allocation as the VirtualServices', so that no address is
/// handed out twice whichever kind holds it.
pub fn service_claims(service: &Service, request: &LoadBalancerRequest) -> Vec<Claim> {
    let of_family = |addresses: &[IpAddr], family: AddressFamily| {
        addresses.iter().find(|ip| AddressFamily::from(**ip) == family).copied()
    };
    let (namespace, name) = request.id.clone();
    (request.families.iter())
        .map(|&family| Claim {
            owner: Owner { kind: SERVICE_KIND.to_owned(), namespace: namespace.clone(), name: name.clone() },
            created: service.metadata.creation_timestamp.clone(),
            family,
            requested: of_family(&request.requested, family),
            pool: request.pool.clone(),
            previous: of_family(&request.previous, family),
            // The Service's status names no pool: any admitting pool that
            // still holds the address keeps it.
            previous_pool: None,
            ports: request.ports.iter().map(|&(protocol, port)| (port, protocol)).collect(),
        })
        .collect()
}

pub fn owner_of(vs: &VirtualService) -> Owner {
    let (namespace, name) = object_id(vs);
    Owner { kind: VIRTUAL_SERVICE_KIND.to_owned(), namespace, name }
}

/// The addresses no pool hands out: every node's, the API server's, the
/// Service and pod CIDRs.
pub fn reservations(
    nodes: &[k8s_openapi::api::core::v1::Node],
    options: &TranslateOptions,
) -> Vec<Reservation> {
    let mut reserved = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for address in addresses.into_iter().flatten().filter_map(|a| parse_ip(&a.address)) {
            reserved.push(Reservation::address(address, format!("the address of node {name}")));
        }
    }
    for &address in &options.api_server_addresses {
        reserved.push(Reservation::address(address, "the API server's address"));
    }
    for net in &options.service_cidrs {
        reserved.push(Reservation::net(net, format!("inside the Service CIDR {net}")));
    }
    for net in &options.pod_cidrs {
        reserved.push(Reservation::net(net, format!("inside the pod CIDR {net}")));
    }
    reserved
}

pub(super) fn admit(state: &ClusterState, pools: &[VipPool], options: &TranslateOptions) -> Tenancy {
    let valid: Vec<bool> = state.virtual_services.iter().map(|vs| vs.spec.validate().is_ok()).collect();
    let mut claims: Vec<Claim> = (state.virtual_services.iter().zip(&valid))
        .filter(|(vs, valid)| **valid && vs.spec.fwmark.is_none())
        .map(|(vs, _)| claim_of(vs))
        .collect();
    let services =
        state.services.iter().filter(|s| service_lb::is_ours(s, options.default_load_balancer_class));
    for service in services {
        if let Ok(request) = service_lb::request(service) {
            claims.extend(service_claims(service, &request));
        }
    }
    let ports: HashMap<&Owner, &Claim> = claims.iter().map(|c| (&c.owner, c)).collect();
    let allocation = allocate(pools, &state.namespaces, &reservations(&state.nodes, options), &claims);

    let mut by_name: Vec<&VipPool> = pools.iter().collect();
    by_name.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let labels: HashMap<&str, BTreeMap<String, String>> = (state.namespaces.iter())
        .map(|n| {
            (n.metadata.name.as_deref().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default())
        })
        .collect();

    let mut tenancy = Tenancy {
        effective: Vec::new(),
        verdicts: BTreeMap::new(),
        allocations: BTreeMap::new(),
        real_server_nodes: HashMap::new(),
        allocation: Allocation::default(),
    };
    for (vs, valid) in state.virtual_services.iter().zip(valid) {
        if !valid {
            tenancy.effective.push(vs.clone());
            continue;
        }
        let id = object_id(vs);
        let given = match vs.spec.fwmark {
            Some(_) => {
                let no_labels = BTreeMap::new();
                let labels = labels.get(id.0.as_str()).unwrap_or(&no_labels);
                fwmark_pool(vs, &by_name, labels).map(|pool| (pool, None, None))
            }
            None => match allocation.outcomes.get(&(owner_of(vs), vs.spec.family())) {
                Some(Ok(allocated)) => {
                    let pool = by_name.iter().find(|p| p.metadata.name.as_deref() == Some(&allocated.pool));
                    let pool = *pool.expect("an allocation names a pool");
                    Ok((pool, Some(allocated.address), allocated.released))
                }
                Some(Err(refusal)) => Err(refused_by_allocation(vs, refusal, &ports)),
                None => Err(Verdict::Refused { reason: "NoPool", message: "not allocated".into() }),
            },
        };
        let (pool, vip, released) = match given {
            Ok(given) => given,
            Err(verdict) => {
                tenancy.verdicts.insert(id, verdict);
                continue;
            }
        };
        let pool_name = pool.metadata.name.clone().unwrap_or_default();
        tenancy.allocations.insert(id.clone(), VipAllocation { vip, pool: pool_name, released });
        match within(vs, pool, vip) {
            Ok((effective, nodes)) => {
                tenancy.effective.push(effective);
                tenancy.real_server_nodes.insert(id, nodes);
            }
            Err(verdict) => drop(tenancy.verdicts.insert(id, verdict)),
        }
    }
    tenancy.allocation = allocation;
    tenancy
}

impl Tenancy {
    /// A Service's addresses, each with its pool, from the allocation: one per
    /// family served (every family with `RequireDualStack`), or the refusal.
    pub(super) fn service_addresses(
        &self,
        request: &LoadBalancerRequest,
    ) -> Result<Vec<(IpAddr, String)>, Verdict> {
        let (namespace, name) = request.id.clone();
        let owner = Owner { kind: SERVICE_KIND.to_owned(), namespace, name };
        let mut given = Vec::new();
        let mut refusal = None;
        for &family in &request.families {
            match self.allocation.outcomes.get(&(owner.clone(), family)) {
                Some(Ok(allocated)) => given.push((allocated.address, allocated.pool.clone())),
                Some(Err(refused)) => {
                    refusal.get_or_insert(Verdict::Refused {
                        reason: refused.reason(),
                        message: refused.message(),
                    });
                }
                None => drop(refusal.get_or_insert(Verdict::NoAddress)),
            }
        }
        match refusal {
            Some(verdict) if given.is_empty() || request.require_every_family => Err(verdict),
            _ => Ok(given),
        }
    }
}

/// A Service's port within its pool: the pool's directors and interface, and
/// a forwarding method the pool allows. Its real servers are the Service's
/// own endpoints, so no node selector is narrowed.
pub(super) fn service_port_within(
    service: &ObjectMeta,
    spec: &VirtualServiceSpec,
    pool: &VipPool,
) -> Result<VirtualServiceSpec, Verdict> {
    let port = VirtualService { metadata: service.clone(), spec: spec.clone(), status: None };
    within(&port, pool, None).map(|(effective, _)| effective.spec)
}

/// The verdict on a VirtualService the allocation refused: an address held
/// by an older VirtualService on the same key is the usual key conflict.
fn refused_by_allocation(
    vs: &VirtualService,
    refusal: &Refusal,
    claims: &HashMap<&Owner, &Claim>,
) -> Verdict {
    if let Refusal::InUse { address, holder, same_ports: true } = refusal {
        let winner_kind =
            if holder.kind == SERVICE_KIND { OwnerKind::Service } else { OwnerKind::VirtualService };
        let key = IpvsServiceKey {
            family: AddressFamily::from(*address),
            address: Some(*address),
            port: vs.spec.port.unwrap_or(0),
            protocol: vs.spec.protocol,
            fwmark: None,
        };
        if claims.get(holder).is_some_and(|c| c.ports.contains(&(key.port, key.protocol))) {
            return Verdict::Conflict {
                winner: (holder.namespace.clone(), holder.name.clone()),
                winner_kind,
                key: describe_claim(&key),
            };
        }
    }
    Verdict::Refused { reason: refusal.reason(), message: refusal.message() }
}

/// The pool of a fwmark service: the one it names, else the first by name
/// that admits its namespace and allows fwmark services.
fn fwmark_pool<'a>(
    vs: &VirtualService,
    pools: &[&'a VipPool],
    labels: &BTreeMap<String, String>,
) -> Result<&'a VipPool, Verdict> {
    let namespace = vs.metadata.namespace.clone().unwrap_or_default();
    let refused =
        |refusal: Refusal| Verdict::Refused { reason: refusal.reason(), message: refusal.message() };
    let named = |p: &&&VipPool| vs.spec.pool.is_none() || p.metadata.name == vs.spec.pool;
    let admitting: Vec<&VipPool> =
        pools.iter().filter(named).filter(|p| p.spec.admits(&namespace, labels)).copied().collect();
    if admitting.is_empty() {
        return Err(refused(match &vs.spec.pool {
            Some(pool) if pools.iter().any(|p| p.metadata.name.as_ref() == Some(pool)) => {
                Refusal::PoolNotAdmitted { pool: pool.clone(), namespace }
            }
            Some(pool) => Refusal::PoolNotFound { pool: pool.clone() },
            None => Refusal::NoPool { namespace },
        }));
    }
    admitting.into_iter().find(|p| p.spec.allow_fwmark).ok_or_else(|| Verdict::Refused {
        reason: "FwmarkNotAllowed",
        message: format!("no VipPool admitting namespace {namespace} allows fwmark services (allowFwmark)"),
    })
}

/// `vs` within what `pool` allows, in its effective form (the VIP, the
/// directors and the real-server selector narrowed by the pool), and the
/// nodes it may change as real servers.
fn within(
    vs: &VirtualService,
    pool: &VipPool,
    vip: Option<std::net::IpAddr>,
) -> Result<(VirtualService, RealServerNodes), Verdict> {
    let spec = &vs.spec;
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let refuse = |reason: &'static str, message: String| Err(Verdict::Refused { reason, message });
    if !pool.spec.forwarding_methods.contains(&spec.forwarding) {
        let allowed: Vec<String> = pool.spec.forwarding_methods.iter().map(|f| format!("{f:?}")).collect();
        return refuse(
            "ForwardingNotAllowed",
            format!("VipPool {name} allows forwarding {}, not {:?}", allowed.join(", "), spec.forwarding),
        );
    }
    if spec.fwmark.is_some() && !pool.spec.allow_fwmark {
        return refuse(
            "FwmarkNotAllowed",
            format!("VipPool {name} does not allow fwmark services (allowFwmark)"),
        );
    }
    let pool_directors = pool.spec.directors.clone().unwrap_or_default();
    let interface =
        match (&pool_directors.interface, spec.directors.as_ref().and_then(|d| d.interface.as_ref())) {
            (Some(theirs), Some(mine)) if theirs != mine => {
                return refuse(
                    "InterfaceNotAllowed",
                    format!("spec.directors.interface {mine}: VipPool {name} puts its VIPs on {theirs}"),
                );
            }
            (Some(theirs), _) => Some(theirs.clone()),
            (None, mine) => mine.cloned(),
        };
    let base = match pool_directors.node_selector.is_empty() {
        true => BTreeMap::from([(DIRECTOR_LABEL.0.to_owned(), DIRECTOR_LABEL.1.to_owned())]),
        false => pool_directors.node_selector,
    };
    let own = spec.directors.as_ref().map(|d| d.node_selector.clone()).unwrap_or_default();
    let Some(node_selector) = narrow(&base, &own) else {
        return refuse(
            "DirectorsOutsidePool",
            format!("spec.directors.nodeSelector contradicts VipPool {name}'s director selector {base:?}"),
        );
    };

    let mut effective = vs.clone();
    effective.spec.vip = vip.map(|v| v.to_string()).or_else(|| spec.vip.clone());
    effective.spec.directors = Some(Directors { node_selector, interface });
    if let Some(selector) = &mut effective.spec.real_server_selector {
        let Some(allowed) = &pool.spec.real_server_node_selector else {
            return refuse(
                "RealServerNodesNotAllowed",
                format!(
                    "spec.realServerSelector: VipPool {name} allows no node as a real server (realServerNodeSelector)"
                ),
            );
        };
        let Some(narrowed) = narrow(allowed, &selector.node_selector) else {
            return refuse(
                "RealServerNodesNotAllowed",
                format!(
                    "spec.realServerSelector.nodeSelector contradicts VipPool {name}'s realServerNodeSelector {allowed:?}"
                ),
            );
        };
        selector.node_selector = narrowed;
    }
    let nodes = match &pool.spec.real_server_node_selector {
        Some(selector) => RealServerNodes::Matching(selector.clone()),
        None => RealServerNodes::None,
    };
    Ok((effective, nodes))
}

/// Both selectors at once; `None` when they ask one label for two values.
fn narrow(
    pool: &BTreeMap<String, String>,
    own: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let mut both = pool.clone();
    for (key, value) in own {
        if both.insert(key.clone(), value.clone()).is_some_and(|theirs| theirs != *value) {
            return None;
        }
    }
    Some(both)
}

/// An object that owns services: its kind and (namespace, name).
pub(super) type OwnerId = (OwnerKind, ObjectId);

/// The VirtualServices and Services whose VRRP settings contradict an older
/// one's on a director both use, with their verdicts. Per director, the older
/// holds:
/// - a VIP's interface and VRRP settings (router ID, interval, preemption,
///   or no VRRP);
/// - a router ID's interval and preemption on an interface (the agent makes
///   one VRRP instance of the VIPs of one router ID), and, between
///   namespaces, its VIP: one namespace's router never carries another's VIP.
///
/// `ages` orders the owners (VirtualServices before Services of one age, as
/// [`super::judge`] does); a service whose owner has no age is not judged.
pub(super) fn vrrp_conflicts(
    services: &[Resolved<'_>],
    ages: &HashMap<OwnerId, Age>,
    nodes: &NodeIndex<'_>,
) -> BTreeMap<OwnerId, Verdict> {
    type Settings = (Option<String>, Option<(u8, u32, bool)>);
    let mut order: Vec<(&Age, &Resolved<'_>)> =
        services.iter().filter_map(|r| Some((ages.get(&r.owner())?, r))).collect();
    order.sort_by(|a, b| (a.0, a.1.service.owner.kind).cmp(&(b.0, b.1.service.owner.kind)));

    let mut by_vip: HashMap<(usize, IpAddr), (Settings, OwnerId)> = HashMap::new();
    // (director, interface, family, router ID) -> (interval, preempt), VIP, holder.
    type Router = (usize, Option<String>, AddressFamily, u8);
    let mut by_router: HashMap<Router, ((u32, bool), IpAddr, OwnerId)> = HashMap::new();
    let mut refused = BTreeMap::new();
    // Each owner whole (a Service has a service per port, and per director
    // under `externalTrafficPolicy: Local`): judged on all, then registered.
    for group in order.chunk_by(|a, b| a.1.owner() == b.1.owner()) {
        let owner = group[0].1.owner();
        let mut conflict = None;
        let mut claims = Vec::new();
        'group: for (_, service) in group {
            let Some(vip) = service.service.key.address else { continue };
            let interface = service.spec.directors.as_ref().and_then(|d| d.interface.clone());
            let vrrp = service.spec.failover.as_ref().map(|f| {
                let v = &f.vrrp;
                (v.virtual_router_id, v.advert_interval_ms, v.preempt)
            });
            let settings: Settings = (interface.clone(), vrrp);
            let family = AddressFamily::from(vip);
            for &node in &service.directors {
                if let Some((theirs, winner)) = by_vip.get(&(node, vip))
                    && *theirs != settings
                {
                    conflict = Some(format!(
                        "on director {}, VIP {vip} has other interface or VRRP settings ({}) in the older {}",
                        nodes.name(node),
                        describe(theirs),
                        describe_owner(winner)
                    ));
                    break 'group;
                }
                if let Some((router, advert, preempt)) = vrrp
                    && let Some((theirs, their_vip, winner)) =
                        by_router.get(&(node, interface.clone(), family, router))
                    && (*theirs != (advert, preempt) || (*their_vip != vip && winner.1.0 != owner.1.0))
                {
                    conflict = Some(format!(
                        "on director {}, VRRP router {router} ({}) is used by the older {} \
                         (VIP {their_vip}, advert interval {} ms, preempt {})",
                        nodes.name(node),
                        interface.as_deref().unwrap_or("the route's interface"),
                        describe_owner(winner),
                        theirs.0,
                        theirs.1
                    ));
                    break 'group;
                }
                claims.push((node, vip, settings.clone(), family));
            }
        }
        if let Some(message) = conflict {
            refused.insert(owner, Verdict::Refused { reason: "VrrpConflict", message });
            continue;
        }
        for (node, vip, settings, family) in claims {
            if let (interface, Some((router, advert, preempt))) = &settings {
                by_router
                    .entry((node, interface.clone(), family, *router))
                    .or_insert_with(|| ((*advert, *preempt), vip, owner.clone()));
            }
            by_vip.entry((node, vip)).or_insert_with(|| (settings, owner.clone()));
        }
    }
    refused
}

/// `VirtualService team-a/web`, `Service team-a/web`.
fn describe_owner((kind, id): &OwnerId) -> String {
    format!("{kind:?} {}", super::qualified_name(id))
}

fn describe((interface, vrrp): &(Option<String>, Option<(u8, u32, bool)>)) -> String {
    let interface = interface.as_deref().unwrap_or("the route's interface");
    match vrrp {
        Some((router, advert, preempt)) => {
            format!(
                "interface {interface}, VRRP router {router}, advert interval {advert} ms, preempt {preempt}"
            )
        }
        None => format!("interface {interface}, no VRRP"),
    }
}
