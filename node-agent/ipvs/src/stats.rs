//! Traffic counters (`IPVS_STATS_ATTR_*`), nested in services and destinations.
//!
//! The kernel sends two containers with the same attribute numbers: the legacy
//! `*_ATTR_STATS` (u32 counters except the byte counts) and `*_ATTR_STATS64`
//! (all u64). [`IpvsStatsAttr`] holds every counter as u64; [`Width`] says how a
//! container lays them out on the wire.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, Parseable, emit_u32, emit_u64,
};

use super::nla::{parse_nlas, raw_attrs};

const IPVS_STATS_ATTR_CONNS: u16 = 1;
const IPVS_STATS_ATTR_INPKTS: u16 = 2;
const IPVS_STATS_ATTR_OUTPKTS: u16 = 3;
const IPVS_STATS_ATTR_INBYTES: u16 = 4;
const IPVS_STATS_ATTR_OUTBYTES: u16 = 5;
const IPVS_STATS_ATTR_CPS: u16 = 6;
const IPVS_STATS_ATTR_INPPS: u16 = 7;
const IPVS_STATS_ATTR_OUTPPS: u16 = 8;
const IPVS_STATS_ATTR_INBPS: u16 = 9;
const IPVS_STATS_ATTR_OUTBPS: u16 = 10;
const IPVS_STATS_ATTR_PAD: u16 = 11;

/// One counter of a stats container.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum IpvsStatsAttr {
    Conns(u64),
    InPkts(u64),
    OutPkts(u64),
    InBytes(u64),
    OutBytes(u64),
    Cps(u64),
    InPps(u64),
    OutPps(u64),
    InBps(u64),
    OutBps(u64),
    /// Alignment padding emitted by `nla_put_u64_64bit`.
    Pad(Vec<u8>),
    Other(DefaultNla),
}

/// Wire layout of a stats container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// `IPVS_*_ATTR_STATS`: u32 counters, u64 byte counts.
    Legacy,
    /// `IPVS_*_ATTR_STATS64`: every counter u64.
    Wide,
}

/// A counter together with the layout of its container, so it can be emitted.
pub(crate) struct StatsNla<'a>(pub(crate) &'a IpvsStatsAttr, pub(crate) Width);

impl IpvsStatsAttr {
    fn kind(&self) -> u16 {
        use IpvsStatsAttr::*;
        match self {
            Conns(_) => IPVS_STATS_ATTR_CONNS,
            InPkts(_) => IPVS_STATS_ATTR_INPKTS,
            OutPkts(_) => IPVS_STATS_ATTR_OUTPKTS,
            InBytes(_) => IPVS_STATS_ATTR_INBYTES,
            OutBytes(_) => IPVS_STATS_ATTR_OUTBYTES,
            Cps(_) => IPVS_STATS_ATTR_CPS,
            InPps(_) => IPVS_STATS_ATTR_INPPS,
            OutPps(_) => IPVS_STATS_ATTR_OUTPPS,
            InBps(_) => IPVS_STATS_ATTR_INBPS,
            OutBps(_) => IPVS_STATS_ATTR_OUTBPS,
            Pad(_) => IPVS_STATS_ATTR_PAD,
            Other(nla) => nla.kind(),
        }
    }

    fn counter(&self) -> Option<u64> {
        use IpvsStatsAttr::*;
        match self {
            Conns(v) | InPkts(v) | OutPkts(v) | InBytes(v) | OutBytes(v) | Cps(v) | InPps(v) | OutPps(v)
            | InBps(v) | OutBps(v) => Some(*v),
            Pad(_) | Other(_) => None,
        }
    }

    fn is_u64_in_legacy(&self) -> bool {
        matches!(self, IpvsStatsAttr::InBytes(_) | IpvsStatsAttr::OutBytes(_))
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for IpvsStatsAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        Self::from_raw(buf.kind(), buf.value())
    }
}

impl IpvsStatsAttr {
    /// Decodes one counter. The width is taken from the attribute length, so both
    /// containers (and any future widening) parse.
    pub(crate) fn from_raw(kind: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        use IpvsStatsAttr::*;
        let counter = || -> Result<u64, DecodeError> {
            match payload.len() {
                4 => Ok(u64::from(u32::from_ne_bytes(payload.try_into().expect("4 bytes")))),
                8 => Ok(u64::from_ne_bytes(payload.try_into().expect("8 bytes"))),
                n => Err(DecodeError::from(format!("invalid IPVS_STATS_ATTR length {n}"))),
            }
        };
        Ok(match kind {
            IPVS_STATS_ATTR_CONNS => Conns(counter()?),
            IPVS_STATS_ATTR_INPKTS => InPkts(counter()?),
            IPVS_STATS_ATTR_OUTPKTS => OutPkts(counter()?),
            IPVS_STATS_ATTR_INBYTES => InBytes(counter()?),
            IPVS_STATS_ATTR_OUTBYTES => OutBytes(counter()?),
            IPVS_STATS_ATTR_CPS => Cps(counter()?),
            IPVS_STATS_ATTR_INPPS => InPps(counter()?),
            IPVS_STATS_ATTR_OUTPPS => OutPps(counter()?),
            IPVS_STATS_ATTR_INBPS => InBps(counter()?),
            IPVS_STATS_ATTR_OUTBPS => OutBps(counter()?),
            IPVS_STATS_ATTR_PAD => Pad(payload.to_vec()),
            kind => Other(DefaultNla::new(kind, payload.to_vec())),
        })
    }
}

impl Nla for StatsNla<'_> {
    fn value_len(&self) -> usize {
        match (self.0, self.1) {
            (IpvsStatsAttr::Pad(bytes), _) => bytes.len(),
            (IpvsStatsAttr::Other(nla), _) => nla.value_len(),
            (attr, Width::Legacy) if !attr.is_u64_in_legacy() => 4,
            _ => 8,
        }
    }

    fn kind(&self) -> u16 {
        self.0.kind()
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self.0 {
            IpvsStatsAttr::Pad(bytes) => buffer.copy_from_slice(bytes),
            IpvsStatsAttr::Other(nla) => nla.emit_value(buffer),
            attr => {
                let value = attr.counter().expect("a counter");
                if self.value_len() == 4 {
                    // Legacy u32 counters are truncated by the kernel the same way.
                    emit_u32(buffer, value as u32).expect("4-byte buffer");
                } else {
                    emit_u64(buffer, value).expect("8-byte buffer");
                }
            }
        }
    }
}

pub(crate) fn stats_buffer_len(attrs: &[IpvsStatsAttr], width: Width) -> usize {
    attrs.iter().map(|a| StatsNla(a, width).buffer_len()).sum()
}

/// Emits a stats container's counters in the given layout.
pub(crate) fn emit_stats(attrs: &[IpvsStatsAttr], width: Width, buffer: &mut [u8]) {
    let mut offset = 0;
    for attr in attrs {
        let nla = StatsNla(attr, width);
        let len = nla.buffer_len();
        nla.emit(&mut buffer[offset..offset + len]);
        offset += len;
    }
}

pub(crate) fn parse_stats(payload: &[u8]) -> Result<Vec<IpvsStatsAttr>, DecodeError> {
    parse_nlas(payload, "IPVS stats")
}

/// Counters of one service or destination, relative to the last zeroing.
///
/// `*_rate` fields are the kernel estimator's per-second rates (updated every 2 s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_rate: u64,
    pub packets_in_rate: u64,
    pub packets_out_rate: u64,
    pub bytes_in_rate: u64,
    pub bytes_out_rate: u64,
}

impl Stats {
    pub(crate) fn from_attrs(attrs: &[IpvsStatsAttr]) -> Self {
        let mut stats = Stats::default();
        attrs.iter().for_each(|attr| stats.apply(attr));
        stats
    }

    /// Reads a stats nest without collecting its attributes.
    pub(crate) fn decode(nest: &[u8]) -> Result<Self, DecodeError> {
        let mut stats = Stats::default();
        for attr in raw_attrs(nest) {
            let (kind, value) = attr.context("invalid IPVS stats attributes")?;
            stats.apply(&IpvsStatsAttr::from_raw(kind, value)?);
        }
        Ok(stats)
    }

    fn apply(&mut self, attr: &IpvsStatsAttr) {
        use IpvsStatsAttr::*;
        match *attr {
            Conns(v) => self.connections = v,
            InPkts(v) => self.packets_in = v,
            OutPkts(v) => self.packets_out = v,
            InBytes(v) => self.bytes_in = v,
            OutBytes(v) => self.bytes_out = v,
            Cps(v) => self.connections_rate = v,
            InPps(v) => self.packets_in_rate = v,
            OutPps(v) => self.packets_out_rate = v,
            InBps(v) => self.bytes_in_rate = v,
            OutBps(v) => self.bytes_out_rate = v,
            Pad(_) | Other(_) => {}
        }
    }
}
