//! The agent's resources in the terms of the libraries: the crates lvs-ipvs,
//! lvs-vrrp and lvs-health know nothing of Kubernetes, so what the LvsNode
//! says is converted here (orphan rules keep `From` impls between two foreign
//! crates out, hence functions).
//!
//! The IPVS side of the conversion is in [`crate::desired`].

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lvs_crds::{
    lvs_node::{DirectorState, DirectorVip},
    virtual_service,
};
use lvs_vrrp::{AddressFamily, InstanceConfig, InstanceKey, VrrpState};

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
}
