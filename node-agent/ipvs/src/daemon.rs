//! The connection-synchronisation daemon (`IPVS_DAEMON_ATTR_*`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Nla, NlaBuffer, Parseable, emit_u16, emit_u32, parse_string, parse_u8,
    parse_u16, parse_u32,
};

use super::nla::{emit_c_string, parse_nlas};

const IPVS_DAEMON_ATTR_STATE: u16 = 1;
const IPVS_DAEMON_ATTR_MCAST_IFN: u16 = 2;
const IPVS_DAEMON_ATTR_SYNC_ID: u16 = 3;
const IPVS_DAEMON_ATTR_SYNC_MAXLEN: u16 = 4;
const IPVS_DAEMON_ATTR_MCAST_GROUP: u16 = 5;
const IPVS_DAEMON_ATTR_MCAST_GROUP6: u16 = 6;
const IPVS_DAEMON_ATTR_MCAST_PORT: u16 = 7;
const IPVS_DAEMON_ATTR_MCAST_TTL: u16 = 8;

const IP_VS_STATE_MASTER: u32 = 1;
const IP_VS_STATE_BACKUP: u32 = 2;

/// One attribute of a sync daemon, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum IpvsDaemonAttr {
    State(u32),
    Interface(String),
    SyncId(u32),
    MaxLength(u16),
    Group(Ipv4Addr),
    Group6(Ipv6Addr),
    /// Host order (unlike service and destination ports).
    Port(u16),
    Ttl(u8),
    Other(DefaultNla),
}

impl Nla for IpvsDaemonAttr {
    fn value_len(&self) -> usize {
        use IpvsDaemonAttr::*;
        match self {
            State(_) | SyncId(_) | Group(_) => 4,
            Interface(s) => s.len() + 1,
            MaxLength(_) | Port(_) => 2,
            Group6(_) => 16,
            Ttl(_) => 1,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use IpvsDaemonAttr::*;
        match self {
            State(_) => IPVS_DAEMON_ATTR_STATE,
            Interface(_) => IPVS_DAEMON_ATTR_MCAST_IFN,
            SyncId(_) => IPVS_DAEMON_ATTR_SYNC_ID,
            MaxLength(_) => IPVS_DAEMON_ATTR_SYNC_MAXLEN,
            Group(_) => IPVS_DAEMON_ATTR_MCAST_GROUP,
            Group6(_) => IPVS_DAEMON_ATTR_MCAST_GROUP6,
            Port(_) => IPVS_DAEMON_ATTR_MCAST_PORT,
            Ttl(_) => IPVS_DAEMON_ATTR_MCAST_TTL,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use IpvsDaemonAttr::*;
        match self {
            State(v) | SyncId(v) => emit_u32(buffer, *v).expect("4 bytes"),
            Interface(s) => emit_c_string(buffer, s),
            MaxLength(v) | Port(v) => emit_u16(buffer, *v).expect("2 bytes"),
            Group(addr) => buffer.copy_from_slice(&addr.octets()),
            Group6(addr) => buffer.copy_from_slice(&addr.octets()),
            Ttl(v) => buffer[0] = *v,
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for IpvsDaemonAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        use IpvsDaemonAttr::*;
        let payload = buf.value();
        let invalid = |what: &str| DecodeError::from(format!("invalid IPVS_DAEMON_ATTR_{what} value"));
        Ok(match buf.kind() {
            IPVS_DAEMON_ATTR_STATE => State(parse_u32(payload).map_err(|_| invalid("STATE"))?),
            IPVS_DAEMON_ATTR_MCAST_IFN => Interface(parse_string(payload).map_err(|_| invalid("MCAST_IFN"))?),
            IPVS_DAEMON_ATTR_SYNC_ID => SyncId(parse_u32(payload).map_err(|_| invalid("SYNC_ID"))?),
            IPVS_DAEMON_ATTR_SYNC_MAXLEN => {
                MaxLength(parse_u16(payload).map_err(|_| invalid("SYNC_MAXLEN"))?)
            }
            IPVS_DAEMON_ATTR_MCAST_GROUP => {
                Group(Ipv4Addr::from(<[u8; 4]>::try_from(payload).map_err(|_| invalid("MCAST_GROUP"))?))
            }
            IPVS_DAEMON_ATTR_MCAST_GROUP6 => {
                Group6(Ipv6Addr::from(<[u8; 16]>::try_from(payload).map_err(|_| invalid("MCAST_GROUP6"))?))
            }
            IPVS_DAEMON_ATTR_MCAST_PORT => Port(parse_u16(payload).map_err(|_| invalid("MCAST_PORT"))?),
            IPVS_DAEMON_ATTR_MCAST_TTL => Ttl(parse_u8(payload).map_err(|_| invalid("MCAST_TTL"))?),
            _ => Other(DefaultNla::parse(buf)?),
        })
    }
}

pub(crate) fn parse_daemon_attrs(payload: &[u8]) -> Result<Vec<IpvsDaemonAttr>, DecodeError> {
    parse_nlas(payload, "IPVS sync daemon")
}

/// Role of a sync daemon: the master multicasts connection state, backups learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncState {
    Master,
    Backup,
}

impl SyncState {
    pub(crate) fn number(self) -> u32 {
        match self {
            SyncState::Master => IP_VS_STATE_MASTER,
            SyncState::Backup => IP_VS_STATE_BACKUP,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            SyncState::Master => "master",
            SyncState::Backup => "backup",
        }
    }
}

/// A sync daemon's configuration. `None` fields take the kernel's defaults
/// (group 224.0.0.81, port 8848, TTL 1, maximum length from the interface MTU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDaemon {
    pub state: SyncState,
    pub interface: String,
    /// 0..=255; 0 accepts messages of every sync id.
    pub sync_id: u32,
    pub max_length: Option<u16>,
    pub group: Option<IpAddr>,
    pub port: Option<u16>,
    pub ttl: Option<u8>,
}

impl SyncDaemon {
    pub fn new(state: SyncState, interface: impl Into<String>, sync_id: u32) -> Self {
        SyncDaemon {
            state,
            interface: interface.into(),
            sync_id,
            max_length: None,
            group: None,
            port: None,
            ttl: None,
        }
    }

    pub(crate) fn to_attrs(&self) -> Vec<IpvsDaemonAttr> {
        let mut attrs = vec![
            IpvsDaemonAttr::State(self.state.number()),
            IpvsDaemonAttr::Interface(self.interface.clone()),
            IpvsDaemonAttr::SyncId(self.sync_id),
        ];
        attrs.extend(self.max_length.map(IpvsDaemonAttr::MaxLength));
        attrs.extend(self.group.map(|group| match group {
            IpAddr::V4(v4) => IpvsDaemonAttr::Group(v4),
            IpAddr::V6(v6) => IpvsDaemonAttr::Group6(v6),
        }));
        attrs.extend(self.port.map(IpvsDaemonAttr::Port));
        attrs.extend(self.ttl.map(IpvsDaemonAttr::Ttl));
        attrs
    }

    /// Reads a `GET_DAEMON` reply; `None` for a slot with no daemon running.
    pub(crate) fn from_attrs(attrs: &[IpvsDaemonAttr]) -> Option<Self> {
        let mut daemon = SyncDaemon::new(SyncState::Master, "", 0);
        let mut state = None;
        for attr in attrs {
            use IpvsDaemonAttr as A;
            match attr {
                A::State(IP_VS_STATE_MASTER) => state = Some(SyncState::Master),
                A::State(IP_VS_STATE_BACKUP) => state = Some(SyncState::Backup),
                A::Interface(s) => daemon.interface = s.clone(),
                A::SyncId(v) => daemon.sync_id = *v,
                A::MaxLength(v) => daemon.max_length = Some(*v),
                A::Group(v) if !v.is_unspecified() => daemon.group = Some((*v).into()),
                A::Group6(v) if !v.is_unspecified() => daemon.group = Some((*v).into()),
                A::Port(v) => daemon.port = Some(*v),
                A::Ttl(v) => daemon.ttl = Some(*v),
                _ => {}
            }
        }
        daemon.state = state?;
        Some(daemon)
    }
}
