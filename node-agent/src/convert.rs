//! The agent's resources in the terms of the libraries: the crates lvs-ipvs,
//! lvs-vrrp and lvs-health know nothing of Kubernetes, so what the LvsNode
//! says is converted here (orphan rules keep `From` impls between two foreign
//! crates out, hence functions).
//!
//! The IPVS side of the conversion is in [`crate::desired`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lvs_crds::{
    lvs_node::{DirectorState, DirectorVip},
    virtual_service::{self, HealthCheckType},
};
use lvs_health::{CheckKind, HealthCheck, HealthMap, Target};
use lvs_ipvs::ServiceKey;
use lvs_vrrp::{AddressFamily, InstanceConfig, InstanceKey, VrrpState};

use crate::desired::{self, service_key};

/// The health-check targets of a director's desired state: one per destination
/// of every service with a check whose type is not `None`.
///
/// A destination with port 0 (fwmark services) and no `healthCheck.port` has
/// no port to probe: it gets no target, so it counts as healthy.
pub fn health_targets(director: &DirectorState) -> Vec<Target> {
    let mut targets = Vec::new();
    for service in &director.services {
        let Some(check) = service.health_check.as_ref().filter(|c| c.kind != HealthCheckType::None) else {
            continue;
        };
        let Some(key) = service_key(&service.key) else { continue };
        let check = health_check(check);
        for destination in &service.destinations {
            if destination.port == 0 && check.port.is_none() {
                continue;
            }
            targets.push(Target {
                service: key,
                destination: SocketAddr::new(destination.address, destination.port),
                check: check.clone(),
            });
        }
    }
    targets
}

/// A service's health check as the checker runs it.
pub fn health_check(check: &virtual_service::HealthCheck) -> HealthCheck {
    HealthCheck {
        kind: match check.kind {
            HealthCheckType::TCP => CheckKind::Tcp,
            HealthCheckType::HTTP => CheckKind::Http,
            HealthCheckType::HTTPS => CheckKind::Https,
            HealthCheckType::UDP => CheckKind::Udp,
            HealthCheckType::None => CheckKind::None,
        },
        path: check.path.clone(),
        host: check.host.clone(),
        port: check.port,
        expected_status: check.expected_status.clone(),
        body_contains: check.body_contains.clone(),
        payload: check.payload.clone(),
        interval_seconds: check.interval_seconds,
        timeout_seconds: check.timeout_seconds,
        rise: check.rise,
        fall: check.fall,
    }
}

/// The desired state's view: a destination without a check, or not checked
/// yet, is healthy.
impl desired::Health for HealthMap {
    fn is_healthy(&self, service: ServiceKey, destination: SocketAddr) -> bool {
        HealthMap::is_healthy(self, service, destination)
    }
}

/// A VRRP state as the LvsNode status reports it.
pub fn vrrp_state(state: VrrpState) -> virtual_service::VrrpState {
    match state {
        VrrpState::Initialize => virtual_service::VrrpState::Initialize,
        VrrpState::Backup => virtual_service::VrrpState::Backup,
        VrrpState::Master => virtual_service::VrrpState::Master,
    }
}

/// The VRRP instances of a director: its VIPs that have a `vrrp` section,
/// grouped by (interface, family, VRID), sorted by that key. A VIP without
/// interface gets `interface_of(vip)` (the route towards it). VIPs of one
/// group must agree on priority, interval and preemption.
pub fn vrrp_instances(
    director: &DirectorState,
    interface_of: impl Fn(&DirectorVip) -> Option<String>,
) -> Result<Vec<InstanceConfig>, String> {
    let mut groups: BTreeMap<InstanceKey, InstanceConfig> = BTreeMap::new();
    // The first VIP of each group, to name it in conflicts.
    let mut first: BTreeMap<InstanceKey, IpAddr> = BTreeMap::new();
    for vip in &director.vips {
        let Some(vrrp) = &vip.vrrp else { continue };
        let interface = match &vip.interface {
            Some(interface) => interface.clone(),
            None => interface_of(vip)
                .ok_or_else(|| format!("VIP {}: no interface given and no route towards it", vip.address))?,
        };
        let config = InstanceConfig {
            interface,
            vrid: vrrp.virtual_router_id,
            family: AddressFamily::from(vip.address),
            priority: vrrp.priority,
            advert_interval: Duration::from_millis(u64::from(vrrp.advert_interval_ms)),
            preempt: vrrp.preempt,
            addresses: vec![vip.address],
        };
        config.validate().map_err(|error| format!("VIP {}: {error}", vip.address))?;
        let key = config.key();
        match groups.get_mut(&key) {
            None => {
                first.insert(key.clone(), vip.address);
                groups.insert(key, config);
            }
            Some(group) => {
                let parameters = |c: &InstanceConfig| (c.priority, c.advert_interval, c.preempt);
                if parameters(group) != parameters(&config) {
                    return Err(format!(
                        "VRRP virtual router {} on {} ({}): VIP {} has priority {}, advert interval {} ms, \
                         preempt {} but VIP {} has priority {}, advert interval {} ms, preempt {}",
                        key.vrid,
                        key.interface,
                        config.family.name(),
                        first[&key],
                        group.priority,
                        group.advert_interval.as_millis(),
                        group.preempt,
                        vip.address,
                        config.priority,
                        config.advert_interval.as_millis(),
                        config.preempt
                    ));
                }
                if !group.addresses.contains(&vip.address) {
                    group.addresses.push(vip.address);
                }
            }
        }
    }
    Ok(groups.into_values().collect())
}

#[cfg(test)]
mod tests {
    use lvs_crds::lvs_node::VrrpInstance;
    use lvs_health::Probe;
    use lvs_ipvs::Protocol;

    use super::*;

    fn vip(address: &str, interface: Option<&str>, vrid: u8, priority: u8) -> DirectorVip {
        DirectorVip {
            address: address.parse().unwrap(),
            interface: interface.map(str::to_owned),
            vrrp: Some(VrrpInstance {
                virtual_router_id: vrid,
                advert_interval_ms: 1000,
                preempt: true,
                priority,
            }),
        }
    }

    fn director(vips: Vec<DirectorVip>) -> DirectorState {
        DirectorState { vips, ..DirectorState::default() }
    }

    fn eth0(_: &DirectorVip) -> Option<String> {
        Some("eth0".to_owned())
    }

    #[test]
    fn groups_vips_by_interface_family_and_vrid() {
        let state = director(vec![
            vip("192.168.16.100", None, 51, 100),
            vip("2001:db8::100", None, 51, 100),
            vip("192.168.16.101", Some("eth0"), 51, 100),
            vip("192.168.16.102", Some("eth1"), 51, 100),
            vip("192.168.16.103", None, 52, 100),
            DirectorVip { address: "192.168.16.104".parse().unwrap(), interface: None, vrrp: None },
        ]);
        let found = vrrp_instances(&state, eth0).unwrap();
        let summary: Vec<_> = found
            .iter()
            .map(|i| {
                (
                    i.interface.as_str(),
                    i.family,
                    i.vrid,
                    i.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "eth0",
                    AddressFamily::IPv4,
                    51,
                    vec!["192.168.16.100".to_owned(), "192.168.16.101".to_owned()]
                ),
                ("eth0", AddressFamily::IPv4, 52, vec!["192.168.16.103".to_owned()]),
                ("eth0", AddressFamily::IPv6, 51, vec!["2001:db8::100".to_owned()]),
                ("eth1", AddressFamily::IPv4, 51, vec!["192.168.16.102".to_owned()]),
            ]
        );
        assert_eq!(
            (found[0].priority, found[0].advert_interval, found[0].preempt),
            (100, Duration::from_secs(1), true)
        );
    }

    #[test]
    fn conflicting_parameters_name_the_vrid_and_values() {
        let state =
            director(vec![vip("192.168.16.100", None, 51, 100), vip("192.168.16.101", None, 51, 150)]);
        assert_eq!(
            vrrp_instances(&state, eth0).unwrap_err(),
            "VRRP virtual router 51 on eth0 (IPv4): VIP 192.168.16.100 has priority 100, advert interval 1000 ms, \
             preempt true but VIP 192.168.16.101 has priority 150, advert interval 1000 ms, preempt true"
        );
    }

    #[test]
    fn a_vip_without_interface_nor_route_is_an_error() {
        let state = director(vec![vip("192.168.16.100", None, 51, 100)]);
        assert_eq!(
            vrrp_instances(&state, |_| None).unwrap_err(),
            "VIP 192.168.16.100: no interface given and no route towards it"
        );
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let state = director(vec![vip("192.168.16.100", None, 51, 255)]);
        assert_eq!(
            vrrp_instances(&state, eth0).unwrap_err(),
            "VIP 192.168.16.100: IPv4 on eth0: VRRP priority 255 of virtual router 51: must be 1-254"
        );
        let mut odd = vip("192.168.16.100", None, 51, 100);
        odd.vrrp.as_mut().unwrap().advert_interval_ms = 1005;
        assert!(vrrp_instances(&director(vec![odd]), eth0).unwrap_err().contains("1.005s"));
    }

    #[test]
    fn the_same_vip_twice_is_listed_once() {
        let state =
            director(vec![vip("192.168.16.100", None, 51, 100), vip("192.168.16.100", None, 51, 100)]);
        assert_eq!(vrrp_instances(&state, eth0).unwrap()[0].addresses.len(), 1);
    }

    const DIRECTOR: &str = r#"
services:
  - owner: {namespace: default, name: web}
    key: {family: IPv4, address: 10.0.0.1, port: 80, protocol: TCP}
    scheduler: wlc
    destinations:
      - {address: 192.168.1.1, port: 8080, weight: 1, forwarding: NAT}
      - {address: 192.168.1.2, port: 8080, weight: 2, forwarding: NAT}
    healthCheck: {type: HTTP, path: /healthz, intervalSeconds: 2, timeoutSeconds: 1, rise: 2, fall: 3, onFailure: Quiesce}
    sorryServer: {address: 192.168.1.9, port: 80, weight: 1, forwarding: NAT}
  - owner: {namespace: default, name: unchecked}
    key: {family: IPv4, address: 10.0.0.2, port: 80, protocol: TCP}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 80, weight: 1, forwarding: DirectRouting}
  - owner: {namespace: default, name: none}
    key: {family: IPv4, address: 10.0.0.3, port: 80, protocol: TCP}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 80, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: None}
  - owner: {namespace: default, name: dns}
    key: {family: IPv6, address: "fd00::53", port: 53, protocol: UDP}
    scheduler: rr
    destinations:
      - {address: "fd00::1", port: 53, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: UDP, payload: x}
  - owner: {namespace: default, name: marked}
    key: {family: IPv4, fwmark: 7}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 0, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: TCP}
  - owner: {namespace: default, name: marked-with-port}
    key: {family: IPv4, fwmark: 8}
    scheduler: rr
    destinations:
      - {address: 192.168.1.1, port: 0, weight: 1, forwarding: DirectRouting}
    healthCheck: {type: TCP, port: 443}
"#;

    #[test]
    fn targets_of_a_director() {
        let director: DirectorState = lvs_crds::yaml::from_str(DIRECTOR).unwrap();
        let targets = health_targets(&director);
        let summary: Vec<_> =
            targets.iter().map(|t| (t.service, t.destination.to_string(), t.check.kind)).collect();
        let web = ServiceKey::tcp("10.0.0.1:80".parse().unwrap());
        let dns = ServiceKey::udp("[fd00::53]:53".parse().unwrap());
        let marked = ServiceKey::Fwmark { family: lvs_ipvs::AddressFamily::Ipv4, mark: 8 };
        assert_eq!(
            summary,
            [
                (web, "192.168.1.1:8080".to_owned(), CheckKind::Http),
                (web, "192.168.1.2:8080".to_owned(), CheckKind::Http),
                (dns, "[fd00::1]:53".to_owned(), CheckKind::Udp),
                (marked, "192.168.1.1:0".to_owned(), CheckKind::Tcp),
            ]
        );
        assert_eq!(targets[0].check.path.as_deref(), Some("/healthz"));
        assert!(matches!(targets[2].service, ServiceKey::Address { protocol: Protocol::Udp, .. }));
        assert_eq!(
            Probe::new(&targets[3].check, targets[3].destination).address().to_string(),
            "192.168.1.1:443"
        );
    }
}
