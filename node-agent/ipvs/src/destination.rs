//! Real servers: the `IPVS_DEST_ATTR_*` attributes and the [`Destination`] model.

use std::{fmt, net::SocketAddr};

use netlink_packet_core::{
    DecodeError, DefaultNla, ErrorContext, Nla, NlaBuffer, Parseable, emit_u16, emit_u16_be, emit_u32,
    parse_u8, parse_u16, parse_u16_be, parse_u32,
};

use super::{
    nla::{address_bytes, address_from_bytes, family_of, parse_nlas, raw_attrs},
    stats::{IpvsStatsAttr, Stats, Width, emit_stats, parse_stats, stats_buffer_len},
};

const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
const IPVS_DEST_ATTR_STATS: u16 = 10;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
const IPVS_DEST_ATTR_STATS64: u16 = 12;
const IPVS_DEST_ATTR_TUN_TYPE: u16 = 13;
const IPVS_DEST_ATTR_TUN_PORT: u16 = 14;
const IPVS_DEST_ATTR_TUN_FLAGS: u16 = 15;

/// `IP_VS_CONN_F_FWD_MASK`: the kernel keeps only these bits of the forwarding method.
const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;

/// One attribute of a destination, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum IpvsDestAttr {
    /// Raw `nf_inet_addr` bytes (4 or 16), read according to the address family.
    Address(Vec<u8>),
    /// Host-order value; big-endian on the wire.
    Port(u16),
    ForwardMethod(u32),
    Weight(u32),
    UpperThreshold(u32),
    LowerThreshold(u32),
    ActiveConns(u32),
    InactiveConns(u32),
    PersistentConns(u32),
    Stats(Vec<IpvsStatsAttr>),
    AddressFamily(u16),
    Stats64(Vec<IpvsStatsAttr>),
    TunnelType(u8),
    /// Host-order value; big-endian on the wire.
    TunnelPort(u16),
    TunnelFlags(u16),
    Other(DefaultNla),
}

impl Nla for IpvsDestAttr {
    fn value_len(&self) -> usize {
        use IpvsDestAttr::*;
        match self {
            Address(bytes) => bytes.len(),
            Port(_) | AddressFamily(_) | TunnelPort(_) | TunnelFlags(_) => 2,
            TunnelType(_) => 1,
            ForwardMethod(_) | Weight(_) | UpperThreshold(_) | LowerThreshold(_) | ActiveConns(_)
            | InactiveConns(_) | PersistentConns(_) => 4,
            Stats(attrs) => stats_buffer_len(attrs, Width::Legacy),
            Stats64(attrs) => stats_buffer_len(attrs, Width::Wide),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use IpvsDestAttr::*;
        match self {
            Address(_) => IPVS_DEST_ATTR_ADDR,
            Port(_) => IPVS_DEST_ATTR_PORT,
            ForwardMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            UpperThreshold(_) => IPVS_DEST_ATTR_U_THRESH,
            LowerThreshold(_) => IPVS_DEST_ATTR_L_THRESH,
            ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            InactiveConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            PersistentConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            Stats(_) => IPVS_DEST_ATTR_STATS,
            AddressFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            Stats64(_) => IPVS_DEST_ATTR_STATS64,
            TunnelType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            TunnelPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            TunnelFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use IpvsDestAttr::*;
        match self {
            Address(bytes) => buffer.copy_from_slice(bytes),
            Port(v) | TunnelPort(v) => emit_u16_be(buffer, *v).expect("2 bytes"),
            AddressFamily(v) | TunnelFlags(v) => emit_u16(buffer, *v).expect("2 bytes"),
            TunnelType(v) => buffer[0] = *v,
            ForwardMethod(v) | Weight(v) | UpperThreshold(v) | LowerThreshold(v) | ActiveConns(v)
            | InactiveConns(v) | PersistentConns(v) => emit_u32(buffer, *v).expect("4 bytes"),
            Stats(attrs) => emit_stats(attrs, Width::Legacy, buffer),
            Stats64(attrs) => emit_stats(attrs, Width::Wide, buffer),
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for IpvsDestAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        Self::from_raw(buf.kind(), buf.value())
    }
}

impl IpvsDestAttr {
    /// Decodes one attribute from its type and value.
    pub(crate) fn from_raw(kind: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        use IpvsDestAttr::*;
        let invalid = |what: &str| DecodeError::from(format!("invalid IPVS_DEST_ATTR_{what} value"));
        Ok(match kind {
            IPVS_DEST_ATTR_ADDR => Address(payload.to_vec()),
            IPVS_DEST_ATTR_PORT => Port(parse_u16_be(payload).map_err(|_| invalid("PORT"))?),
            IPVS_DEST_ATTR_FWD_METHOD => {
                ForwardMethod(parse_u32(payload).map_err(|_| invalid("FWD_METHOD"))?)
            }
            IPVS_DEST_ATTR_WEIGHT => Weight(parse_u32(payload).map_err(|_| invalid("WEIGHT"))?),
            IPVS_DEST_ATTR_U_THRESH => UpperThreshold(parse_u32(payload).map_err(|_| invalid("U_THRESH"))?),
            IPVS_DEST_ATTR_L_THRESH => LowerThreshold(parse_u32(payload).map_err(|_| invalid("L_THRESH"))?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => {
                ActiveConns(parse_u32(payload).map_err(|_| invalid("ACTIVE_CONNS"))?)
            }
            IPVS_DEST_ATTR_INACT_CONNS => {
                InactiveConns(parse_u32(payload).map_err(|_| invalid("INACT_CONNS"))?)
            }
            IPVS_DEST_ATTR_PERSIST_CONNS => {
                PersistentConns(parse_u32(payload).map_err(|_| invalid("PERSIST_CONNS"))?)
            }
            IPVS_DEST_ATTR_STATS => Stats(parse_stats(payload)?),
            IPVS_DEST_ATTR_ADDR_FAMILY => {
                AddressFamily(parse_u16(payload).map_err(|_| invalid("ADDR_FAMILY"))?)
            }
            IPVS_DEST_ATTR_STATS64 => Stats64(parse_stats(payload)?),
            IPVS_DEST_ATTR_TUN_TYPE => TunnelType(parse_u8(payload).map_err(|_| invalid("TUN_TYPE"))?),
            IPVS_DEST_ATTR_TUN_PORT => TunnelPort(parse_u16_be(payload).map_err(|_| invalid("TUN_PORT"))?),
            IPVS_DEST_ATTR_TUN_FLAGS => TunnelFlags(parse_u16(payload).map_err(|_| invalid("TUN_FLAGS"))?),
            kind => Other(DefaultNla::new(kind, payload.to_vec())),
        })
    }
}

pub(crate) fn parse_dest_attrs(payload: &[u8]) -> Result<Vec<IpvsDestAttr>, DecodeError> {
    parse_nlas(payload, "IPVS destination")
}

/// How packets reach a real server (`IP_VS_CONN_F_*` forwarding bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// NAT: the only method that can map ports.
    Masquerade,
    /// Delivered to a local socket.
    Local,
    /// IP-in-IP, GUE or GRE encapsulation (see [`Tunnel`]).
    Tunnel,
    /// Direct routing: the frame is re-addressed to the real server's MAC.
    DirectRoute,
    /// Cache bypass.
    Bypass,
    Other(u32),
}

impl ForwardMethod {
    pub(crate) fn number(self) -> u32 {
        match self {
            ForwardMethod::Masquerade => 0,
            ForwardMethod::Local => 1,
            ForwardMethod::Tunnel => 2,
            ForwardMethod::DirectRoute => 3,
            ForwardMethod::Bypass => 4,
            ForwardMethod::Other(n) => n,
        }
    }

    pub(crate) fn from_number(n: u32) -> Self {
        match n & IP_VS_CONN_F_FWD_MASK {
            0 => ForwardMethod::Masquerade,
            1 => ForwardMethod::Local,
            2 => ForwardMethod::Tunnel,
            3 => ForwardMethod::DirectRoute,
            4 => ForwardMethod::Bypass,
            n => ForwardMethod::Other(n),
        }
    }
}

/// Encapsulation of a [`ForwardMethod::Tunnel`] destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelType {
    Ipip,
    Gue,
    Gre,
    Other(u8),
}

impl TunnelType {
    pub(crate) fn number(self) -> u8 {
        match self {
            TunnelType::Ipip => 0,
            TunnelType::Gue => 1,
            TunnelType::Gre => 2,
            TunnelType::Other(n) => n,
        }
    }

    pub(crate) fn from_number(n: u8) -> Self {
        match n {
            0 => TunnelType::Ipip,
            1 => TunnelType::Gue,
            2 => TunnelType::Gre,
            n => TunnelType::Other(n),
        }
    }
}

/// Checksum option of GUE and GRE tunnels (`IP_VS_TUNNEL_ENCAP_FLAG_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TunnelChecksum {
    #[default]
    None,
    Checksum,
    /// Remote checksum offload (GUE only).
    RemoteChecksum,
    Other(u16),
}

impl TunnelChecksum {
    pub(crate) fn number(self) -> u16 {
        match self {
            TunnelChecksum::None => 0,
            TunnelChecksum::Checksum => 1,
            TunnelChecksum::RemoteChecksum => 2,
            TunnelChecksum::Other(n) => n,
        }
    }

    pub(crate) fn from_number(n: u16) -> Self {
        match n {
            0 => TunnelChecksum::None,
            1 => TunnelChecksum::Checksum,
            2 => TunnelChecksum::RemoteChecksum,
            n => TunnelChecksum::Other(n),
        }
    }
}

/// Tunnel parameters of a destination; the kernel reports them for every destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub kind: TunnelType,
    /// GUE destination UDP port (0 for IPIP and GRE).
    pub port: u16,
    pub checksum: TunnelChecksum,
}

impl Default for Tunnel {
    fn default() -> Self {
        Tunnel { kind: TunnelType::Ipip, port: 0, checksum: TunnelChecksum::None }
    }
}

/// A real server's configuration: everything `NEW_DEST`/`SET_DEST` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub address: SocketAddr,
    pub forward: ForwardMethod,
    /// 0 quiesces the server: no new connections, existing ones continue.
    pub weight: u32,
    /// Stop scheduling new connections above this many (0 = no limit).
    pub upper_threshold: u32,
    /// Resume scheduling below this many (must not exceed the upper threshold).
    pub lower_threshold: u32,
    pub tunnel: Tunnel,
}

impl Destination {
    pub fn new(address: SocketAddr, forward: ForwardMethod, weight: u32) -> Self {
        Destination {
            address,
            forward,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            tunnel: Tunnel::default(),
        }
    }

    /// Address and port: the identity `DEL_DEST` needs.
    pub(crate) fn identity_attrs(address: &SocketAddr) -> Vec<IpvsDestAttr> {
        vec![
            IpvsDestAttr::AddressFamily(family_of(&address.ip())),
            IpvsDestAttr::Address(address_bytes(&address.ip())),
            IpvsDestAttr::Port(address.port()),
        ]
    }

    /// The full specification; attribute order follows libipvs.
    pub(crate) fn to_attrs(self) -> Vec<IpvsDestAttr> {
        let mut attrs = Self::identity_attrs(&self.address);
        attrs.extend([
            IpvsDestAttr::ForwardMethod(self.forward.number()),
            IpvsDestAttr::Weight(self.weight),
            IpvsDestAttr::TunnelType(self.tunnel.kind.number()),
            IpvsDestAttr::TunnelPort(self.tunnel.port),
            IpvsDestAttr::TunnelFlags(self.tunnel.checksum.number()),
            IpvsDestAttr::UpperThreshold(self.upper_threshold),
            IpvsDestAttr::LowerThreshold(self.lower_threshold),
        ]);
        attrs
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address)
    }
}

/// A destination as dumped by the kernel: configuration plus connections and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationEntry {
    pub destination: Destination,
    pub active_connections: u32,
    pub inactive_connections: u32,
    /// Persistence templates pointing at this server.
    pub persistent_connections: u32,
    pub stats: Stats,
}

impl DestinationEntry {
    /// `service_family` is used when the kernel omits `ADDR_FAMILY` (before 3.18).
    #[cfg(test)]
    pub(crate) fn from_attrs(attrs: &[IpvsDestAttr], service_family: u16) -> Result<Self, DecodeError> {
        let mut entry = EntryBuilder::new(service_family);
        attrs.iter().cloned().for_each(|attr| entry.apply(attr));
        entry.finish()
    }

    /// Decodes an `IPVS_CMD_ATTR_DEST` nest straight from the wire. Dumps of large
    /// tables go through here: counters are read without collecting attribute lists.
    pub(crate) fn decode(nest: &[u8], service_family: u16) -> Result<Self, DecodeError> {
        let mut entry = EntryBuilder::new(service_family);
        // The legacy STATS nest precedes STATS64; read it only if STATS64 never comes.
        let mut legacy_stats = None;
        for attr in raw_attrs(nest) {
            match attr.context("invalid IPVS destination attributes")? {
                (IPVS_DEST_ATTR_STATS64, value) => entry.stats = Some(Stats::decode(value)?),
                (IPVS_DEST_ATTR_STATS, value) => legacy_stats = Some(value),
                // Kept as bytes until the address family is known.
                (IPVS_DEST_ATTR_ADDR, value) => entry.address = Some(value.to_vec()),
                (kind, value) => entry.apply(IpvsDestAttr::from_raw(kind, value)?),
            }
        }
        if let (None, Some(value)) = (&entry.stats, legacy_stats) {
            entry.stats = Some(Stats::decode(value)?);
        }
        entry.finish()
    }
}

/// Collects a destination's attributes; STATS64 wins over the legacy STATS.
struct EntryBuilder {
    family: u16,
    address: Option<Vec<u8>>,
    port: Option<u16>,
    destination: Destination,
    connections: (u32, u32, u32),
    stats: Option<Stats>,
    has_stats64: bool,
}

impl EntryBuilder {
    fn new(family: u16) -> Self {
        EntryBuilder {
            family,
            address: None,
            port: None,
            destination: Destination::new(SocketAddr::from(([0, 0, 0, 0], 0)), ForwardMethod::Masquerade, 0),
            connections: (0, 0, 0),
            stats: None,
            has_stats64: false,
        }
    }

    fn apply(&mut self, attr: IpvsDestAttr) {
        use IpvsDestAttr as A;
        let d = &mut self.destination;
        match attr {
            A::Address(bytes) => self.address = Some(bytes),
            A::Port(v) => self.port = Some(v),
            A::ForwardMethod(v) => d.forward = ForwardMethod::from_number(v),
            A::Weight(v) => d.weight = v,
            A::UpperThreshold(v) => d.upper_threshold = v,
            A::LowerThreshold(v) => d.lower_threshold = v,
            A::ActiveConns(v) => self.connections.0 = v,
            A::InactiveConns(v) => self.connections.1 = v,
            A::PersistentConns(v) => self.connections.2 = v,
            A::Stats(s) if !self.has_stats64 => self.stats = Some(Stats::from_attrs(&s)),
            A::Stats64(s) => {
                self.stats = Some(Stats::from_attrs(&s));
                self.has_stats64 = true;
            }
            A::AddressFamily(v) if v != 0 => self.family = v,
            A::TunnelType(v) => d.tunnel.kind = TunnelType::from_number(v),
            A::TunnelPort(v) => d.tunnel.port = v,
            A::TunnelFlags(v) => d.tunnel.checksum = TunnelChecksum::from_number(v),
            A::Stats(_) | A::AddressFamily(_) | A::Other(_) => {}
        }
    }

    fn finish(mut self) -> Result<DestinationEntry, DecodeError> {
        let ip = address_from_bytes(
            self.family,
            self.address.as_deref().ok_or("IPVS destination without address")?,
        )?;
        self.destination.address = SocketAddr::new(ip, self.port.ok_or("IPVS destination without port")?);
        Ok(DestinationEntry {
            destination: self.destination,
            active_connections: self.connections.0,
            inactive_connections: self.connections.1,
            persistent_connections: self.connections.2,
            stats: self.stats.unwrap_or_default(),
        })
    }
}
