//! The kernel-level desired state of a director: its [`LvsNode`] services as the
//! IPVS [`Service`]s and [`Destination`]s the reconcile engine compares with the
//! kernel table, with the health checks' verdicts applied.
//!
//! Defaults follow ipvsadm, so that a service made by `ipvsadm -A` from the same
//! rule compares equal: without persistence the timeout is 0 and the netmask is
//! the host mask (`255.255.255.255`, or prefix 128 for IPv6).
//!
//! [`LvsNode`]: lvs_crds::LvsNode

use std::{net::SocketAddr, time::Duration};

use lvs_crds::{
    lvs_node::{self, DirectorState, IpvsService, IpvsServiceKey},
    virtual_service::{self as api, Forwarding, HealthCheckType, OnFailure, Scheduler, SchedulerFlag},
};

use lvs_ipvs::{
    AddressFamily, Destination, ForwardMethod, Netmask, Protocol, Service, ServiceFlags, ServiceKey, Tunnel,
    TunnelChecksum, TunnelType,
};

/// One IPVS service as the kernel should hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub service: Service,
    /// Sorted by address and port.
    pub destinations: Vec<Destination>,
    /// How long a removed TCP/SCTP destination keeps weight 0 before it is deleted.
    pub drain: Duration,
}

/// What the health checks say about a destination of a service.
pub trait Health {
    fn is_healthy(&self, service: ServiceKey, destination: SocketAddr) -> bool;
}

/// Every destination healthy: no checks, or none run yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllHealthy;

impl Health for AllHealthy {
    fn is_healthy(&self, _: ServiceKey, _: SocketAddr) -> bool {
        true
    }
}

/// The director's services, sorted by key, every destination taken as healthy.
/// A key with neither address nor fwmark (which the translation never produces)
/// is skipped.
pub fn desired_services(director: &DirectorState) -> Vec<DesiredService> {
    desired_services_with(director, &AllHealthy)
}

/// The director's services, sorted by key, with `health` applied: a destination
/// failing its service's check is left out (`onFailure: Remove`, which the
/// reconcile engine turns into a drain) or kept with weight 0 (`Quiesce`), and
/// the sorry server is added while no destination is healthy.
pub fn desired_services_with(director: &DirectorState, health: &dyn Health) -> Vec<DesiredService> {
    let mut services: Vec<_> = director.services.iter().filter_map(|s| desired_service(s, health)).collect();
    services.sort_by_key(|desired| desired.service.key);
    services
}

/// `spec` as the kernel should hold it (`None` without a usable key).
pub fn desired_service(spec: &IpvsService, health: &dyn Health) -> Option<DesiredService> {
    let key = service_key(&spec.key)?;
    let family = key.family();
    let mut service = Service::new(key, scheduler_name(spec.scheduler));
    for flag in &spec.scheduler_flags {
        service.flags = service.flags.with(scheduler_flag(*flag), true);
    }
    service.flags = service.flags.with(ServiceFlags::ONE_PACKET, spec.one_packet);
    if let Some(persistence) = &spec.persistence {
        service = service.persistent(persistence.timeout_seconds, netmask(family, persistence.prefix_length));
    }

    let check = spec.health_check.as_ref().filter(|check| check.kind != HealthCheckType::None);
    let mut destinations = Vec::with_capacity(spec.destinations.len() + 1);
    let mut healthy = 0;
    for spec_destination in &spec.destinations {
        let mut destination = destination(spec_destination);
        match check {
            Some(check) if !health.is_healthy(key, destination.address) => match check.on_failure {
                OnFailure::Remove => continue,
                OnFailure::Quiesce => destination.weight = 0,
            },
            _ => healthy += 1,
        }
        destinations.push(destination);
    }
    // With no healthy real server left, the sorry server takes the new connections
    // (quiesced real servers keep weight 0 beside it).
    if let (0, Some(sorry)) = (healthy, &spec.sorry_server) {
        let sorry = destination(sorry);
        destinations.retain(|d| d.address != sorry.address);
        destinations.push(sorry);
    }
    destinations.sort_by_key(|d| d.address);

    Some(DesiredService { service, destinations, drain: Duration::from_secs(spec.drain_seconds.into()) })
}

pub fn service_key(key: &IpvsServiceKey) -> Option<ServiceKey> {
    let family = match key.family {
        api::AddressFamily::IPv4 => AddressFamily::Ipv4,
        api::AddressFamily::IPv6 => AddressFamily::Ipv6,
    };
    Some(match (key.fwmark, key.address) {
        (Some(mark), _) => ServiceKey::Fwmark { family, mark },
        (None, Some(address)) => ServiceKey::Address {
            protocol: protocol(key.protocol),
            address: SocketAddr::new(address, key.port),
        },
        (None, None) => return None,
    })
}

/// The spec's key of a VIP service (`None` for fwmark services, whose spec key
/// also names a protocol that the kernel's does not).
pub fn spec_key(key: &ServiceKey) -> Option<IpvsServiceKey> {
    let ServiceKey::Address { protocol, address } = *key else { return None };
    Some(IpvsServiceKey {
        family: match address {
            SocketAddr::V4(_) => api::AddressFamily::IPv4,
            SocketAddr::V6(_) => api::AddressFamily::IPv6,
        },
        address: Some(address.ip()),
        port: address.port(),
        protocol: match protocol {
            Protocol::Tcp => api::Protocol::TCP,
            Protocol::Udp => api::Protocol::UDP,
            Protocol::Sctp => api::Protocol::SCTP,
            Protocol::Other(_) => return None,
        },
        fwmark: None,
    })
}

fn protocol(protocol: api::Protocol) -> Protocol {
    match protocol {
        api::Protocol::TCP => Protocol::Tcp,
        api::Protocol::UDP => Protocol::Udp,
        api::Protocol::SCTP => Protocol::Sctp,
    }
}

/// The kernel's scheduler module names (`ip_vs_<name>`).
fn scheduler_name(scheduler: Scheduler) -> &'static str {
    match scheduler {
        Scheduler::Rr => "rr",
        Scheduler::Wrr => "wrr",
        Scheduler::Lc => "lc",
        Scheduler::Wlc => "wlc",
        Scheduler::Lblc => "lblc",
        Scheduler::Lblcr => "lblcr",
        Scheduler::Dh => "dh",
        Scheduler::Sh => "sh",
        Scheduler::Sed => "sed",
        Scheduler::Nq => "nq",
        Scheduler::Mh => "mh",
        Scheduler::Fo => "fo",
        Scheduler::Ovf => "ovf",
        Scheduler::Twos => "twos",
    }
}

/// sh and mh share the scheduler flag bits, as in ipvsadm.
fn scheduler_flag(flag: SchedulerFlag) -> u32 {
    match flag {
        SchedulerFlag::ShFallback | SchedulerFlag::MhFallback => ServiceFlags::SCHED1,
        SchedulerFlag::ShPort | SchedulerFlag::MhPort => ServiceFlags::SCHED2,
    }
}

/// IPv4 services take a dotted mask, IPv6 ones the prefix length itself.
fn netmask(family: AddressFamily, prefix_length: u8) -> Netmask {
    match family {
        AddressFamily::Ipv4 => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix_length.min(32))).unwrap_or(0);
            Netmask::Ipv4(bits.into())
        }
        AddressFamily::Ipv6 => Netmask::Ipv6Prefix(prefix_length.into()),
    }
}

fn destination(spec: &lvs_node::Destination) -> Destination {
    let (forward, tunnel) = match spec.forwarding {
        // FullNAT is NAT in IPVS; the masquerade to the director's address is nftables'.
        Forwarding::Nat | Forwarding::FullNat => (ForwardMethod::Masquerade, Tunnel::default()),
        Forwarding::DirectRouting => (ForwardMethod::DirectRoute, Tunnel::default()),
        Forwarding::Tunnel => {
            (ForwardMethod::Tunnel, spec.tunnel.as_ref().map_or_else(Tunnel::default, tunnel))
        }
    };
    Destination {
        address: SocketAddr::new(spec.address, spec.port),
        forward,
        weight: spec.weight.into(),
        upper_threshold: spec.upper_threshold,
        lower_threshold: spec.lower_threshold,
        tunnel,
    }
}

fn tunnel(spec: &api::Tunnel) -> Tunnel {
    Tunnel {
        kind: match spec.encapsulation {
            api::TunnelEncapsulation::Ipip => TunnelType::Ipip,
            api::TunnelEncapsulation::Gue => TunnelType::Gue,
            api::TunnelEncapsulation::Gre => TunnelType::Gre,
        },
        port: spec.port.unwrap_or(0),
        checksum: match spec.checksum {
            api::TunnelChecksum::None => TunnelChecksum::None,
            api::TunnelChecksum::Checksum => TunnelChecksum::Checksum,
            api::TunnelChecksum::RemoteChecksum => TunnelChecksum::RemoteChecksum,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        sync::Arc,
    };

    use lvs_crds::lvs_node::{IpvsPersistence, ServiceOwner};
    use pretty_assertions::assert_eq;

    use super::*;

    fn spec_destination(
        address: &str,
        port: u16,
        weight: u16,
        forwarding: Forwarding,
    ) -> lvs_node::Destination {
        lvs_node::Destination {
            address: address.parse().unwrap(),
            port,
            weight,
            forwarding,
            tunnel: None,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    fn spec_service(address: &str, port: u16, protocol: api::Protocol) -> IpvsService {
        let address: IpAddr = address.parse().unwrap();
        IpvsService {
            owner: ServiceOwner::default(),
            key: IpvsServiceKey {
                family: address.into(),
                address: Some(address),
                port,
                protocol,
                fwmark: None,
            },
            scheduler: Scheduler::Wlc,
            scheduler_flags: vec![],
            persistence: None,
            one_packet: false,
            destinations: vec![],
            health_check: None,
            drain_seconds: 0,
            sorry_server: None,
        }
    }

    fn director(services: Vec<IpvsService>) -> DirectorState {
        DirectorState { services: services.into_iter().map(Arc::new).collect(), ..DirectorState::default() }
    }

    #[test]
    fn plain_service_has_ipvsadm_defaults() {
        let mut spec = spec_service("192.168.16.100", 80, api::Protocol::TCP);
        spec.destinations = vec![
            spec_destination("192.168.16.22", 80, 2, Forwarding::DirectRouting),
            spec_destination("192.168.16.21", 8080, 1, Forwarding::Nat),
        ];
        spec.drain_seconds = 30;
        let key = ServiceKey::tcp("192.168.16.100:80".parse().unwrap());
        assert_eq!(
            desired_services(&director(vec![spec])),
            vec![DesiredService {
                service: Service::new(key, "wlc"),
                destinations: vec![
                    Destination::new("192.168.16.21:8080".parse().unwrap(), ForwardMethod::Masquerade, 1),
                    Destination::new("192.168.16.22:80".parse().unwrap(), ForwardMethod::DirectRoute, 2),
                ],
                drain: Duration::from_secs(30),
            }]
        );
    }

    #[test]
    fn scheduler_options_and_persistence_become_flags() {
        let mut spec = spec_service("192.168.16.100", 53, api::Protocol::UDP);
        spec.scheduler = Scheduler::Sh;
        spec.scheduler_flags = vec![SchedulerFlag::ShFallback, SchedulerFlag::ShPort];
        spec.one_packet = true;
        spec.persistence = Some(IpvsPersistence { timeout_seconds: 600, prefix_length: 24 });
        let service = &desired_services(&director(vec![spec]))[0].service;
        assert_eq!(service.scheduler, "sh");
        assert_eq!(
            service.flags.0,
            ServiceFlags::SCHED1 | ServiceFlags::SCHED2 | ServiceFlags::ONE_PACKET | ServiceFlags::PERSISTENT
        );
        assert_eq!((service.timeout, service.netmask), (600, Netmask::Ipv4(Ipv4Addr::new(255, 255, 255, 0))));
    }

    #[test]
    fn netmasks_follow_the_family() {
        assert_eq!(netmask(AddressFamily::Ipv4, 32), Netmask::Ipv4(Ipv4Addr::BROADCAST));
        assert_eq!(netmask(AddressFamily::Ipv4, 0), Netmask::Ipv4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(netmask(AddressFamily::Ipv4, 20), Netmask::Ipv4(Ipv4Addr::new(255, 255, 240, 0)));
        assert_eq!(netmask(AddressFamily::Ipv6, 64), Netmask::Ipv6Prefix(64));
    }

    #[test]
    fn fwmark_services_keep_their_family() {
        let mut spec = spec_service("fd00::1", 0, api::Protocol::TCP);
        spec.key = IpvsServiceKey { address: None, fwmark: Some(7), ..spec.key };
        let service = &desired_services(&director(vec![spec]))[0].service;
        assert_eq!(service.key, ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark: 7 });
        assert_eq!(service.netmask, Netmask::Ipv6Prefix(128));
    }

    #[test]
    fn tunnels_default_to_ipip() {
        let mut spec = spec_service("192.168.16.100", 80, api::Protocol::TCP);
        let mut gue = spec_destination("10.0.0.2", 80, 1, Forwarding::Tunnel);
        gue.tunnel = Some(api::Tunnel {
            encapsulation: api::TunnelEncapsulation::Gue,
            port: Some(6080),
            checksum: api::TunnelChecksum::RemoteChecksum,
        });
        spec.destinations = vec![spec_destination("10.0.0.1", 80, 1, Forwarding::Tunnel), gue];
        let destinations = &desired_services(&director(vec![spec]))[0].destinations;
        assert_eq!(destinations[0].forward, ForwardMethod::Tunnel);
        assert_eq!(destinations[0].tunnel, Tunnel::default());
        assert_eq!(
            destinations[1].tunnel,
            Tunnel { kind: TunnelType::Gue, port: 6080, checksum: TunnelChecksum::RemoteChecksum }
        );
    }

    #[test]
    fn full_nat_is_masquerading() {
        let mut spec = spec_service("192.168.16.100", 80, api::Protocol::TCP);
        spec.destinations = vec![spec_destination("10.1.0.1", 8080, 1, Forwarding::FullNat)];
        assert_eq!(
            desired_services(&director(vec![spec]))[0].destinations[0].forward,
            ForwardMethod::Masquerade
        );
    }

    #[test]
    fn sorry_server_stands_in_for_no_destinations() {
        let mut spec = spec_service("192.168.16.100", 80, api::Protocol::TCP);
        let sorry = spec_destination("192.168.16.200", 80, 1, Forwarding::DirectRouting);
        spec.sorry_server = Some(sorry.clone());
        let empty = desired_services(&director(vec![spec.clone()]));
        assert_eq!(empty[0].destinations, vec![destination(&sorry)]);

        spec.destinations = vec![spec_destination("192.168.16.21", 80, 1, Forwarding::DirectRouting)];
        let served = desired_services(&director(vec![spec]));
        assert_eq!(served[0].destinations.len(), 1);
        assert_eq!(served[0].destinations[0].address, "192.168.16.21:80".parse().unwrap());
    }

    /// Health checks failing for the listed destinations.
    struct Failing(Vec<SocketAddr>);

    impl Health for Failing {
        fn is_healthy(&self, _: ServiceKey, destination: SocketAddr) -> bool {
            !self.0.contains(&destination)
        }
    }

    fn checked_service(on_failure: OnFailure) -> IpvsService {
        let mut spec = spec_service("192.168.16.100", 80, api::Protocol::TCP);
        spec.destinations = vec![
            spec_destination("192.168.16.21", 80, 2, Forwarding::DirectRouting),
            spec_destination("192.168.16.22", 80, 1, Forwarding::DirectRouting),
        ];
        spec.health_check = Some(
            serde_json::from_value(serde_json::json!({"type": "TCP", "onFailure": on_failure})).unwrap(),
        );
        spec.sorry_server = Some(spec_destination("192.168.16.200", 80, 1, Forwarding::DirectRouting));
        spec
    }

    fn weights(service: &DesiredService) -> Vec<(String, u32)> {
        service.destinations.iter().map(|d| (d.address.to_string(), d.weight)).collect()
    }

    #[test]
    fn a_failing_destination_is_removed_or_quiesced() {
        let failing = Failing(vec!["192.168.16.21:80".parse().unwrap()]);
        let removed = desired_service(&checked_service(OnFailure::Remove), &failing).unwrap();
        assert_eq!(weights(&removed), [("192.168.16.22:80".into(), 1)]);
        let quiesced = desired_service(&checked_service(OnFailure::Quiesce), &failing).unwrap();
        assert_eq!(weights(&quiesced), [("192.168.16.21:80".into(), 0), ("192.168.16.22:80".into(), 1)]);
    }

    #[test]
    fn the_sorry_server_stands_in_while_nothing_is_healthy() {
        let failing = Failing(vec!["192.168.16.21:80".parse().unwrap(), "192.168.16.22:80".parse().unwrap()]);
        let removed = desired_service(&checked_service(OnFailure::Remove), &failing).unwrap();
        assert_eq!(weights(&removed), [("192.168.16.200:80".into(), 1)]);
        let quiesced = desired_service(&checked_service(OnFailure::Quiesce), &failing).unwrap();
        assert_eq!(
            weights(&quiesced),
            [("192.168.16.21:80".into(), 0), ("192.168.16.22:80".into(), 0), ("192.168.16.200:80".into(), 1)]
        );
        let healthy = desired_service(&checked_service(OnFailure::Quiesce), &AllHealthy).unwrap();
        assert_eq!(weights(&healthy), [("192.168.16.21:80".into(), 2), ("192.168.16.22:80".into(), 1)]);
    }

    #[test]
    fn without_a_check_health_is_not_consulted() {
        let mut spec = checked_service(OnFailure::Remove);
        spec.health_check = None;
        let failing = Failing(vec!["192.168.16.21:80".parse().unwrap(), "192.168.16.22:80".parse().unwrap()]);
        assert_eq!(desired_service(&spec, &failing).unwrap().destinations.len(), 2);
        spec.health_check = Some(serde_json::from_value(serde_json::json!({"type": "None"})).unwrap());
        assert_eq!(desired_service(&spec, &failing).unwrap().destinations.len(), 2);
    }

    #[test]
    fn services_are_sorted_by_key() {
        let services = desired_services(&director(vec![
            spec_service("192.168.16.101", 80, api::Protocol::TCP),
            spec_service("192.168.16.100", 80, api::Protocol::UDP),
            spec_service("192.168.16.100", 80, api::Protocol::TCP),
        ]));
        let keys: Vec<_> = services.iter().map(|s| s.service.key.to_string()).collect();
        assert_eq!(keys, ["TCP 192.168.16.100:80", "TCP 192.168.16.101:80", "UDP 192.168.16.100:80"]);
    }
}
