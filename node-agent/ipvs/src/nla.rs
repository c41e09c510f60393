//! Helpers shared by the IPVS attribute enums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{DecodeError, ErrorContext, NLA_TYPE_MASK, NlaBuffer, NlasIterator, Parseable};

/// Parses a list of attributes, naming the container in the error.
pub(crate) fn parse_nlas<A>(payload: &[u8], container: &str) -> Result<Vec<A>, DecodeError>
where
    A: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    NlasIterator::new(payload)
        .map(|nla| nla.and_then(|nla| A::parse(&nla)))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid {container} attributes"))
}

/// Address family numbers as the kernel sends them (`AF_INET`, `AF_INET6`).
pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;

/// The kernel's `union nf_inet_addr` is 16 bytes; IPv4 sits in the first four.
/// Requests may send 4 bytes for IPv4 (the kernel zero-fills), replies always send 16.
pub(crate) fn address_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Reads an `nf_inet_addr` for the given address family.
pub(crate) fn address_from_bytes(family: u16, bytes: &[u8]) -> Result<IpAddr, DecodeError> {
    match (family, bytes.len()) {
        (AF_INET, n) if n >= 4 => Ok(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
        (AF_INET6, 16) => Ok(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).into()),
        (family, n) => {
            Err(DecodeError::from(format!("invalid address of {n} bytes for address family {family}")))
        }
    }
}

pub(crate) fn family_of(addr: &IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// Emits a NUL-terminated string attribute value.
pub(crate) fn emit_c_string(buffer: &mut [u8], s: &str) {
    buffer[..s.len()].copy_from_slice(s.as_bytes());
    buffer[s.len()] = 0;
}

/// The (type, value) of each attribute in `buffer`, flags stripped.
///
/// The same walk as `NlasIterator`, in a few instructions per attribute: dumps of
/// large tables decode hundreds of thousands of attributes, and under emulation
/// every instruction shows. Stops after the first malformed attribute.
pub(crate) fn raw_attrs(mut buffer: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    std::iter::from_fn(move || {
        if buffer.len() < 4 {
            return None; // at most alignment padding is left
        }
        let length = usize::from(u16::from_ne_bytes([buffer[0], buffer[1]]));
        let kind = u16::from_ne_bytes([buffer[2], buffer[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > buffer.len() {
            buffer = &[];
            return Some(Err(DecodeError::from(format!("invalid attribute length {length}"))));
        }
        let value = &buffer[4..length];
        buffer = &buffer[length.next_multiple_of(4).min(buffer.len())..];
        Some(Ok((kind, value)))
    })
}
