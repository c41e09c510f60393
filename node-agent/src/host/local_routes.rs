//! A director's IPv4 VIPs held as `local` routes: where a set of VIPs on one
//! device covers whole CIDR blocks exactly, one route of type `local` in the
//! local table per block makes every address of it local, as an address would,
//! at the cost of one route instead of one address per VIP (the kernel takes
//! about 2 ms per address it adds, and more the more a device holds).
//!
//! IPVS serves a VIP under such a route (the packet is delivered locally), and
//! with the default `arp_ignore=0` the director answers ARP for it as for its own
//! addresses (`arp_process` asks whether the target is local). A block never
//! covers an address that is not a VIP: blocks are the exact aggregation of the
//! VIPs. IPv6 VIPs stay addresses, since neighbour discovery answers only for
//! configured addresses.
//!
//! The routes the agent added are recorded in [`HostChanges::routes`], so that
//! they alone are removed later.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};
use nix::errno::Errno;

use super::{
    changes::{DeviceAddress, DeviceRoute, HostChanges},
    error::{Cause, HostError, Result},
    link::link_names,
    rtnl::Rtnl,
};

/// The kernel's local table, where local and broadcast routes live.
const RT_TABLE_LOCAL: u8 = 255;

/// The smallest block held as a route: smaller sets of VIPs stay addresses,
/// which operators see in `ip addr` and which cost nothing worth saving.
pub const MIN_BLOCK: u8 = 4;

/// How a set of VIPs is held: blocks of [`MIN_BLOCK`] or more IPv4 VIPs as local
/// routes, the other VIPs as addresses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holdings {
    pub routes: Vec<DeviceRoute>,
    pub addresses: Vec<DeviceAddress>,
}

/// Splits `vips` (each on its device) into local routes and addresses: per
/// device, the IPv4 VIPs' exact aggregation into CIDR blocks; each block of at
/// least [`MIN_BLOCK`] addresses is a route, a smaller one its addresses.
pub fn holdings<'a>(vips: impl IntoIterator<Item = &'a DeviceAddress>) -> Holdings {
    let mut v4: BTreeMap<&str, Vec<Ipv4Net>> = BTreeMap::new();
    let mut holdings = Holdings::default();
    for vip in vips {
        match vip.address {
            IpAddr::V4(ip) => v4.entry(&vip.device).or_default().push(Ipv4Net::from(ip)),
            IpAddr::V6(_) => holdings.addresses.push(vip.clone()),
        }
    }
    for (device, hosts) in v4 {
        for block in Ipv4Net::aggregate(&hosts) {
            if 1u64 << (32 - block.prefix_len()) >= u64::from(MIN_BLOCK) {
                holdings.routes.push(DeviceRoute { device: device.into(), block: block.into() });
            } else {
                let addresses = u32::from(block.network())..=u32::from(block.broadcast());
                holdings.addresses.extend(addresses.map(|host| DeviceAddress {
                    device: device.into(),
                    address: IpAddr::from(std::net::Ipv4Addr::from(host)),
                }));
            }
        }
    }
    holdings.addresses.sort();
    holdings.addresses.dedup();
    holdings
}

/// The local routes in the local table, by device (read only).
pub fn present_routes() -> Result<BTreeSet<DeviceRoute>> {
    let mut rtnl = Rtnl::connect()?;
    let names = link_names(&mut rtnl)?;
    local_routes(&mut rtnl, &names)
}

/// The device of the recorded route that covers `address`, if one does.
pub fn routed_device(changes: &HostChanges, address: IpAddr) -> Option<&str> {
    changes.routes.iter().find(|route| route.block.contains(&address)).map(|route| route.device.as_str())
}

/// Adds the `routes` that are not in the local table yet, recording each one
/// added. Returns the routes added (their VIPs are new here) and, per route that
/// could not be added, why.
pub fn add_routes(
    changes: &mut HostChanges,
    routes: &[DeviceRoute],
) -> (Vec<DeviceRoute>, Vec<(DeviceRoute, HostError)>) {
    let prepare = || -> Result<(Rtnl, BTreeMap<String, u32>, BTreeSet<DeviceRoute>)> {
        let mut rtnl = Rtnl::connect()?;
        let names = link_names(&mut rtnl)?;
        let present = local_routes(&mut rtnl, &names)?;
        Ok((rtnl, names.into_iter().map(|(index, name)| (name, index)).collect(), present))
    };
    let (mut rtnl, indexes, present) = match prepare() {
        Ok(prepared) => prepared,
        Err(e) => return (Vec::new(), all_failed(routes.iter(), adding, &e)),
    };
    if changes.adopt {
        // The agent's own from before a lost record: adopted.
        changes.routes.extend(routes.iter().filter(|route| present.contains(route)).cloned());
    }
    let mut failures = Vec::new();
    let mut to_add = Vec::new();
    for route in routes.iter().filter(|route| !present.contains(route)) {
        match indexes.get(&route.device) {
            Some(index) => to_add.push((route, local_route(*index, route.block))),
            None => failures
                .push((route.clone(), HostError::new(adding(route), Cause::NoDevice(route.device.clone())))),
        }
    }
    let requests = to_add.iter().map(|(_, message)| RouteNetlinkMessage::NewRoute(message.clone())).collect();
    let answers = match rtnl.batch(requests, NLM_F_CREATE | NLM_F_EXCL) {
        Ok(answers) => answers,
        Err(e) => {
            let error = HostError::io("sending", e);
            let routes: Vec<DeviceRoute> = to_add.iter().map(|(r, _)| (*r).clone()).collect();
            if !error.outcome_unknown() {
                failures.extend(all_failed(routes.iter(), adding, &error));
                return (Vec::new(), failures);
            }
            // Absent just before the batch: those present now are the agent's.
            let (added, unknown) = read_again(&routes, true, &error);
            changes.routes.extend(added.iter().cloned());
            failures.extend(all_failed(unknown.iter(), adding, &error));
            return (added, failures);
        }
    };
    let mut added = Vec::new();
    for ((route, _), answer) in to_add.into_iter().zip(answers) {
        match answer.map_err(Errno::from_raw) {
            Ok(_) => {
                changes.routes.insert(route.clone());
                added.push(route.clone());
            }
            // The agent's own from before a lost record: adopted.
            Err(Errno::EEXIST) if changes.adopt => {
                changes.routes.insert(route.clone());
            }
            // Someone else's, in the meantime.
            Err(Errno::EEXIST) => {}
            Err(errno) => failures.push((route.clone(), HostError::refused(adding(route), errno))),
        }
    }
    (added, failures)
}

/// Deletes the recorded routes among `routes`, and forgets them. Returns the
/// routes that could not be deleted (and stay recorded), each with why.
pub fn remove_routes(changes: &mut HostChanges, routes: &[DeviceRoute]) -> Vec<(DeviceRoute, HostError)> {
    let owned: Vec<&DeviceRoute> = routes.iter().filter(|r| changes.routes.contains(*r)).collect();
    if owned.is_empty() {
        return Vec::new();
    }
    let prepare = || -> Result<(Rtnl, BTreeMap<String, u32>)> {
        let mut rtnl = Rtnl::connect()?;
        let names = link_names(&mut rtnl)?;
        Ok((rtnl, names.into_iter().map(|(index, name)| (name, index)).collect()))
    };
    let (mut rtnl, indexes) = match prepare() {
        Ok(prepared) => prepared,
        Err(e) => return all_failed(owned.into_iter(), removing, &e),
    };
    let mut to_remove = Vec::new();
    for route in owned {
        match indexes.get(&route.device) {
            Some(index) => to_remove.push((route, local_route(*index, route.block))),
            // The device is gone, and its routes with it.
            None => {
                changes.routes.remove(route);
            }
        }
    }
    let requests =
        to_remove.iter().map(|(_, message)| RouteNetlinkMessage::DelRoute(message.clone())).collect();
    let answers = match rtnl.batch(requests, 0) {
        Ok(answers) => answers,
        Err(e) => {
            let error = HostError::io("sending", e);
            let routes: Vec<DeviceRoute> = to_remove.iter().map(|(r, _)| (*r).clone()).collect();
            if !error.outcome_unknown() {
                return all_failed(routes.iter(), removing, &error);
            }
            // Those gone now were deleted; those still there stay recorded.
            let (removed, unknown) = read_again(&routes, false, &error);
            for route in &removed {
                changes.routes.remove(route);
            }
            return all_failed(unknown.iter(), removing, &error);
        }
    };
    let mut failures = Vec::new();
    for ((route, _), answer) in to_remove.into_iter().zip(answers) {
        match answer.map_err(Errno::from_raw) {
            Ok(_) | Err(Errno::ESRCH | Errno::ENOENT) => {
                changes.routes.remove(route);
            }
            Err(errno) => failures.push((route.clone(), HostError::refused(removing(route), errno))),
        }
    }
    failures
}

/// After a batch whose answers were lost: `routes` split by what the local
/// table holds now into (done, not done), `done` meaning present when `added`,
/// else absent. A listing that fails leaves every outcome unknown: none is done.
fn read_again(routes: &[DeviceRoute], added: bool, lost: &HostError) -> (Vec<DeviceRoute>, Vec<DeviceRoute>) {
    let listed = Rtnl::connect().and_then(|mut rtnl| {
        let names = link_names(&mut rtnl)?;
        local_routes(&mut rtnl, &names)
    });
    match listed {
        Ok(present) => routes.iter().cloned().partition(|r| present.contains(r) == added),
        Err(error) => {
            tracing::warn!(%error, after = %lost, "reading the local routes again");
            (Vec::new(), routes.to_vec())
        }
    }
}

fn adding(route: &DeviceRoute) -> String {
    format!("adding local route {} on {}", route.block, route.device)
}

fn removing(route: &DeviceRoute) -> String {
    format!("removing local route {} from {}", route.block, route.device)
}

/// Each route's failure: `e`'s cause, with the route's action.
fn all_failed<'a>(
    routes: impl Iterator<Item = &'a DeviceRoute>,
    action: fn(&DeviceRoute) -> String,
    e: &HostError,
) -> Vec<(DeviceRoute, HostError)> {
    routes.map(|r| (r.clone(), e.for_action(format!("{}: {}", action(r), e.action)))).collect()
}

/// `local BLOCK dev DEVICE table local scope host`.
fn local_route(index: u32, block: IpNet) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header = RouteHeader {
        address_family: if block.addr().is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 },
        destination_prefix_length: block.prefix_len(),
        table: RT_TABLE_LOCAL,
        protocol: RouteProtocol::Static,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    message.attributes.push(RouteAttribute::Destination(RouteAddress::from(block.addr())));
    message.attributes.push(RouteAttribute::Oif(index));
    message.attributes.push(RouteAttribute::Table(u32::from(RT_TABLE_LOCAL)));
    message
}

/// The IPv4 local routes of the local table that cover more than one address.
pub(super) fn local_routes(rtnl: &mut Rtnl, names: &BTreeMap<u32, String>) -> Result<BTreeSet<DeviceRoute>> {
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    let replies =
        rtnl.dump(RouteNetlinkMessage::GetRoute(query)).map_err(|e| HostError::io("listing routes", e))?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(route) => Some(route),
            _ => None,
        })
        .filter(|route| {
            route.header.kind == RouteType::Local
                && route.header.destination_prefix_length < 32
                && route
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RT_TABLE_LOCAL)))
        })
        .filter_map(|route| {
            let address = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                _ => None,
            })?;
            let index = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })?;
            let block = IpNet::new(address, route.header.destination_prefix_length).ok()?;
            Some(DeviceRoute { device: names.get(&index)?.clone(), block })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn on(device: &str, addresses: &[&str]) -> Vec<DeviceAddress> {
        addresses
            .iter()
            .map(|a| DeviceAddress { device: device.into(), address: a.parse().unwrap() })
            .collect()
    }

    #[test]
    fn whole_blocks_become_routes_and_the_rest_addresses() {
        let mut vips =
            on("eth0", &["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "2001:db8::1"]);
        vips.extend(on("eth1", &["10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9", "10.0.0.10", "10.0.0.11"]));
        let holdings = holdings(&vips);
        let routes: Vec<(&str, String)> =
            holdings.routes.iter().map(|r| (r.device.as_str(), r.block.to_string())).collect();
        assert_eq!(routes, [("eth0", "10.0.0.0/30".to_string()), ("eth1", "10.0.0.8/30".to_string())]);
        assert_eq!(
            holdings.addresses,
            [on("eth0", &["10.0.0.5", "2001:db8::1"]), on("eth1", &["10.0.0.6", "10.0.0.7"])].concat()
        );
    }

    #[test]
    fn a_route_covers_its_vips_only() {
        let route = DeviceRoute { device: "eth0".into(), block: "10.0.0.0/30".parse().unwrap() };
        let changes = HostChanges { routes: [route].into(), ..HostChanges::default() };
        assert_eq!(routed_device(&changes, "10.0.0.3".parse().unwrap()), Some("eth0"));
        assert_eq!(routed_device(&changes, "10.0.0.4".parse().unwrap()), None);
    }

    proptest! {
        /// The routes and addresses hold exactly the VIPs: every VIP once, and
        /// nothing that is not a VIP.
        #[test]
        fn holdings_cover_exactly_the_vips(hosts in proptest::collection::btree_set(0u32..512, 0..200)) {
            let vips: Vec<DeviceAddress> = hosts
                .iter()
                .map(|h| DeviceAddress { device: "eth0".into(), address: IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + h)) })
                .collect();
            let holdings = holdings(&vips);
            let mut held: Vec<IpAddr> = holdings.addresses.iter().map(|a| a.address).collect();
            for route in &holdings.routes {
                prop_assert!(route.block.prefix_len() <= 30);
                let IpNet::V4(block) = route.block else { panic!("an IPv6 block") };
                held.extend((u32::from(block.network())..=u32::from(block.broadcast())).map(|h| IpAddr::from(std::net::Ipv4Addr::from(h))));
            }
            held.sort();
            let mut wanted: Vec<IpAddr> = vips.iter().map(|v| v.address).collect();
            wanted.sort();
            prop_assert_eq!(held, wanted);
        }
    }
}
