//! The VRRP version 3 advertisement (RFC 5798 section 5), emitted and parsed.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IPvX Address(es)                        |
//! ```
//!
//! The checksum covers an IPv4 or IPv6 pseudo-header (source, destination,
//! protocol 112, VRRP length) as section 5.2.8 requires for version 3 (and as
//! keepalived computes it by default), so parsing and emitting need the IP
//! addresses of the packet. [`AdvertisementBuffer`] reads the fields of raw
//! bytes; [`Advertisement`] is the parsed, checked form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::AddressFamily;

/// IP protocol number of VRRP.
pub(crate) const PROTOCOL: u8 = 112;
/// The version this module speaks.
pub(crate) const VERSION: u8 = 3;
/// The only VRRP message type: ADVERTISEMENT.
pub(crate) const TYPE_ADVERTISEMENT: u8 = 1;
/// Destination of IPv4 advertisements.
pub(crate) const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Destination of IPv6 advertisements.
pub(crate) const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Length of the fixed header, before the addresses.
pub(crate) const HEADER_LEN: usize = 8;
/// The largest Max Advertise Interval: 12 bits of centiseconds (40.95 s).
pub(crate) const MAX_INTERVAL_CENTISECONDS: u16 = 0x0fff;

/// The multicast destination of advertisements of `family`.
pub(crate) fn multicast(family: AddressFamily) -> IpAddr {
    match family {
        AddressFamily::IPv4 => IpAddr::V4(MULTICAST_V4),
        AddressFamily::IPv6 => IpAddr::V6(MULTICAST_V6),
    }
}

/// Why bytes are not a valid advertisement. Each variant is one drop reason
/// of the receive path.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    #[error("VRRP packet of {0} bytes is shorter than the header and its addresses")]
    Truncated(usize),
    #[error("VRRP version {0}, expected 3")]
    Version(u8),
    #[error("VRRP message type {0}, expected 1 (advertisement)")]
    Type(u8),
    #[error("VRRP packet of {length} bytes cannot hold {count} addresses of its family")]
    AddressCount { count: u8, length: usize },
    #[error("VRRP checksum {found:#06x}, expected {expected:#06x}")]
    Checksum { found: u16, expected: u16 },
}

/// Field accessors over the bytes of a VRRP message (without IP header).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdvertisementBuffer<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AdvertisementBuffer<T> {
    /// Wraps `buffer` after checking it holds at least the fixed header, so the
    /// header accessors cannot panic.
    pub(crate) fn new_checked(buffer: T) -> Result<Self, PacketError> {
        let length = buffer.as_ref().len();
        if length < HEADER_LEN {
            return Err(PacketError::Truncated(length));
        }
        Ok(AdvertisementBuffer { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub(crate) fn version(&self) -> u8 {
        self.bytes()[0] >> 4
    }

    pub(crate) fn message_type(&self) -> u8 {
        self.bytes()[0] & 0x0f
    }

    pub(crate) fn virtual_router_id(&self) -> u8 {
        self.bytes()[1]
    }

    pub(crate) fn priority(&self) -> u8 {
        self.bytes()[2]
    }

    pub(crate) fn address_count(&self) -> u8 {
        self.bytes()[3]
    }

    /// Max Advertise Interval in centiseconds (the 4 reserved bits masked off).
    pub(crate) fn max_advert_interval(&self) -> u16 {
        u16::from_be_bytes([self.bytes()[4], self.bytes()[5]]) & MAX_INTERVAL_CENTISECONDS
    }

    pub(crate) fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.bytes()[6], self.bytes()[7]])
    }

    /// The bytes after the fixed header: the addresses.
    pub(crate) fn addresses_bytes(&self) -> &[u8] {
        &self.bytes()[HEADER_LEN..]
    }
}

/// One advertisement, as sent or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub virtual_router_id: u8,
    pub priority: u8,
    /// Max Advertise Interval in centiseconds (at most 4095).
    pub max_advert_interval: u16,
    /// The virtual router's addresses, all of the family of the packet.
    pub addresses: Vec<IpAddr>,
}

impl Advertisement {
    /// Parses and checks a VRRP message received from `source` to
    /// `destination` (the checksum's pseudo-header); the address family is
    /// that of `source`. The checks follow RFC 5798 7.1: length, version,
    /// type, address count, checksum.
    pub fn parse(bytes: &[u8], source: IpAddr, destination: IpAddr) -> Result<Self, PacketError> {
        let buffer = AdvertisementBuffer::new_checked(bytes)?;
        if buffer.version() != VERSION {
            return Err(PacketError::Version(buffer.version()));
        }
        if buffer.message_type() != TYPE_ADVERTISEMENT {
            return Err(PacketError::Type(buffer.message_type()));
        }
        let address_length = address_length(source);
        let count = buffer.address_count();
        let addresses = buffer.addresses_bytes();
        if addresses.len() != usize::from(count) * address_length {
            return Err(if addresses.len() < usize::from(count) * address_length {
                PacketError::Truncated(bytes.len())
            } else {
                PacketError::AddressCount { count, length: bytes.len() }
            });
        }
        // The sum over the whole message, checksum field included, is 0xffff
        // (0 after complement) when the checksum is right.
        if checksum(bytes, source, destination) != 0 {
            let mut zeroed = bytes.to_vec();
            zeroed[6..8].fill(0);
            return Err(PacketError::Checksum {
                found: buffer.checksum(),
                expected: checksum(&zeroed, source, destination),
            });
        }
        let addresses = addresses
            .chunks_exact(address_length)
            .map(|chunk| match <[u8; 4]>::try_from(chunk) {
                Ok(v4) => IpAddr::from(v4),
                Err(_) => IpAddr::from(<[u8; 16]>::try_from(chunk).expect("16-byte chunk")),
            })
            .collect();
        Ok(Advertisement {
            virtual_router_id: buffer.virtual_router_id(),
            priority: buffer.priority(),
            max_advert_interval: buffer.max_advert_interval(),
            addresses,
        })
    }

    /// The bytes of this advertisement sent from `source` to `destination`,
    /// checksum included. Addresses of the other family than `source` are
    /// left out; more than 255 are cut to 255, and the interval to 12 bits.
    pub fn emit(&self, source: IpAddr, destination: IpAddr) -> Vec<u8> {
        let addresses: Vec<u8> = self
            .addresses
            .iter()
            .filter(|address| address.is_ipv4() == source.is_ipv4())
            .take(usize::from(u8::MAX))
            .flat_map(|address| match address {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            })
            .collect();
        let count = u8::try_from(addresses.len() / address_length(source)).expect("at most 255 addresses");
        let interval = self.max_advert_interval.min(MAX_INTERVAL_CENTISECONDS);
        let mut bytes = vec![VERSION << 4 | TYPE_ADVERTISEMENT, self.virtual_router_id, self.priority, count];
        bytes.extend_from_slice(&interval.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&addresses);
        let sum = checksum(&bytes, source, destination);
        bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        bytes
    }
}

fn address_length(address: IpAddr) -> usize {
    match address {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

/// The Internet checksum (RFC 1071) of `message` preceded by the pseudo-header
/// of `source` -> `destination`, protocol 112: over a message whose checksum
/// field is zero it is the value to put there; over a correct message it is 0.
pub(crate) fn checksum(message: &[u8], source: IpAddr, destination: IpAddr) -> u16 {
    let length = message.len();
    let mut pseudo = Vec::with_capacity(40);
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            pseudo.extend_from_slice(&source.octets());
            pseudo.extend_from_slice(&destination.octets());
            pseudo.extend_from_slice(&[0, PROTOCOL]);
            pseudo.extend_from_slice(&(length as u16).to_be_bytes());
        }
        (source, destination) => {
            // IPv6 (RFC 8200 8.1); a mixed pair cannot be on the wire, map both.
            pseudo.extend_from_slice(&to_v6(source).octets());
            pseudo.extend_from_slice(&to_v6(destination).octets());
            pseudo.extend_from_slice(&(length as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, PROTOCOL]);
        }
    }
    let sum = ones_complement_sum(&pseudo, 0);
    !fold(ones_complement_sum(message, sum))
}

fn to_v6(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Adds the 16-bit big-endian words of `bytes` (an odd last byte padded with
/// zero) to `sum`, without folding the carries yet.
fn ones_complement_sum(bytes: &[u8], mut sum: u64) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECTOR1: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 16, 11));
    const GROUP_V4: IpAddr = IpAddr::V4(MULTICAST_V4);
    const GROUP_V6: IpAddr = IpAddr::V6(MULTICAST_V6);

    fn vip() -> IpAddr {
        "192.168.16.100".parse().unwrap()
    }

    /// VRID 51, priority 100, 1 s, VIP 192.168.16.100, from 192.168.16.11.
    ///
    /// Checksum by hand, 16-bit words:
    /// pseudo-header c0a8 100b (source) + e000 0012 (224.0.0.18) + 0070
    /// (zero, protocol 112) + 000c (length 12) = 0x1b141;
    /// message 3133 + 6401 + 0064 + 0000 (checksum) + c0a8 1064 = 0x166a4;
    /// total 0x317e5, folded 0x17e5 + 0x3 = 0x17e8, complemented 0xe817.
    const HAND_VECTOR: [u8; 12] = [0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0xe8, 0x17, 192, 168, 16, 100];

    fn advert() -> Advertisement {
        Advertisement {
            virtual_router_id: 51,
            priority: 100,
            max_advert_interval: 100,
            addresses: vec![vip()],
        }
    }

    #[test]
    fn emits_the_hand_computed_vector() {
        assert_eq!(advert().emit(DIRECTOR1, GROUP_V4), HAND_VECTOR);
    }

    #[test]
    fn parses_the_hand_computed_vector() {
        assert_eq!(Advertisement::parse(&HAND_VECTOR, DIRECTOR1, GROUP_V4), Ok(advert()));
    }

    #[test]
    fn buffer_reads_every_field() {
        let buffer = AdvertisementBuffer::new_checked(&HAND_VECTOR[..]).unwrap();
        assert_eq!(
            (
                buffer.version(),
                buffer.message_type(),
                buffer.virtual_router_id(),
                buffer.priority(),
                buffer.address_count(),
                buffer.max_advert_interval(),
                buffer.checksum(),
                buffer.addresses_bytes()
            ),
            (3, 1, 51, 100, 1, 100, 0xe817, &[192, 168, 16, 100][..])
        );
    }

    /// A VRRPv3 advertisement keepalived 2.2.7 (Debian 12 package) sent in the
    /// lab (`topology classic`, keepalived on director2: vrrp_version 3,
    /// virtual_router_id 51, priority 100, advert_int 1, VIP
    /// 192.168.16.100/32), read from director1 with a raw socket by
    /// `tests/lab_vrrp.rs` (`keepalived_advert_capture`, LAB_VRRP_CAPTURE=1);
    /// saved in `tests/captures/vrrp-keepalived-v4.hex` with its IP header.
    #[test]
    fn parses_a_keepalived_advert_captured_in_the_lab() {
        let hex = include_str!("../tests/captures/vrrp-keepalived-v4.hex");
        let hex = hex.lines().filter(|line| !line.starts_with('#')).collect::<Vec<_>>().join(" ");
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16))
            .collect::<Result<_, _>>()
            .unwrap();
        let header_length = usize::from(bytes[0] & 0x0f) * 4;
        assert_eq!((bytes[0] >> 4, bytes[8], bytes[9]), (4, 255, PROTOCOL), "IPv4, TTL 255, VRRP");
        let source = IpAddr::from(<[u8; 4]>::try_from(&bytes[12..16]).unwrap());
        let destination = IpAddr::from(<[u8; 4]>::try_from(&bytes[16..20]).unwrap());
        assert_eq!((source, destination), ("192.168.16.12".parse().unwrap(), GROUP_V4));
        let parsed = Advertisement::parse(&bytes[header_length..], source, destination).unwrap();
        assert_eq!(
            parsed,
            Advertisement {
                virtual_router_id: 51,
                priority: 100,
                max_advert_interval: 100,
                addresses: vec![vip()]
            }
        );
        // Our emitter produces the same bytes.
        assert_eq!(parsed.emit(source, destination), bytes[header_length..]);
    }

    #[test]
    fn ipv6_round_trip_and_pseudo_header() {
        let source: IpAddr = "fe80::1".parse().unwrap();
        let advert = Advertisement {
            virtual_router_id: 7,
            priority: 200,
            max_advert_interval: 20,
            addresses: vec!["2001:db8::100".parse().unwrap(), "2001:db8::101".parse().unwrap()],
        };
        let bytes = advert.emit(source, GROUP_V6);
        assert_eq!(bytes.len(), HEADER_LEN + 32);
        assert_eq!(Advertisement::parse(&bytes, source, GROUP_V6), Ok(advert));
        // Another source changes the pseudo-header, so the checksum fails.
        let other: IpAddr = "fe80::2".parse().unwrap();
        assert!(matches!(Advertisement::parse(&bytes, other, GROUP_V6), Err(PacketError::Checksum { .. })));
    }

    #[test]
    fn ipv6_checksum_by_hand() {
        // fe80::1 -> ff02::12, VRID 1, priority 100, 1 s, no address (8 bytes).
        // pseudo: fe80 + 0001 + ff02 + 0012 + 0000 0008 (length) + 0000 0070
        //   = 0x1fe0d; message: 3101 + 6400 + 0064 = 0x9565;
        // total 0x29372, folded 0x9372 + 0x2 = 0x9374, complemented 0x6c8b.
        let advert = Advertisement {
            virtual_router_id: 1,
            priority: 100,
            max_advert_interval: 100,
            addresses: vec![],
        };
        let bytes = advert.emit("fe80::1".parse().unwrap(), GROUP_V6);
        assert_eq!(bytes, [0x31, 0x01, 0x64, 0x00, 0x00, 0x64, 0x6c, 0x8b]);
    }

    #[test]
    fn rejects_short_packets() {
        assert_eq!(
            Advertisement::parse(&HAND_VECTOR[..7], DIRECTOR1, GROUP_V4),
            Err(PacketError::Truncated(7))
        );
        assert_eq!(Advertisement::parse(&[], DIRECTOR1, GROUP_V4), Err(PacketError::Truncated(0)));
        // The header announces one address; only 3 of its bytes are there.
        assert_eq!(
            Advertisement::parse(&HAND_VECTOR[..11], DIRECTOR1, GROUP_V4),
            Err(PacketError::Truncated(11))
        );
    }

    #[test]
    fn rejects_other_versions_and_types() {
        let mut v2 = HAND_VECTOR;
        v2[0] = 0x21;
        assert_eq!(Advertisement::parse(&v2, DIRECTOR1, GROUP_V4), Err(PacketError::Version(2)));
        let mut type2 = HAND_VECTOR;
        type2[0] = 0x32;
        assert_eq!(Advertisement::parse(&type2, DIRECTOR1, GROUP_V4), Err(PacketError::Type(2)));
    }

    #[test]
    fn rejects_extra_bytes_after_the_addresses() {
        let mut long = HAND_VECTOR.to_vec();
        long.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            Advertisement::parse(&long, DIRECTOR1, GROUP_V4),
            Err(PacketError::AddressCount { count: 1, length: 16 })
        );
    }

    #[test]
    fn rejects_a_bad_checksum_and_names_the_expected_one() {
        let mut bad = HAND_VECTOR;
        bad[7] ^= 0xff;
        assert_eq!(
            Advertisement::parse(&bad, DIRECTOR1, GROUP_V4),
            Err(PacketError::Checksum { found: 0xe8e8, expected: 0xe817 })
        );
        // A checksum without pseudo-header (as VRRPv2 computes it) is wrong too.
        let mut no_pseudo = HAND_VECTOR;
        no_pseudo[6..8].fill(0);
        let plain = !fold(ones_complement_sum(&no_pseudo, 0));
        no_pseudo[6..8].copy_from_slice(&plain.to_be_bytes());
        assert!(matches!(
            Advertisement::parse(&no_pseudo, DIRECTOR1, GROUP_V4),
            Err(PacketError::Checksum { .. })
        ));
    }

    #[test]
    fn reserved_bits_are_ignored_and_the_interval_is_12_bits() {
        let mut advert = advert();
        advert.max_advert_interval = 0xffff;
        let bytes = advert.emit(DIRECTOR1, GROUP_V4);
        assert_eq!(AdvertisementBuffer::new_checked(&bytes).unwrap().max_advert_interval(), 4095);
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), 0x0fff, "reserved bits sent as zero");
    }

    #[test]
    fn odd_length_checksum_pads_with_zero() {
        assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }
}
