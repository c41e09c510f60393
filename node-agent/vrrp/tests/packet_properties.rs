//! VRRP advertisements never panic the parser (issue 12): arbitrary bytes from
//! any pair of addresses, and the advert keepalived sent in the lab broken on
//! purpose (bytes flipped, cut, inserted, the address count lied about, the
//! checksum made right again after the damage so that the later checks run).
//! Every advertisement the emitter can send parses back to itself.
//!
//! Only the public parser is reachable from here: the IPv4 header split and
//! the receive checks (socket.rs) are the crate's own and tested there.
//! Cases per property: proptest's default (256), or PROPTEST_CASES (tests/fuzz
//! runs them long).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lvs_vrrp::{Advertisement, PacketError};
use proptest::{collection::vec, prelude::*, sample::Index};

const GROUP_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));
const GROUP_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12));

/// The captured advert (IP header stripped) and its source.
fn captured() -> (Vec<u8>, IpAddr) {
    let text = include_str!("captures/vrrp-keepalived-v4.hex");
    let bytes: Vec<u8> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect();
    let header = usize::from(bytes[0] & 0x0f) * 4;
    let source = IpAddr::from(<[u8; 4]>::try_from(&bytes[12..16]).unwrap());
    (bytes[header..].to_vec(), source)
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<Ipv4Addr>().prop_map(IpAddr::V4), any::<Ipv6Addr>().prop_map(IpAddr::V6)]
}

/// The Internet checksum over the pseudo-header and `message` (RFC 5798 5.2.8),
/// written here again so that damaged packets can carry a right one.
fn checksum(message: &[u8], source: IpAddr, destination: IpAddr) -> u16 {
    let mut pseudo = Vec::new();
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 112]);
            pseudo.extend_from_slice(&(message.len() as u16).to_be_bytes());
        }
        _ => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            pseudo.extend_from_slice(&v6(source).octets());
            pseudo.extend_from_slice(&v6(destination).octets());
            pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 112]);
        }
    }
    let mut sum: u64 = 0;
    for bytes in [&pseudo[..], message] {
        for word in bytes.chunks(2) {
            sum += u64::from(u16::from_be_bytes([word[0], *word.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    /// The address count (byte 3), anything from 0 to 255.
    Count(u8),
    /// The version/type byte.
    VersionType(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), vec(any::<u8>(), 1..40)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        prop_oneof![0u8..4, any::<u8>()].prop_map(Mutation::Count),
        prop_oneof![Just(0x31u8), Just(0x21), Just(0x32), Just(0x30), any::<u8>()]
            .prop_map(Mutation::VersionType),
    ]
}

fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    for mutation in mutations {
        let length = bytes.len();
        match mutation {
            Mutation::Flip(i, x) if length > 0 => bytes[i.index(length)] ^= x,
            Mutation::Truncate(i) => bytes.truncate(i.index(length + 1)),
            Mutation::Insert(i, extra) => {
                let at = i.index(length + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Count(count) if length > 3 => bytes[3] = *count,
            Mutation::VersionType(byte) if length > 0 => bytes[0] = *byte,
            _ => {}
        }
    }
    bytes
}

/// Parses, and checks what parses: its addresses are all there, of the
/// source's family, and emitting it again parses to the same advertisement.
fn parse_and_check(bytes: &[u8], source: IpAddr, destination: IpAddr) -> Result<(), TestCaseError> {
    match Advertisement::parse(bytes, source, destination) {
        Ok(advert) => {
            let width = if source.is_ipv4() { 4 } else { 16 };
            prop_assert_eq!(bytes.len(), 8 + width * advert.addresses.len());
            prop_assert!(advert.addresses.iter().all(|a| a.is_ipv4() == source.is_ipv4()));
            prop_assert!(advert.max_advert_interval <= 0x0fff);
            let again = Advertisement::parse(&advert.emit(source, destination), source, destination);
            prop_assert_eq!(again, Ok(advert));
        }
        Err(PacketError::Truncated(n) | PacketError::AddressCount { length: n, .. }) => {
            prop_assert_eq!(n, bytes.len());
        }
        Err(_) => {}
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_parser(
        bytes in prop_oneof![vec(any::<u8>(), 0..16), vec(any::<u8>(), 0..300)],
        source in address(),
        destination in address(),
        v3_advert in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if v3_advert && !bytes.is_empty() {
            bytes[0] = 0x31; // past the version and type checks, to the later ones
        }
        parse_and_check(&bytes, source, destination)?;
        if bytes.len() >= 8 {
            // With a right checksum, to reach the address reading too.
            bytes[6..8].fill(0);
            let sum = checksum(&bytes, source, destination);
            bytes[6..8].copy_from_slice(&sum.to_be_bytes());
            parse_and_check(&bytes, source, destination)?;
        }
    }

    #[test]
    fn a_broken_captured_advert_is_refused_or_read_as_it_says(
        mutations in vec(mutation(), 1..5),
        fix_checksum in any::<bool>(),
        destination in prop_oneof![Just(GROUP_V4), address()],
    ) {
        let (advert, source) = captured();
        let mut bytes = mutate(&advert, &mutations);
        if fix_checksum && bytes.len() >= 8 {
            bytes[6..8].fill(0);
            let sum = checksum(&bytes, source, destination);
            bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        parse_and_check(&bytes, source, destination)?;
    }

    #[test]
    fn every_advert_the_emitter_sends_parses_back(
        virtual_router_id in any::<u8>(),
        priority in any::<u8>(),
        max_advert_interval in 0u16..=0x0fff,
        v4 in vec(any::<Ipv4Addr>(), 0..300),
        v6 in vec(any::<Ipv6Addr>(), 0..300),
        ipv6 in any::<bool>(),
        source in address(),
    ) {
        let (source, destination, addresses): (IpAddr, IpAddr, Vec<IpAddr>) = if ipv6 {
            let source = match source { IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()), v6 => v6 };
            (source, GROUP_V6, v6.into_iter().map(IpAddr::V6).collect())
        } else {
            let source = match source { IpAddr::V6(v6) => IpAddr::V4(Ipv4Addr::from(v6.to_bits() as u32)), v4 => v4 };
            (source, GROUP_V4, v4.into_iter().map(IpAddr::V4).collect())
        };
        let mut advert = Advertisement { virtual_router_id, priority, max_advert_interval, addresses };
        let bytes = advert.emit(source, destination);
        // More than 255 addresses are cut to 255 (the count is one byte).
        advert.addresses.truncate(255);
        prop_assert_eq!(Advertisement::parse(&bytes, source, destination), Ok(advert));
    }
}

#[test]
fn the_captured_advert_parses() {
    let (bytes, source) = captured();
    let advert = Advertisement::parse(&bytes, source, GROUP_V4).unwrap();
    assert_eq!(advert.emit(source, GROUP_V4), bytes);
    // The checksum helper above agrees with the capture's.
    let mut zeroed = bytes.clone();
    zeroed[6..8].fill(0);
    assert_eq!(checksum(&zeroed, source, GROUP_V4).to_be_bytes(), [bytes[6], bytes[7]]);
}

/// Guards the generators: every check of the parser must see broken adverts
/// it refuses, and some must pass them all.
#[test]
fn broken_adverts_reach_every_check() {
    use std::collections::BTreeMap;

    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let (advert, source) = captured();
    const SAMPLES: usize = 1000;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..SAMPLES {
        let (mutations, fix) =
            (vec(mutation(), 1..5), any::<bool>()).new_tree(&mut runner).unwrap().current();
        let mut bytes = mutate(&advert, &mutations);
        if fix && bytes.len() >= 8 {
            bytes[6..8].fill(0);
            let sum = checksum(&bytes, source, GROUP_V4);
            bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        let outcome = match Advertisement::parse(&bytes, source, GROUP_V4) {
            Ok(_) => "parsed",
            Err(PacketError::Truncated(_)) => "truncated",
            Err(PacketError::Version(_)) => "version",
            Err(PacketError::Type(_)) => "type",
            Err(PacketError::AddressCount { .. }) => "address count",
            Err(PacketError::Checksum { .. }) => "checksum",
        };
        *seen.entry(outcome).or_default() += 1;
    }
    println!("{seen:?}");
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (outcome, count) in seen {
        assert!(count >= SAMPLES / 50, "{outcome}: {count} of {SAMPLES}");
    }
}
