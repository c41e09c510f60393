//! Kubernetes Services of `type: LoadBalancer` and our class
//! ([`LOAD_BALANCER_CLASS`]), turned into what the translation already knows:
//! one [`VirtualServiceSpec`] per Service port and IP family, with the ready
//! endpoints of the Service's EndpointSlices as real servers. Pure: the
//! translation ([`crate::translate`]) calls it with the Service's address per
//! family, which it gets from [`LoadBalancerRequest`] (the claim an address
//! allocator takes).
//!
//! - Addresses: one per IP family the Service serves (`spec.ipFamilies`; with
//!   `ipFamilyPolicy: RequireDualStack` every family needs one). A requested
//!   address comes from `spec.loadBalancerIP` or the annotation [`VIP_ANNOTATION`]
//!   (comma separated, one per family); a pool from [`POOL_ANNOTATION`].
//! - Forwarding ([`FORWARDING_ANNOTATION`]): NAT, FullNAT, DirectRouting or
//!   Tunnel. Absent: FullNAT with `externalTrafficPolicy: Cluster` (the director
//!   masquerades, so any endpoint's replies come back through it, as kube-proxy
//!   masquerades for Cluster), NAT with `Local` (the client's address is kept;
//!   the replies of a director's own endpoints pass through it, their node).
//!   DirectRouting and Tunnel need the VIP inside each real server, which the
//!   agent configures on nodes only: they are refused unless every endpoint is a
//!   node's address (hostNetwork pods) serving the Service's own port.
//! - Scheduler ([`SCHEDULER_ANNOTATION`]): as ipvsadm spells it; absent: wlc.
//! - `sessionAffinity: ClientIP`: persistence with
//!   `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800, as kube-proxy).
//! - `externalTrafficPolicy: Local`: only directors with ready endpoints of the
//!   Service on their own node direct it, each to those endpoints alone (the
//!   translation splits the ports by node, see [`LoadBalancerPort::endpoints`]).

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};

use crate::{
    ValidationError,
    translate::ObjectId,
    validation::parse_ip,
    virtual_service::{
        AddressFamily, Failover, Forwarding, Persistence, Protocol, RealServer, Scheduler,
        VirtualServiceSpec, Vrrp,
    },
};

/// `spec.loadBalancerClass` of the Services lvs-operator serves.
pub const LOAD_BALANCER_CLASS: &str = "lvs.dev/ipvs";

/// Annotation with the requested address(es), comma separated, one per family.
pub const VIP_ANNOTATION: &str = "lvs.dev/vip";

/// Another name of [`VIP_ANNOTATION`] (MetalLB's `loadBalancerIPs` spelled our way).
pub const LOAD_BALANCER_IPS_ANNOTATION: &str = "lvs.dev/load-balancer-ips";

/// Annotation naming the VipPool to allocate from.
pub const POOL_ANNOTATION: &str = "lvs.dev/pool";

/// Annotation with the forwarding method: NAT, FullNAT, DirectRouting, Tunnel.
pub const FORWARDING_ANNOTATION: &str = "lvs.dev/forwarding";

/// Annotation with the IPVS scheduler, as ipvsadm spells it (rr, wlc, mh, ...).
pub const SCHEDULER_ANNOTATION: &str = "lvs.dev/scheduler";

/// Annotation with a VRRP virtual router ID (1-255): the directors then share
/// the VIP by VRRP (one master holds it), as `failover.vrrp` of a VirtualService.
pub const VRRP_ROUTER_ID_ANNOTATION: &str = "lvs.dev/vrrp-router-id";

/// Persistence of `sessionAffinity: ClientIP` without a timeout (kube-proxy's too).
pub const DEFAULT_SESSION_AFFINITY_SECONDS: u32 = 10800;

/// `status.loadBalancer.ingress[].ipMode` written for our addresses: Proxy,
/// since the directors rewrite the destination (NAT, FullNAT) or the real
/// servers receive it themselves (DirectRouting, Tunnel); with VIP, kube-proxy
/// (and Cilium's replacement of it) would catch the VIP's traffic on every
/// node before IPVS sees it.
pub const IP_MODE: &str = "Proxy";

/// Label of an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Whether the Service is ours: `type: LoadBalancer` and our class, or no
/// class at all when `default_class` (we are the cluster's default
/// load-balancer implementation).
pub fn is_ours(service: &Service, default_class: bool) -> bool {
    let Some(spec) = &service.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && match spec.load_balancer_class.as_deref() {
            Some(class) => class == LOAD_BALANCER_CLASS,
            None => default_class,
        }
}

/// A Service's (namespace, name).
pub fn service_id(service: &Service) -> ObjectId {
    (
        service.metadata.namespace.clone().unwrap_or_default(),
        service.metadata.name.clone().unwrap_or_default(),
    )
}

/// What a Service asks of an address allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancerRequest {
    /// (namespace, name) of the Service.
    pub id: ObjectId,
    /// The families it serves, in its order: one address for each.
    pub families: Vec<AddressFamily>,
    /// `ipFamilyPolicy: RequireDualStack`: every family needs an address, or none is served.
    pub require_every_family: bool,
    /// Addresses asked for (at most one per family, each of a family served).
    pub requested: Vec<IpAddr>,
    /// The VipPool asked for.
    pub pool: Option<String>,
    /// The addresses `status.loadBalancer.ingress` shows: what it had, kept if it may.
    pub previous: Vec<IpAddr>,
    /// (protocol, port) of each Service port: what the addresses must be free for.
    pub ports: Vec<(Protocol, u16)>,
}

/// The Service's request, or what is wrong with it (each error names the
/// field or annotation and its value).
pub fn request(service: &Service) -> Result<LoadBalancerRequest, Vec<ValidationError>> {
    let spec = service.spec.clone().unwrap_or_default();
    let mut errors = Vec::new();

    let mut requested = Vec::new();
    if let Some(text) = spec.load_balancer_ip.as_deref().filter(|t| !t.is_empty()) {
        match parse_ip(text) {
            Some(ip) => requested.push(ip),
            None => errors.push(error("spec.loadBalancerIP", text, "not an IP address")),
        }
    }
    for name in [VIP_ANNOTATION, LOAD_BALANCER_IPS_ANNOTATION] {
        let Some(text) = annotation(service, name) else { continue };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match parse_ip(word) {
                Some(ip) if !requested.contains(&ip) => requested.push(ip),
                Some(_) => {}
                None => errors.push(error(&annotation_field(name), word, "not an IP address")),
            }
        }
    }

    let mut families = Vec::new();
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        match family.as_str() {
            "IPv4" => families.push(AddressFamily::IPv4),
            "IPv6" => families.push(AddressFamily::IPv6),
            other => errors.push(error(&format!("spec.ipFamilies[{i}]"), other, "unknown IP family")),
        }
    }
    if families.is_empty() {
        // Set by the API server; absent in a file read offline: the requested ones', else IPv4.
        families = requested.iter().map(|ip| AddressFamily::from(*ip)).collect();
        families.dedup();
        if families.is_empty() {
            families.push(AddressFamily::IPv4);
        }
    }
    for family in [AddressFamily::IPv4, AddressFamily::IPv6] {
        let of_family: Vec<&IpAddr> =
            requested.iter().filter(|ip| AddressFamily::from(**ip) == family).collect();
        if of_family.len() > 1 {
            let list = of_family.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            errors.push(error("requested addresses", &list, "at most one address per IP family"));
        } else if let Some(ip) = of_family.first().filter(|_| !families.contains(&family)) {
            let served = families.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
            errors.push(error(
                "requested addresses",
                &ip.to_string(),
                &format!("is {family:?}, the Service's ipFamilies are [{served}]"),
            ));
        }
    }

    let previous = service
        .status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|ingress| ingress.ip.as_deref().and_then(parse_ip))
        .collect();

    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        match service_port(port) {
            Ok(key) => ports.push(key),
            Err(message) => errors.push(error(&format!("spec.ports[{i}]"), &port.port.to_string(), &message)),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(LoadBalancerRequest {
        id: service_id(service),
        families,
        require_every_family: spec.ip_family_policy.as_deref() == Some("RequireDualStack"),
        requested,
        pool: annotation(service, POOL_ANNOTATION).map(str::to_owned),
        previous,
        ports,
    })
}

/// How a Service's load balancer forwards, from its spec and annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancerSettings {
    pub forwarding: Forwarding,
    pub scheduler: Scheduler,
    pub persistence: Option<Persistence>,
    pub failover: Option<Failover>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
}

/// The Service's settings, or what is wrong with its annotations.
pub fn settings(service: &Service) -> Result<LoadBalancerSettings, Vec<ValidationError>> {
    let spec = service.spec.clone().unwrap_or_default();
    let mut errors = Vec::new();
    let local = spec.external_traffic_policy.as_deref() == Some("Local");

    let forwarding = match annotation(service, FORWARDING_ANNOTATION) {
        None if local => Forwarding::Nat,
        None => Forwarding::FullNat,
        Some(text) => parse_enum(text.trim()).unwrap_or_else(|| {
            let field = annotation_field(FORWARDING_ANNOTATION);
            errors.push(error(
                &field,
                text,
                "unknown forwarding method (NAT, FullNAT, DirectRouting or Tunnel)",
            ));
            Forwarding::FullNat
        }),
    };
    let scheduler = match annotation(service, SCHEDULER_ANNOTATION) {
        None => Scheduler::default(),
        Some(text) => parse_enum(text.trim()).unwrap_or_else(|| {
            let field = annotation_field(SCHEDULER_ANNOTATION);
            errors.push(error(
                &field,
                text,
                "unknown scheduler (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf, twos)",
            ));
            Scheduler::default()
        }),
    };
    let failover = match annotation(service, VRRP_ROUTER_ID_ANNOTATION) {
        None => None,
        Some(text) => match text.trim().parse::<u8>() {
            Ok(id) if id >= 1 => Some(Failover {
                vrrp: Vrrp { virtual_router_id: id, advert_interval_ms: 1000, preempt: true },
            }),
            _ => {
                errors.push(error(
                    &annotation_field(VRRP_ROUTER_ID_ANNOTATION),
                    text,
                    "must be a number from 1 to 255",
                ));
                None
            }
        },
    };
    // kube-proxy enforces the ranges only for VIP-mode addresses, and the
    // directors filter nothing: refused rather than silently open to all.
    if let Some(ranges) = spec.load_balancer_source_ranges.as_ref().filter(|r| !r.is_empty()) {
        errors.push(error(
            "spec.loadBalancerSourceRanges",
            &ranges.join(", "),
            "not supported: the directors do not filter clients (leave it empty and filter before the VIP)",
        ));
    }
    let persistence = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let timeout = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref());
        let timeout =
            timeout.and_then(|c| c.timeout_seconds).and_then(|t| u32::try_from(t).ok()).filter(|&t| t > 0);
        Persistence { timeout_seconds: timeout.unwrap_or(DEFAULT_SESSION_AFFINITY_SECONDS), netmask: None }
    });

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(LoadBalancerSettings { forwarding, scheduler, persistence, failover, local })
}

/// One ready endpoint serving a Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    /// The node it runs on (`nodeName`), when the slice says.
    pub node: Option<String>,
}

/// One IPVS service of a Service: a port on one family's address.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadBalancerPort {
    /// As a VirtualService would say it; every endpoint is a real server.
    pub spec: VirtualServiceSpec,
    /// The endpoints behind `spec.realServers`, with their nodes: with
    /// `externalTrafficPolicy: Local` a director gets those of its own node only.
    pub endpoints: Vec<Endpoint>,
}

/// The IPVS services of a Service whose addresses are `addresses` (one per
/// family), with the ready endpoints of `slices` (any slices: those of other
/// Services are skipped) as real servers. `is_node_address` tells a node's
/// address (hostNetwork endpoints) from a pod's, which DirectRouting and
/// Tunnel cannot reach.
pub fn ports(
    service: &Service,
    settings: &LoadBalancerSettings,
    addresses: &[IpAddr],
    slices: &[&EndpointSlice],
    is_node_address: impl Fn(IpAddr) -> bool,
) -> Result<Vec<LoadBalancerPort>, Vec<ValidationError>> {
    let (namespace, name) = service_id(service);
    let slices: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or_default() == namespace)
        .filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&name))
        .copied()
        .collect();
    let mut errors = Vec::new();
    let mut result = Vec::new();
    let service_ports = service.spec.iter().flat_map(|s| s.ports.iter().flatten());
    for &vip in addresses {
        let family = AddressFamily::from(vip);
        for port in service_ports.clone() {
            let Ok((protocol, number)) = service_port(port) else { continue };
            let mut endpoints = endpoints_of(&slices, port, family);
            endpoints.sort();
            endpoints.dedup_by(|a, b| (a.address, a.port) == (b.address, b.port));
            if matches!(settings.forwarding, Forwarding::DirectRouting | Forwarding::Tunnel) {
                let field = annotation_field(FORWARDING_ANNOTATION);
                let method = format!("{:?}", settings.forwarding);
                for endpoint in &endpoints {
                    if !is_node_address(endpoint.address) {
                        errors.push(error(&field, &method, &format!(
                            "endpoint {} is a pod's address, not a node's: {method} needs the VIP inside the real server, \
                             which the agent configures on nodes only (use NAT or FullNAT, or hostNetwork endpoints)",
                            endpoint.address
                        )));
                    } else if endpoint.port != number {
                        errors.push(error(&field, &method, &format!(
                            "endpoint {} serves port {}, the Service port is {number}: {method} cannot map ports",
                            endpoint.address, endpoint.port
                        )));
                    }
                }
            }
            let real_servers = endpoints
                .iter()
                .map(|e| RealServer {
                    address: e.address.to_string(),
                    port: Some(e.port),
                    weight: 1,
                    upper_threshold: None,
                    lower_threshold: None,
                })
                .collect();
            let spec = VirtualServiceSpec {
                vip: Some(vip.to_string()),
                port: Some(number),
                protocol,
                scheduler: settings.scheduler,
                forwarding: settings.forwarding,
                persistence: settings.persistence.clone(),
                real_servers,
                failover: settings.failover.clone(),
                ..VirtualServiceSpec::default()
            };
            result.push(LoadBalancerPort { spec, endpoints });
        }
    }
    if !errors.is_empty() {
        errors.dedup();
        return Err(errors);
    }
    Ok(result)
}

/// The ready endpoints of `family` serving `port`: each slice's port of the
/// same name and protocol gives the number (a named targetPort may resolve
/// differently per pod, hence per slice).
fn endpoints_of(slices: &[&EndpointSlice], port: &ServicePort, family: AddressFamily) -> Vec<Endpoint> {
    let name = port.name.as_deref().unwrap_or_default();
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let family_name = format!("{family:?}");
    let mut endpoints = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == family_name) {
        let number = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol
        });
        let Some(number) = number.and_then(|p| p.port).and_then(|n| u16::try_from(n).ok()).filter(|&n| n > 0)
        else {
            continue;
        };
        // As the API says: a readiness not given counts as ready.
        let ready = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
        for endpoint in ready {
            let addresses = endpoint.addresses.iter().filter_map(|a| parse_ip(a));
            endpoints.extend(
                addresses.filter(|ip| AddressFamily::from(*ip) == family).map(|address| Endpoint {
                    address,
                    port: number,
                    node: endpoint.node_name.clone(),
                }),
            );
        }
    }
    endpoints
}

/// A Service port's (protocol, number).
fn service_port(port: &ServicePort) -> Result<(Protocol, u16), String> {
    let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::TCP,
        "UDP" => Protocol::UDP,
        "SCTP" => Protocol::SCTP,
        other => return Err(format!("protocol {other} is not TCP, UDP or SCTP")),
    };
    match u16::try_from(port.port) {
        Ok(number) if number > 0 => Ok((protocol, number)),
        _ => Err("not a port number (1-65535)".to_owned()),
    }
}

fn annotation<'a>(service: &'a Service, name: &str) -> Option<&'a str> {
    service.metadata.annotations.as_ref().and_then(|a| a.get(name)).map(String::as_str)
}

fn annotation_field(name: &str) -> String {
    format!("metadata.annotations[{name}]")
}

fn error(field: &str, value: &str, message: &str) -> ValidationError {
    ValidationError { field: field.to_owned(), value: Some(value.to_owned()), message: message.to_owned() }
}

/// An enum of the API by its serialized name (`NAT`, `wlc`).
fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}
