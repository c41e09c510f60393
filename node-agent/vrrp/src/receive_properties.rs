//! The receive path never panics (issue 12): the IPv4 header split of what the
//! raw socket returns, then the receive checks, on arbitrary datagrams and on
//! well-formed ones with options, padding and lengths lied about. What splits
//! must be exactly the bytes the header's lengths delimit.
//!
//! Here rather than under tests/ because both functions are the crate's own
//! (packet_properties.rs covers the public advert parser). Cases per property:
//! proptest's default (256), or PROPTEST_CASES (tests/fuzz runs them long).

use std::net::{IpAddr, Ipv4Addr};

use proptest::{collection::vec, prelude::*};

use crate::{
    packet::{Advertisement, MULTICAST_V4},
    socket::{DropReason, RawPacket, check, parse_ipv4},
};

/// An IPv4 header of `options` 32-bit words of options, TTL `ttl`, then
/// `payload`, then `padding` bytes that the total length leaves out.
fn datagram(options: u8, ttl: u8, source: Ipv4Addr, payload: &[u8], padding: &[u8]) -> Vec<u8> {
    let header = 20 + usize::from(options) * 4;
    let total = u16::try_from(header + payload.len()).expect("fits");
    let mut bytes = vec![0x40 | (5 + options), 0xc0];
    bytes.extend_from_slice(&total.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0, ttl, 112, 0, 0]);
    bytes.extend_from_slice(&source.octets());
    bytes.extend_from_slice(&MULTICAST_V4.octets());
    bytes.extend(std::iter::repeat_n(1u8, usize::from(options) * 4)); // NOP options
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(padding);
    bytes
}

fn own() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 16, 11))
}

proptest! {
    /// Any bytes at all: an error or a split whose payload lies inside them.
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in vec(any::<u8>(), 0..120)) {
        if let Ok(packet) = parse_ipv4(&bytes) {
            prop_assert!(packet.payload.len() + 20 <= bytes.len());
            let _ = check(&packet, own(), |_| true);
        }
    }

    /// A well-formed header, with options and trailing padding: the payload is
    /// exactly what the lengths delimit, and the header fields are read right.
    #[test]
    fn well_formed_headers_split_exactly(
        options in 0u8..=10,
        ttl in any::<u8>(),
        source in any::<Ipv4Addr>(),
        payload in vec(any::<u8>(), 0..64),
        padding in vec(any::<u8>(), 0..8),
    ) {
        let packet = parse_ipv4(&datagram(options, ttl, source, &payload, &padding)).unwrap();
        prop_assert_eq!(packet.payload, payload);
        prop_assert_eq!(packet.source, IpAddr::V4(source));
        prop_assert_eq!(packet.destination, IpAddr::V4(MULTICAST_V4));
        prop_assert_eq!(packet.ttl, Some(ttl));
    }

    /// The header's own lengths lied about (header length, total length) or the
    /// datagram cut anywhere: a drop, never a panic nor bytes from outside.
    #[test]
    fn lying_lengths_and_cuts_are_drops(
        options in 0u8..=10,
        payload in vec(any::<u8>(), 0..64),
        header_nibble in 0u8..16,
        total in any::<u16>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = datagram(options, 255, Ipv4Addr::new(192, 168, 16, 12), &payload, &[]);
        bytes[0] = 0x40 | header_nibble;
        bytes[2..4].copy_from_slice(&total.to_be_bytes());
        let header = usize::from(header_nibble) * 4;
        let cut = cut.index(bytes.len() + 1);
        let bytes = &bytes[..cut];
        match parse_ipv4(bytes) {
            Ok(packet) => {
                prop_assert!(header >= 20 && usize::from(total) >= header && usize::from(total) <= bytes.len());
                prop_assert_eq!(packet.payload.len(), usize::from(total) - header);
            }
            Err(reason) => prop_assert_eq!(reason, DropReason::Truncated),
        }
    }

    /// The receive checks on a good advert inside a datagram whose TTL and
    /// source vary: accepted only with TTL 255 from another address.
    #[test]
    fn the_checks_accept_only_link_adverts_from_others(ttl in any::<u8>(), last in 1u8..=254, vrid in 1u8..=255) {
        let source = Ipv4Addr::new(192, 168, 16, last);
        let advert = Advertisement {
            virtual_router_id: vrid,
            priority: 100,
            max_advert_interval: 100,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 16, 100))],
        };
        let bytes = datagram(0, ttl, source, &advert.emit(IpAddr::V4(source), IpAddr::V4(MULTICAST_V4)), &[]);
        let packet: RawPacket = parse_ipv4(&bytes).unwrap();
        let verdict = check(&packet, own(), |id| id == vrid);
        if ttl != 255 {
            prop_assert_eq!(verdict, Err(DropReason::BadTtl));
        } else if IpAddr::V4(source) == own() {
            prop_assert_eq!(verdict, Err(DropReason::Own));
        } else {
            prop_assert_eq!(verdict, Ok(advert));
        }
    }
}
