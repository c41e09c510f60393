//! Telling the neighbours that a VIP moved here: gratuitous ARP for IPv4 and an
//! unsolicited neighbour advertisement for IPv6, sent when a director takes a VIP
//! so that hosts and switches stop sending its traffic to the previous holder.
//!
//! The frames are built here and sent whole through a raw packet socket on the
//! interface (needs CAP_NET_RAW).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result, anyhow};
use nix::{
    ifaddrs::getifaddrs,
    sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, sendto, socket},
};

/// How many announcements to send: one may be lost, a few are what keepalived
/// and arping send.
pub const COUNT: usize = 3;

type Mac = [u8; 6];

/// Announces `vip` on `interface` [`COUNT`] times, a few milliseconds apart.
pub fn announce(interface: &str, vip: IpAddr) -> Result<()> {
    let link = link_address(interface)?;
    let mac = link.addr().ok_or_else(|| anyhow!("{interface} has no Ethernet address to announce"))?;
    let frame = match vip {
        IpAddr::V4(vip) => gratuitous_arp(mac, vip),
        IpAddr::V6(vip) => unsolicited_neighbour_advertisement(mac, vip),
    };
    let socket = socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, None)
        .context("opening a packet socket (needs CAP_NET_RAW)")?;
    for i in 0..COUNT {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sendto(socket.as_raw_fd(), &frame, &link, MsgFlags::empty())
            .with_context(|| format!("announcing {vip} on {interface}"))?;
    }
    Ok(())
}

/// The interface's link-layer address (index and MAC), as a packet socket address.
fn link_address(interface: &str) -> Result<LinkAddr> {
    getifaddrs()
        .context("listing interfaces")?
        .filter(|entry| entry.interface_name == interface)
        .find_map(|entry| entry.address.and_then(|address| address.as_link_addr().copied()))
        .ok_or_else(|| anyhow!("no interface {interface}"))
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
