//! Telling the neighbours that a VIP moved here: gratuitous ARP for IPv4 and an
//! unsolicited neighbour advertisement for IPv6, sent when a director takes a VIP
//! so that hosts and switches stop sending its traffic to the previous holder.
//!
//! The frames are built here and sent whole through a raw packet socket on the
//! interface (needs CAP_NET_RAW).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use nix::{
    ifaddrs::getifaddrs,
    sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, sendto, socket},
};

use super::{
    changes::DeviceAddress,
    error::{Cause, HostError},
};

/// How many announcements to send: one may be lost, a few are what keepalived
/// and arping send.
pub const COUNT: usize = 3;

type Mac = [u8; 6];

/// Announces VIPs held otherwise than as addresses (see [`super::local_routes`]).
/// Returns the VIPs that could not be announced, each with why.
pub fn announce_vips(vips: &[DeviceAddress]) -> Vec<(DeviceAddress, HostError)> {
    announce_all(&vips.iter().collect::<Vec<_>>())
}

/// Announces each VIP [`COUNT`] times: every VIP once, a pause, every VIP again,
/// so that many VIPs cost the pauses of one.
pub(crate) fn announce_all(vips: &[&DeviceAddress]) -> Vec<(DeviceAddress, HostError)> {
    let action = |vip: &DeviceAddress| format!("announcing {} on {}", vip.address, vip.device);
    let mut failures = Vec::new();
    let mut frames: Vec<(&DeviceAddress, LinkAddr, Vec<u8>)> = Vec::new();
    let mut interfaces: BTreeMap<&str, Result<LinkAddr, Cause>> = BTreeMap::new();
    for vip in vips {
        let link = interfaces.entry(&vip.device).or_insert_with(|| link_address(&vip.device));
        let frame = link.clone().and_then(|link| {
            let mac = link.addr().ok_or_else(|| {
                Cause::Unsupported(format!("{} has no Ethernet address to announce from", vip.device))
            })?;
            Ok((
                link,
                match vip.address {
                    IpAddr::V4(ip) => gratuitous_arp(mac, ip),
                    IpAddr::V6(ip) => unsolicited_neighbour_advertisement(mac, ip),
                },
            ))
        });
        match frame {
            Ok((link, frame)) => frames.push((vip, link, frame)),
            Err(cause) => failures.push(((*vip).clone(), HostError::new(action(vip), cause))),
        }
    }
    if frames.is_empty() {
        return failures;
    }
    let socket = match socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, None) {
        Ok(socket) => socket,
        Err(errno) => {
            let why = HostError::refused("opening a packet socket (needs CAP_NET_RAW)", errno);
            failures.extend(frames.iter().map(|(vip, _, _)| {
                ((*vip).clone(), why.for_action(format!("{}: {}", action(vip), why.action)))
            }));
            return failures;
        }
    };
    let mut failed = BTreeSet::new();
    for round in 0..COUNT {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (vip, link, frame) in &frames {
            if failed.contains(vip) {
                continue;
            }
            if let Err(errno) = sendto(socket.as_raw_fd(), frame, link, MsgFlags::empty()) {
                failed.insert(*vip);
                failures.push(((*vip).clone(), HostError::refused(action(vip), errno)));
            }
        }
    }
    failures
}

/// The interface's link-layer address (index and MAC), as a packet socket address.
fn link_address(interface: &str) -> Result<LinkAddr, Cause> {
    getifaddrs()
        .map_err(|errno| Cause::Io(Arc::new(errno.into())))?
        .filter(|entry| entry.interface_name == interface)
        .find_map(|entry| entry.address.and_then(|address| address.as_link_addr().copied()))
        .ok_or_else(|| Cause::NoDevice(interface.into()))
}

fn ethernet_header(destination: Mac, source: Mac, ether_type: u16) -> Vec<u8> {
    [&destination[..], &source, &ether_type.to_be_bytes()].concat()
}

/// A broadcast ARP request with sender = target = `vip`: every neighbour that has
/// an entry for the VIP updates it to `mac` (Linux treats it as gratuitous).
pub fn gratuitous_arp(mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet_header([0xff; 6], mac, 0x0806);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&vip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&vip.octets());
    frame
}

/// An unsolicited neighbour advertisement for `vip` to all nodes (ff02::1), with
/// the override flag and the target link-layer address `mac` (RFC 4861 7.2.6).
pub fn unsolicited_neighbour_advertisement(mac: Mac, vip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0]; // type, code, checksum, flags: override
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(vip, all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = ethernet_header([0x33, 0x33, 0, 0, 0, 1], mac, 0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 255]); // ICMPv6; hop limit 255, required by receivers
    frame.extend_from_slice(&vip.octets());
    frame.extend_from_slice(&all_nodes.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// The Internet checksum of an ICMPv6 message over its IPv6 pseudo-header.
fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> u16 {
    let length = (message.len() as u32).to_be_bytes();
    let pseudo_header = [&source.octets()[..], &destination.octets(), &length, &[0, 0, 0, 58]].concat();
    let bytes = pseudo_header.iter().chain(message);
    let words = bytes.clone().step_by(2).zip(bytes.skip(1).step_by(2).chain(std::iter::once(&0)));
    let mut sum: u32 = words.map(|(high, low)| u32::from(u16::from_be_bytes([*high, *low]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn gratuitous_arp_frame() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(192, 168, 16, 100));
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0x0a, 0x08, 0x06,
            0, 1, 0x08, 0, 6, 4, 0, 1,
            2, 0, 0, 0, 0, 0x0a, 192, 168, 16, 100,
            0, 0, 0, 0, 0, 0, 192, 168, 16, 100,
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn neighbour_advertisement_checksums_to_zero() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let frame = unsolicited_neighbour_advertisement(MAC, vip);
        assert_eq!(frame.len(), 14 + 40 + 32);
        assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(frame[14 + 7], 255);
        let icmp = &frame[54..];
        assert_eq!(&icmp[8..24], &vip.octets());
        assert_eq!(&icmp[24..], &[2, 1, 2, 0, 0, 0, 0, 0x0a]);
        // A message with its checksum filled in sums to zero.
        assert_eq!(icmpv6_checksum(vip, "ff02::1".parse().unwrap(), icmp), 0);
    }

    #[test]
    fn checksum_of_odd_lengths_pads_with_zero() {
        let zero = Ipv6Addr::UNSPECIFIED;
        // Pseudo-header: length 1, next header 58; message 0x01 padded to 0x0100.
        assert_eq!(icmpv6_checksum(zero, zero, &[1]), !(1 + 58 + 0x0100));
    }
}
