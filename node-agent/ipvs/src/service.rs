//! Virtual services: the `IPVS_SVC_ATTR_*` attributes and the [`Service`] model.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use netlink_packet_core::{
    DecodeError, DefaultNla, ErrorContext, Nla, NlaBuffer, Parseable, emit_u16, emit_u16_be, emit_u32,
    parse_string, parse_u16, parse_u16_be, parse_u32,
};

use serde::{Deserialize, Serialize};

use super::{
    nla::{
        AF_INET, AF_INET6, address_bytes, address_from_bytes, emit_c_string, family_of, parse_nlas, raw_attrs,
    },
    stats::{IpvsStatsAttr, Stats, Width, emit_stats, parse_stats, stats_buffer_len},
};

const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;
const IPVS_SVC_ATTR_STATS: u16 = 10;
const IPVS_SVC_ATTR_PE_NAME: u16 = 11;
const IPVS_SVC_ATTR_STATS64: u16 = 12;

/// One attribute of a service, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum IpvsServiceAttr {
    AddressFamily(u16),
    Protocol(u16),
    /// Raw `nf_inet_addr` bytes (4 or 16), read according to `AddressFamily`.
    Address(Vec<u8>),
    /// Host-order value; big-endian on the wire.
    Port(u16),
    Fwmark(u32),
    Scheduler(String),
    /// `struct ip_vs_flags`: new flags = (old & !mask) | (flags & mask).
    Flags {
        flags: u32,
        mask: u32,
    },
    /// Persistence timeout in seconds.
    Timeout(u32),
    /// The raw 4 bytes: an IPv4 mask in network order, or an IPv6 prefix length
    /// as a host-order u32 (the kernel reads the same attribute both ways).
    Netmask([u8; 4]),
    Stats(Vec<IpvsStatsAttr>),
    PersistenceEngine(String),
    Stats64(Vec<IpvsStatsAttr>),
    Other(DefaultNla),
}

impl Nla for IpvsServiceAttr {
    fn value_len(&self) -> usize {
        use IpvsServiceAttr::*;
        match self {
            AddressFamily(_) | Protocol(_) | Port(_) => 2,
            Fwmark(_) | Timeout(_) | Netmask(_) => 4,
            Address(bytes) => bytes.len(),
            Scheduler(s) | PersistenceEngine(s) => s.len() + 1,
            Flags { .. } => 8,
            Stats(attrs) => stats_buffer_len(attrs, Width::Legacy),
            Stats64(attrs) => stats_buffer_len(attrs, Width::Wide),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use IpvsServiceAttr::*;
        match self {
            AddressFamily(_) => IPVS_SVC_ATTR_AF,
            Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            Address(_) => IPVS_SVC_ATTR_ADDR,
            Port(_) => IPVS_SVC_ATTR_PORT,
            Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            Scheduler(_) => IPVS_SVC_ATTR_SCHED_NAME,
            Flags { .. } => IPVS_SVC_ATTR_FLAGS,
            Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            Stats(_) => IPVS_SVC_ATTR_STATS,
            PersistenceEngine(_) => IPVS_SVC_ATTR_PE_NAME,
            Stats64(_) => IPVS_SVC_ATTR_STATS64,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use IpvsServiceAttr::*;
        match self {
            AddressFamily(v) | Protocol(v) => emit_u16(buffer, *v).expect("2 bytes"),
            Port(v) => emit_u16_be(buffer, *v).expect("2 bytes"),
            Fwmark(v) | Timeout(v) => emit_u32(buffer, *v).expect("4 bytes"),
            Netmask(bytes) => buffer.copy_from_slice(bytes),
            Address(bytes) => buffer.copy_from_slice(bytes),
            Scheduler(s) | PersistenceEngine(s) => emit_c_string(buffer, s),
            Flags { flags, mask } => {
                emit_u32(&mut buffer[..4], *flags).expect("4 bytes");
                emit_u32(&mut buffer[4..], *mask).expect("4 bytes");
            }
            Stats(attrs) => emit_stats(attrs, Width::Legacy, buffer),
            Stats64(attrs) => emit_stats(attrs, Width::Wide, buffer),
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for IpvsServiceAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        Self::from_raw(buf.kind(), buf.value())
    }
}

impl IpvsServiceAttr {
    /// Decodes one attribute from its type and value.
    pub(crate) fn from_raw(kind: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        use IpvsServiceAttr::*;
        let invalid = |what: &str| DecodeError::from(format!("invalid IPVS_SVC_ATTR_{what} value"));
        Ok(match kind {
            IPVS_SVC_ATTR_AF => AddressFamily(parse_u16(payload).map_err(|_| invalid("AF"))?),
            IPVS_SVC_ATTR_PROTOCOL => Protocol(parse_u16(payload).map_err(|_| invalid("PROTOCOL"))?),
            IPVS_SVC_ATTR_ADDR => Address(payload.to_vec()),
            IPVS_SVC_ATTR_PORT => Port(parse_u16_be(payload).map_err(|_| invalid("PORT"))?),
            IPVS_SVC_ATTR_FWMARK => Fwmark(parse_u32(payload).map_err(|_| invalid("FWMARK"))?),
            IPVS_SVC_ATTR_SCHED_NAME => Scheduler(parse_string(payload).map_err(|_| invalid("SCHED_NAME"))?),
            IPVS_SVC_ATTR_FLAGS => {
                if payload.len() != 8 {
                    return Err(invalid("FLAGS"));
                }
                Flags { flags: parse_u32(&payload[..4])?, mask: parse_u32(&payload[4..])? }
            }
            IPVS_SVC_ATTR_TIMEOUT => Timeout(parse_u32(payload).map_err(|_| invalid("TIMEOUT"))?),
            IPVS_SVC_ATTR_NETMASK => Netmask(payload.try_into().map_err(|_| invalid("NETMASK"))?),
            IPVS_SVC_ATTR_STATS => Stats(parse_stats(payload)?),
            IPVS_SVC_ATTR_PE_NAME => {
                PersistenceEngine(parse_string(payload).map_err(|_| invalid("PE_NAME"))?)
            }
            IPVS_SVC_ATTR_STATS64 => Stats64(parse_stats(payload)?),
            kind => Other(DefaultNla::new(kind, payload.to_vec())),
        })
    }
}

pub(crate) fn parse_service_attrs(payload: &[u8]) -> Result<Vec<IpvsServiceAttr>, DecodeError> {
    parse_nlas(payload, "IPVS service")
}

/// Transport protocol of a service (`IPPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Other(u16),
}

impl Protocol {
    pub(crate) fn number(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Other(n) => n,
        }
    }

    pub(crate) fn from_number(n: u16) -> Self {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            n => Protocol::Other(n),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Other(n) => write!(f, "protocol {n}"),
        }
    }
}

/// IP version of a service or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

impl AddressFamily {
    pub(crate) fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => AddressFamily::Ipv4,
            IpAddr::V6(_) => AddressFamily::Ipv6,
        }
    }

    pub(crate) fn number(self) -> u16 {
        match self {
            AddressFamily::Ipv4 => AF_INET,
            AddressFamily::Ipv6 => AF_INET6,
        }
    }

    pub(crate) fn from_number(n: u16) -> Result<Self, DecodeError> {
        match n {
            AF_INET => Ok(AddressFamily::Ipv4),
            AF_INET6 => Ok(AddressFamily::Ipv6),
            n => Err(DecodeError::from(format!("unknown address family {n}"))),
        }
    }
}

/// What identifies a virtual service in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServiceKey {
    /// A (protocol, address, port) service; port 0 matches every port.
    Address { protocol: Protocol, address: SocketAddr },
    /// A firewall-mark service: any packet carrying the mark, of any protocol.
    Fwmark { family: AddressFamily, mark: u32 },
}

impl ServiceKey {
    pub fn tcp(address: SocketAddr) -> Self {
        ServiceKey::Address { protocol: Protocol::Tcp, address }
    }

    pub fn udp(address: SocketAddr) -> Self {
        ServiceKey::Address { protocol: Protocol::Udp, address }
    }

    pub fn family(&self) -> AddressFamily {
        match self {
            ServiceKey::Address { address, .. } => AddressFamily::of(&address.ip()),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }

    /// The identity attributes every service-bearing command needs.
    pub(crate) fn to_attrs(self) -> Vec<IpvsServiceAttr> {
        match self {
            ServiceKey::Address { protocol, address } => vec![
                IpvsServiceAttr::AddressFamily(family_of(&address.ip())),
                IpvsServiceAttr::Protocol(protocol.number()),
                IpvsServiceAttr::Address(address_bytes(&address.ip())),
                IpvsServiceAttr::Port(address.port()),
            ],
            ServiceKey::Fwmark { family, mark } => {
                vec![IpvsServiceAttr::AddressFamily(family.number()), IpvsServiceAttr::Fwmark(mark)]
            }
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Address { protocol, address } => write!(f, "{protocol} {address}"),
            ServiceKey::Fwmark { family: AddressFamily::Ipv4, mark } => write!(f, "FWM {mark}"),
            ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark } => write!(f, "FWM {mark} IPv6"),
        }
    }
}

/// Service flags (`IP_VS_SVC_F_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    pub const PERSISTENT: u32 = 0x0001;
    /// Kernel-internal ("in the hash table"): set in every reply, never requested.
    pub const HASHED: u32 = 0x0002;
    pub const ONE_PACKET: u32 = 0x0004;
    /// sh-fallback / mh-fallback.
    pub const SCHED1: u32 = 0x0008;
    /// sh-port / mh-port.
    pub const SCHED2: u32 = 0x0010;
    pub const SCHED3: u32 = 0x0020;

    pub fn contains(self, flag: u32) -> bool {
        self.0 & flag == flag
    }

    pub fn with(self, flag: u32, on: bool) -> Self {
        if on { ServiceFlags(self.0 | flag) } else { ServiceFlags(self.0 & !flag) }
    }
}

/// Persistence granularity: client addresses are masked with it to pick a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Netmask {
    Ipv4(Ipv4Addr),
    /// IPv6 services take a prefix length (1..=128) instead of a mask.
    Ipv6Prefix(u32),
}

impl Netmask {
    /// The kernel's (and ipvsadm's) default: one template per client address.
    pub fn host(family: AddressFamily) -> Self {
        match family {
            AddressFamily::Ipv4 => Netmask::Ipv4(Ipv4Addr::BROADCAST),
            AddressFamily::Ipv6 => Netmask::Ipv6Prefix(128),
        }
    }

    fn to_wire(self) -> [u8; 4] {
        match self {
            Netmask::Ipv4(mask) => mask.octets(),
            Netmask::Ipv6Prefix(prefix) => prefix.to_ne_bytes(),
        }
    }

    fn from_wire(family: AddressFamily, bytes: [u8; 4]) -> Self {
        match family {
            AddressFamily::Ipv4 => Netmask::Ipv4(Ipv4Addr::from(bytes)),
            AddressFamily::Ipv6 => Netmask::Ipv6Prefix(u32::from_ne_bytes(bytes)),
        }
    }
}

/// A virtual service's configuration: everything `NEW_SERVICE`/`SET_SERVICE` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    pub scheduler: String,
    /// Without [`ServiceFlags::HASHED`], which the kernel manages.
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (kept by the kernel even when not persistent).
    pub timeout: u32,
    pub netmask: Netmask,
    pub persistence_engine: Option<String>,
}

impl Service {
    /// A service with ipvsadm's defaults for everything but the key and scheduler.
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Self {
        Service {
            key,
            scheduler: scheduler.into(),
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: Netmask::host(key.family()),
            persistence_engine: None,
        }
    }

    /// Turns persistence on with the given timeout and netmask.
    pub fn persistent(mut self, timeout: u32, netmask: Netmask) -> Self {
        self.flags = self.flags.with(ServiceFlags::PERSISTENT, true);
        self.timeout = timeout;
        self.netmask = netmask;
        self
    }

    pub(crate) fn is_persistent(&self) -> bool {
        self.flags.contains(ServiceFlags::PERSISTENT)
    }

    /// The full specification that `NEW_SERVICE` and `SET_SERVICE` require.
    pub(crate) fn to_attrs(&self) -> Vec<IpvsServiceAttr> {
        let mut attrs = self.key.to_attrs();
        attrs.push(IpvsServiceAttr::Scheduler(self.scheduler.clone()));
        attrs.push(IpvsServiceAttr::Flags {
            flags: self.flags.0 & !ServiceFlags::HASHED,
            // Like ipvsadm: every flag is set or cleared as given.
            mask: u32::MAX,
        });
        attrs.push(IpvsServiceAttr::Timeout(self.timeout));
        attrs.push(IpvsServiceAttr::Netmask(self.netmask.to_wire()));
        if let Some(pe) = &self.persistence_engine {
            attrs.push(IpvsServiceAttr::PersistenceEngine(pe.clone()));
        }
        attrs
    }
}

/// A service as dumped by the kernel: configuration plus counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub service: Service,
    pub stats: Stats,
}

impl ServiceEntry {
    pub(crate) fn from_attrs(attrs: &[IpvsServiceAttr]) -> Result<Self, DecodeError> {
        let mut entry = EntryBuilder::default();
        attrs.iter().cloned().for_each(|attr| entry.apply(attr));
        entry.finish()
    }

    /// Decodes an `IPVS_CMD_ATTR_SERVICE` nest straight from the wire (see
    /// `DestinationEntry::decode`).
    pub(crate) fn decode(nest: &[u8]) -> Result<Self, DecodeError> {
        let mut entry = EntryBuilder::default();
        // The legacy STATS nest precedes STATS64; read it only if STATS64 never comes.
        let mut legacy_stats = None;
        for attr in raw_attrs(nest) {
            match attr.context("invalid IPVS service attributes")? {
                (IPVS_SVC_ATTR_STATS64, value) => entry.stats = Some(Stats::decode(value)?),
                (IPVS_SVC_ATTR_STATS, value) => legacy_stats = Some(value),
                (kind, value) => entry.apply(IpvsServiceAttr::from_raw(kind, value)?),
            }
        }
        if let (None, Some(value)) = (&entry.stats, legacy_stats) {
            entry.stats = Some(Stats::decode(value)?);
        }
        entry.finish()
    }
}

/// Collects a service's attributes; STATS64 wins over the legacy STATS.
#[derive(Default)]
struct EntryBuilder {
    family: Option<u16>,
    protocol: Option<u16>,
    address: Option<Vec<u8>>,
    port: Option<u16>,
    fwmark: Option<u32>,
    scheduler: String,
    flags: u32,
    timeout: u32,
    netmask: Option<[u8; 4]>,
    persistence_engine: Option<String>,
    stats: Option<Stats>,
    has_stats64: bool,
}

impl EntryBuilder {
    fn apply(&mut self, attr: IpvsServiceAttr) {
        use IpvsServiceAttr as A;
        match attr {
            A::AddressFamily(v) => self.family = Some(v),
            A::Protocol(v) => self.protocol = Some(v),
            A::Address(bytes) => self.address = Some(bytes),
            A::Port(v) => self.port = Some(v),
            A::Fwmark(v) => self.fwmark = Some(v),
            A::Scheduler(s) => self.scheduler = s,
            A::Flags { flags, .. } => self.flags = flags & !ServiceFlags::HASHED,
            A::Timeout(v) => self.timeout = v,
            A::Netmask(bytes) => self.netmask = Some(bytes),
            A::PersistenceEngine(s) if !s.is_empty() => self.persistence_engine = Some(s),
            A::Stats(s) if !self.has_stats64 => self.stats = Some(Stats::from_attrs(&s)),
            A::Stats64(s) => {
                self.stats = Some(Stats::from_attrs(&s));
                self.has_stats64 = true;
            }
            A::PersistenceEngine(_) | A::Stats(_) | A::Other(_) => {}
        }
    }

    fn finish(self) -> Result<ServiceEntry, DecodeError> {
        let family = AddressFamily::from_number(self.family.ok_or("IPVS service without IPVS_SVC_ATTR_AF")?)?;
        let key = match self.fwmark {
            Some(mark) if mark != 0 => ServiceKey::Fwmark { family, mark },
            _ => {
                let address = self.address.as_deref().ok_or("IPVS service without address")?;
                ServiceKey::Address {
                    protocol: Protocol::from_number(self.protocol.ok_or("IPVS service without protocol")?),
                    address: SocketAddr::new(
                        address_from_bytes(family.number(), address)?,
                        self.port.ok_or("IPVS service without port")?,
                    ),
                }
            }
        };
        Ok(ServiceEntry {
            service: Service {
                key,
                scheduler: self.scheduler,
                flags: ServiceFlags(self.flags),
                timeout: self.timeout,
                netmask: self.netmask.map_or(Netmask::host(family), |b| Netmask::from_wire(family, b)),
                persistence_engine: self.persistence_engine,
            },
            stats: self.stats.unwrap_or_default(),
        })
    }
}
