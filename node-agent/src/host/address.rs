//! Addresses: VIPs on a director's interface or a real server's device, and the
//! local addresses `--role auto` compares with the real servers.
//!
//! Addresses and route lookups go over rtnetlink ([`super::rtnl`]), many
//! requests per system call, so that taking 10,000 VIPs costs a few batches.
//! Every function opens its own socket: callable from any thread, in the network
//! namespace of that thread.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use nix::errno::Errno;

use super::{
    announce,
    changes::{DeviceAddress, DeviceRoute, HostChanges},
    error::{Cause, HostError, Result},
    link::link_names,
    local_routes,
    rtnl::Rtnl,
};

/// A director takes `vips`: adds them (those not there yet) in one batch, and
/// announces them together, so that neighbours send their traffic here at once
/// rather than to the previous holder until their entries expire. Returns the
/// VIPs that could not be taken, each with why.
pub fn take_vips(changes: &mut HostChanges, vips: &[DeviceAddress]) -> Vec<(DeviceAddress, HostError)> {
    let mut failures = add_addresses(changes, vips);
    let taken: Vec<&DeviceAddress> = vips.iter().filter(|v| !failures.iter().any(|(f, _)| f == *v)).collect();
    failures.extend(announce::announce_all(&taken));
    failures
}

/// The devices the kernel routes `addresses` through, in one batch of lookups:
/// where VIPs without an explicit interface belong.
///
/// An address this host holds routes through `lo` (the local table comes
/// first), as a VIP does that is still here from before a restart: its device
/// is then the one that holds it, or the one of a `local` route that covers it
/// (a block of VIPs taken before a restart whose record was lost), or else the
/// one whose subnet contains it.
pub fn route_devices(addresses: &[IpAddr]) -> Vec<Result<String>> {
    if addresses.is_empty() {
        return Vec::new();
    }
    let lookup = || -> Result<Vec<Result<String>>> {
        let mut rtnl = Rtnl::connect()?;
        let names = link_names(&mut rtnl)?;
        let requests = addresses.iter().map(|address| RouteNetlinkMessage::GetRoute(route_query(*address)));
        let answers = rtnl.batch(requests.collect(), 0).map_err(|e| HostError::io("looking up routes", e))?;
        let mut local = None;
        let mut devices = Vec::with_capacity(addresses.len());
        for (address, answer) in addresses.iter().zip(answers) {
            let no_route = || HostError::new(format!("choosing the interface of {address}"), Cause::NoRoute);
            let index = answer.ok().and_then(|replies| {
                replies.iter().find_map(|reply| match reply {
                    RouteNetlinkMessage::NewRoute(route) => route.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(index) => Some(*index),
                        _ => None,
                    }),
                    _ => None,
                })
            });
            let device = match index.and_then(|i| names.get(&i)) {
                Some(name) if name == LOOPBACK => {
                    if local.is_none() {
                        local = Some((
                            subnet_dump(&mut rtnl, &names)?,
                            local_routes::local_routes(&mut rtnl, &names)?,
                        ));
                    }
                    let (subnets, routes) = local.as_ref().expect("just read");
                    local_device(subnets, routes, *address).ok_or_else(no_route)
                }
                Some(name) => Ok(name.clone()),
                None => Err(no_route()),
            };
            devices.push(device);
        }
        Ok(devices)
    };
    match lookup() {
        Ok(devices) => devices,
        Err(e) => addresses.iter().map(|_| Err(e.clone())).collect(),
    }
}

const LOOPBACK: &str = "lo";

/// Every address of the host as (device, address with its prefix).
fn subnet_dump(rtnl: &mut Rtnl, names: &BTreeMap<u32, String>) -> Result<Vec<(String, IpNet)>> {
    let replies =
        rtnl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())).map_err(listing_addresses)?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(message) => {
                let address = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                let net = IpNet::new(address, message.header.prefix_len).ok()?;
                Some((names.get(&message.header.index)?.clone(), net))
            }
            _ => None,
        })
        .collect())
}

/// The device of a local `address` other than `lo`: the one holding it, else
/// the one of the narrowest `local` route covering it, else the one with the
/// longest subnet containing it.
fn local_device(
    subnets: &[(String, IpNet)],
    routes: &BTreeSet<DeviceRoute>,
    address: IpAddr,
) -> Option<String> {
    let others = subnets.iter().filter(|(device, _)| device != LOOPBACK);
    let holder = others.clone().find(|(_, net)| net.addr() == address).map(|(device, _)| device);
    let route = routes
        .iter()
        .filter(|route| route.device != LOOPBACK && route.block.contains(&address))
        .max_by_key(|route| route.block.prefix_len())
        .map(|route| &route.device);
    let subnet = others
        .filter(|(_, net)| net.prefix_len() < net.max_prefix_len() && net.contains(&address))
        .max_by_key(|(_, net)| net.prefix_len())
        .map(|(device, _)| device);
    holder.or(route).or(subnet).cloned()
}

fn route_query(address: IpAddr) -> RouteMessage {
    let mut query = RouteMessage::default();
    query.header.address_family = family(address);
    query.header.destination_prefix_length = if address.is_ipv4() { 32 } else { 128 };
    query.attributes.push(RouteAttribute::Destination(RouteAddress::from(address)));
    query
}

fn family(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

/// The addresses of `device`.
pub fn addresses(device: &str) -> Result<Vec<IpAddr>> {
    Ok(local_addresses()?.into_iter().filter(|a| a.device == device).map(|a| a.address).collect())
}

/// Every address of this host (of the agent's network namespace), with its device.
pub fn local_addresses() -> Result<Vec<DeviceAddress>> {
    let mut rtnl = Rtnl::connect()?;
    let names = link_names(&mut rtnl)?;
    let mut addresses = address_dump(&mut rtnl, &names)?;
    addresses.sort();
    Ok(addresses)
}

fn address_dump(rtnl: &mut Rtnl, names: &BTreeMap<u32, String>) -> Result<Vec<DeviceAddress>> {
    let replies =
        rtnl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())).map_err(listing_addresses)?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(message) => Some(message),
            _ => None,
        })
        .filter_map(|message| {
            // IFA_LOCAL is the address itself; IFA_ADDRESS the peer on
            // point-to-point links (and the address itself elsewhere, and for IPv6).
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = local.or_else(|| {
                message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })?;
            let device = names.get(&message.header.index)?.clone();
            Some(DeviceAddress { device, address })
        })
        .collect())
}

/// A host address message (/32 or /128) for `address` on the device `index`.
fn host_address(index: u32, address: IpAddr) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family(address);
    message.header.prefix_len = if address.is_ipv4() { 32 } else { 128 };
    message.header.index = index;
    message.attributes.push(AddressAttribute::Local(address));
    message.attributes.push(AddressAttribute::Address(address));
    if address.is_ipv6() {
        message.header.flags = AddressHeaderFlags::Nodad;
        message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    message
}

/// Adds `wanted` as host addresses (/32 or /128) on their devices: one address
/// listing, then one batch of adds. Recorded only when the agent added it: an
/// address that is already there belongs to someone else. IPv6 addresses skip
/// duplicate address detection, which would hold a VIP (present on several
/// hosts by design) tentative. Returns the addresses that could not be added,
/// each with why.
pub fn add_addresses(changes: &mut HostChanges, wanted: &[DeviceAddress]) -> Vec<(DeviceAddress, HostError)> {
    let prepare = || -> Result<(Rtnl, BTreeMap<String, u32>, BTreeSet<DeviceAddress>)> {
        let mut rtnl = Rtnl::connect()?;
        let names = link_names(&mut rtnl)?;
        let present = address_dump(&mut rtnl, &names)?.into_iter().collect();
        Ok((rtnl, names.into_iter().map(|(index, name)| (name, index)).collect(), present))
    };
    let (mut rtnl, indexes, present) = match prepare() {
        Ok(prepared) => prepared,
        Err(e) => return all_failed(wanted, adding, &e),
    };
    let mut failures = Vec::new();
    let mut to_add = Vec::new();
    for address in wanted.iter().filter(|a| !present.contains(a)) {
        match indexes.get(&address.device) {
            Some(index) => to_add.push((address, host_address(*index, address.address))),
            None => failures.push((
                address.clone(),
                HostError::new(adding(address), Cause::NoDevice(address.device.clone())),
            )),
        }
    }
    let requests =
        to_add.iter().map(|(_, message)| RouteNetlinkMessage::NewAddress(message.clone())).collect();
    let answers = match rtnl.batch(requests, NLM_F_CREATE | NLM_F_EXCL) {
        Ok(answers) => answers,
        Err(e) => {
            let addresses: Vec<DeviceAddress> = to_add.iter().map(|(a, _)| (*a).clone()).collect();
            let error = HostError::io("sending", e);
            if error.outcome_unknown() {
                // Absent just before the batch: those present now are the agent's.
                let (added, unknown) = read_again(&addresses, true, &error);
                changes.addresses.extend(added);
                failures.extend(all_failed(&unknown, adding, &error));
            } else {
                failures.extend(all_failed(&addresses, adding, &error));
            }
            return failures;
        }
    };
    for ((address, _), answer) in to_add.iter().zip(answers) {
        match answer.map_err(Errno::from_raw) {
            Ok(_) => {
                changes.addresses.insert((*address).clone());
            }
            // Someone else's, in the meantime.
            Err(Errno::EEXIST) => {}
            Err(errno) => failures.push(((*address).clone(), HostError::refused(adding(address), errno))),
        }
    }
    failures
}

/// Removes those of `addresses` that the agent added, in one batch, and forgets
/// them; an address the agent did not add is never removed. Returns the
/// addresses that could not be removed (and stay recorded), each with why.
pub fn remove_addresses(
    changes: &mut HostChanges,
    addresses: &[DeviceAddress],
) -> Vec<(DeviceAddress, HostError)> {
    let owned: Vec<&DeviceAddress> = addresses.iter().filter(|a| changes.addresses.contains(*a)).collect();
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
        Err(e) => {
            let owned: Vec<DeviceAddress> = owned.into_iter().cloned().collect();
            return all_failed(&owned, removing, &e);
        }
    };
    let mut to_remove = Vec::new();
    for address in owned {
        match indexes.get(&address.device) {
            Some(index) => to_remove.push((address, host_address(*index, address.address))),
            // The device is gone, and the address with it.
            None => {
                changes.addresses.remove(address);
            }
        }
    }
    let requests =
        to_remove.iter().map(|(_, message)| RouteNetlinkMessage::DelAddress(message.clone())).collect();
    let answers = match rtnl.batch(requests, 0) {
        Ok(answers) => answers,
        Err(e) => {
            let addresses: Vec<DeviceAddress> = to_remove.iter().map(|(a, _)| (*a).clone()).collect();
            let error = HostError::io("sending", e);
            if !error.outcome_unknown() {
                return all_failed(&addresses, removing, &error);
            }
            // Those gone now were removed; those still there stay recorded.
            let (removed, unknown) = read_again(&addresses, false, &error);
            for address in &removed {
                changes.addresses.remove(address);
            }
            return all_failed(&unknown, removing, &error);
        }
    };
    let mut failures = Vec::new();
    for ((address, _), answer) in to_remove.into_iter().zip(answers) {
        match answer.map_err(Errno::from_raw) {
            Ok(_) | Err(Errno::EADDRNOTAVAIL | Errno::ENODEV) => {
                changes.addresses.remove(address);
            }
            Err(errno) => failures.push((address.clone(), HostError::refused(removing(address), errno))),
        }
    }
    failures
}

/// After a batch whose answers were lost: `addresses` split by what the host
/// holds now into (done, not done), `done` meaning present when `added`, else
/// absent. A listing that fails leaves every outcome unknown: none is done.
fn read_again(
    addresses: &[DeviceAddress],
    added: bool,
    lost: &HostError,
) -> (Vec<DeviceAddress>, Vec<DeviceAddress>) {
    match local_addresses() {
        Ok(present) => {
            let present: BTreeSet<DeviceAddress> = present.into_iter().collect();
            addresses.iter().cloned().partition(|a| present.contains(a) == added)
        }
        Err(error) => {
            tracing::warn!(%error, after = %lost, "reading the addresses again");
            (Vec::new(), addresses.to_vec())
        }
    }
}

fn adding(address: &DeviceAddress) -> String {
    format!("adding {} to {}", address.address, address.device)
}

fn removing(address: &DeviceAddress) -> String {
    format!("removing {} from {}", address.address, address.device)
}

fn listing_addresses(e: std::io::Error) -> HostError {
    HostError::io("listing addresses", e)
}

/// Each address's failure: `e`'s cause, with the address's action.
fn all_failed(
    addresses: &[DeviceAddress],
    action: fn(&DeviceAddress) -> String,
    e: &HostError,
) -> Vec<(DeviceAddress, HostError)> {
    addresses.iter().map(|a| (a.clone(), e.for_action(format!("{}: {}", action(a), e.action)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnets(list: &[(&str, &str)]) -> Vec<(String, IpNet)> {
        list.iter().map(|(device, net)| (device.to_string(), net.parse().unwrap())).collect()
    }

    #[test]
    fn a_local_vip_belongs_to_its_holder_or_its_subnet_never_lo() {
        let vip: IpAddr = "192.168.16.100".parse().unwrap();
        let held =
            subnets(&[("lo", "127.0.0.1/8"), ("eth0", "192.168.16.11/24"), ("eth1", "192.168.16.100/32")]);
        let none = BTreeSet::new();
        assert_eq!(local_device(&held, &none, vip).as_deref(), Some("eth1"));
        let on_lo =
            subnets(&[("lo", "192.168.16.100/32"), ("eth1", "192.168.0.1/16"), ("eth0", "192.168.16.11/24")]);
        assert_eq!(local_device(&on_lo, &none, vip).as_deref(), Some("eth0"), "the longest subnet");
        assert_eq!(local_device(&subnets(&[("lo", "192.168.16.100/32")]), &none, vip), None);
        // Under a block of VIPs made local (its record lost): the route's device.
        let route =
            |device: &str, block: &str| DeviceRoute { device: device.into(), block: block.parse().unwrap() };
        let routes = BTreeSet::from([route("lo", "192.168.16.96/29"), route("vip0", "192.168.16.100/30")]);
        assert_eq!(
            local_device(&on_lo, &routes, vip).as_deref(),
            Some("vip0"),
            "the route before the subnet"
        );
        assert_eq!(local_device(&held, &routes, vip).as_deref(), Some("eth1"), "the holder first");
    }

    #[test]
    fn host_addresses_have_full_prefixes_and_ipv6_skips_dad() {
        let v4 = host_address(3, "192.168.16.100".parse().unwrap());
        assert_eq!((v4.header.prefix_len, v4.header.index, v4.header.family), (32, 3, AddressFamily::Inet));
        assert!(v4.attributes.contains(&AddressAttribute::Local("192.168.16.100".parse().unwrap())));
        assert!(!v4.header.flags.contains(AddressHeaderFlags::Nodad));
        let v6 = host_address(3, "fd00::100".parse().unwrap());
        assert_eq!((v6.header.prefix_len, v6.header.family), (128, AddressFamily::Inet6));
        assert!(v6.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(v6.attributes.contains(&AddressAttribute::Flags(AddressFlags::Nodad)));
    }

    #[test]
    fn route_queries_ask_for_the_host_route() {
        let query = route_query("10.100.0.1".parse().unwrap());
        assert_eq!(query.header.destination_prefix_length, 32);
        assert_eq!(
            query.attributes,
            [RouteAttribute::Destination(RouteAddress::Inet("10.100.0.1".parse().unwrap()))]
        );
    }
}
