//! The IPVS generic-netlink message: command + top-level attributes.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u32, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::{
    daemon::{IpvsDaemonAttr, parse_daemon_attrs},
    destination::{IpvsDestAttr, parse_dest_attrs},
    nla::raw_attrs,
    service::{IpvsServiceAttr, parse_service_attrs},
};

/// `IPVS_GENL_NAME`.
pub(crate) const IPVS_GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub(crate) const IPVS_GENL_VERSION: u8 = 1;

const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_SET_SERVICE: u8 = 2;
const IPVS_CMD_DEL_SERVICE: u8 = 3;
const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_SET_DEST: u8 = 6;
const IPVS_CMD_DEL_DEST: u8 = 7;
const IPVS_CMD_GET_DEST: u8 = 8;
const IPVS_CMD_NEW_DAEMON: u8 = 9;
const IPVS_CMD_DEL_DAEMON: u8 = 10;
const IPVS_CMD_GET_DAEMON: u8 = 11;
const IPVS_CMD_SET_CONFIG: u8 = 12;
const IPVS_CMD_GET_CONFIG: u8 = 13;
const IPVS_CMD_SET_INFO: u8 = 14;
const IPVS_CMD_GET_INFO: u8 = 15;
const IPVS_CMD_ZERO: u8 = 16;
const IPVS_CMD_FLUSH: u8 = 17;

const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_CMD_ATTR_DAEMON: u16 = 3;
const IPVS_CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const IPVS_CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const IPVS_CMD_ATTR_TIMEOUT_UDP: u16 = 6;

// Replies to GET_INFO reuse attribute numbers 1 and 2 with another meaning.
const IPVS_INFO_ATTR_VERSION: u16 = 1;
const IPVS_INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

/// IPVS commands. Replies to GET commands come back as the matching NEW/SET command
/// (a service dump is a series of `NewService` messages, `GetInfo` answers `SetInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    NewDaemon,
    DelDaemon,
    GetDaemon,
    SetConfig,
    GetConfig,
    SetInfo,
    GetInfo,
    Zero,
    Flush,
}

impl From<IpvsCmd> for u8 {
    fn from(cmd: IpvsCmd) -> u8 {
        use IpvsCmd::*;
        match cmd {
            NewService => IPVS_CMD_NEW_SERVICE,
            SetService => IPVS_CMD_SET_SERVICE,
            DelService => IPVS_CMD_DEL_SERVICE,
            GetService => IPVS_CMD_GET_SERVICE,
            NewDest => IPVS_CMD_NEW_DEST,
            SetDest => IPVS_CMD_SET_DEST,
            DelDest => IPVS_CMD_DEL_DEST,
            GetDest => IPVS_CMD_GET_DEST,
            NewDaemon => IPVS_CMD_NEW_DAEMON,
            DelDaemon => IPVS_CMD_DEL_DAEMON,
            GetDaemon => IPVS_CMD_GET_DAEMON,
            SetConfig => IPVS_CMD_SET_CONFIG,
            GetConfig => IPVS_CMD_GET_CONFIG,
            SetInfo => IPVS_CMD_SET_INFO,
            GetInfo => IPVS_CMD_GET_INFO,
            Zero => IPVS_CMD_ZERO,
            Flush => IPVS_CMD_FLUSH,
        }
    }
}

impl TryFrom<u8> for IpvsCmd {
    type Error = DecodeError;

    fn try_from(value: u8) -> Result<Self, DecodeError> {
        use IpvsCmd::*;
        Ok(match value {
            IPVS_CMD_NEW_SERVICE => NewService,
            IPVS_CMD_SET_SERVICE => SetService,
            IPVS_CMD_DEL_SERVICE => DelService,
            IPVS_CMD_GET_SERVICE => GetService,
            IPVS_CMD_NEW_DEST => NewDest,
            IPVS_CMD_SET_DEST => SetDest,
            IPVS_CMD_DEL_DEST => DelDest,
            IPVS_CMD_GET_DEST => GetDest,
            IPVS_CMD_NEW_DAEMON => NewDaemon,
            IPVS_CMD_DEL_DAEMON => DelDaemon,
            IPVS_CMD_GET_DAEMON => GetDaemon,
            IPVS_CMD_SET_CONFIG => SetConfig,
            IPVS_CMD_GET_CONFIG => GetConfig,
            IPVS_CMD_SET_INFO => SetInfo,
            IPVS_CMD_GET_INFO => GetInfo,
            IPVS_CMD_ZERO => Zero,
            IPVS_CMD_FLUSH => Flush,
            cmd => return Err(DecodeError::from(format!("unknown IPVS command {cmd}"))),
        })
    }
}

impl IpvsCmd {
    fn carries_info(self) -> bool {
        matches!(self, IpvsCmd::SetInfo | IpvsCmd::GetInfo)
    }
}

/// A top-level attribute (`IPVS_CMD_ATTR_*`, or `IPVS_INFO_ATTR_*` in info messages).
///
/// Nested attributes are emitted without `NLA_F_NESTED`, as the kernel's own replies
/// are; the kernel's liberal parser accepts either.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum IpvsAttr {
    Service(Vec<IpvsServiceAttr>),
    Destination(Vec<IpvsDestAttr>),
    Daemon(Vec<IpvsDaemonAttr>),
    /// Seconds; 0 keeps the current value.
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
    /// `IPVS_INFO_ATTR_VERSION`, e.g. 0x010201 for 1.2.1.
    Version(u32),
    /// `IPVS_INFO_ATTR_CONN_TAB_SIZE`: buckets of the connection hash table.
    ConnectionTableSize(u32),
    Other(DefaultNla),
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        use IpvsAttr::*;
        match self {
            Service(attrs) => attrs.as_slice().buffer_len(),
            Destination(attrs) => attrs.as_slice().buffer_len(),
            Daemon(attrs) => attrs.as_slice().buffer_len(),
            TimeoutTcp(_) | TimeoutTcpFin(_) | TimeoutUdp(_) | Version(_) | ConnectionTableSize(_) => 4,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use IpvsAttr::*;
        match self {
            Service(_) => IPVS_CMD_ATTR_SERVICE,
            Destination(_) => IPVS_CMD_ATTR_DEST,
            Daemon(_) => IPVS_CMD_ATTR_DAEMON,
            TimeoutTcp(_) => IPVS_CMD_ATTR_TIMEOUT_TCP,
            TimeoutTcpFin(_) => IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
            TimeoutUdp(_) => IPVS_CMD_ATTR_TIMEOUT_UDP,
            Version(_) => IPVS_INFO_ATTR_VERSION,
            ConnectionTableSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use IpvsAttr::*;
        match self {
            Service(attrs) => attrs.as_slice().emit(buffer),
            Destination(attrs) => attrs.as_slice().emit(buffer),
            Daemon(attrs) => attrs.as_slice().emit(buffer),
            TimeoutTcp(v) | TimeoutTcpFin(v) | TimeoutUdp(v) | Version(v) | ConnectionTableSize(v) => {
                emit_u32(buffer, *v).expect("4 bytes")
            }
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> ParseableParametrized<NlaBuffer<&T>, IpvsCmd> for IpvsAttr {
    fn parse_with_param(buf: &NlaBuffer<&T>, cmd: IpvsCmd) -> Result<Self, DecodeError> {
        use IpvsAttr::*;
        let payload = buf.value();
        let u32_value = |what: &str| {
            parse_u32(payload).map_err(|_| DecodeError::from(format!("invalid IPVS {what} value")))
        };
        Ok(match (cmd.carries_info(), buf.kind()) {
            (true, IPVS_INFO_ATTR_VERSION) => Version(u32_value("INFO_ATTR_VERSION")?),
            (true, IPVS_INFO_ATTR_CONN_TAB_SIZE) => {
                ConnectionTableSize(u32_value("INFO_ATTR_CONN_TAB_SIZE")?)
            }
            (true, _) => Other(DefaultNla::parse(buf)?),
            (false, IPVS_CMD_ATTR_SERVICE) => Service(parse_service_attrs(payload)?),
            (false, IPVS_CMD_ATTR_DEST) => Destination(parse_dest_attrs(payload)?),
            (false, IPVS_CMD_ATTR_DAEMON) => Daemon(parse_daemon_attrs(payload)?),
            (false, IPVS_CMD_ATTR_TIMEOUT_TCP) => TimeoutTcp(u32_value("CMD_ATTR_TIMEOUT_TCP")?),
            (false, IPVS_CMD_ATTR_TIMEOUT_TCP_FIN) => TimeoutTcpFin(u32_value("CMD_ATTR_TIMEOUT_TCP_FIN")?),
            (false, IPVS_CMD_ATTR_TIMEOUT_UDP) => TimeoutUdp(u32_value("CMD_ATTR_TIMEOUT_UDP")?),
            (false, _) => Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The payload of one IPVS generic-netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpvsMessage {
    pub(crate) cmd: IpvsCmd,
    pub(crate) attrs: Vec<IpvsAttr>,
}

impl IpvsMessage {
    pub(crate) fn new(cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> Self {
        IpvsMessage { cmd, attrs }
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::try_from(header.cmd)?;
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| IpvsAttr::parse_with_param(&nla, cmd)))
            .collect::<Result<Vec<_>, _>>()
            .context("invalid IPVS message attributes")?;
        Ok(IpvsMessage { cmd, attrs })
    }
}

/// Top-level nests that dumps carry, one object per message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Nest {
    Service,
    Destination,
}

/// `GENL_HDRLEN`: the generic-netlink header before the attributes.
pub(crate) const GENL_HDRLEN: usize = 4;

/// The undecoded payloads of one kind of top-level nest in a generic-netlink
/// payload (header included), for decoders that read them in place.
pub(crate) fn nests(genl_payload: &[u8], nest: Nest) -> impl Iterator<Item = Result<&[u8], DecodeError>> {
    let kind = match nest {
        Nest::Service => IPVS_CMD_ATTR_SERVICE,
        Nest::Destination => IPVS_CMD_ATTR_DEST,
    };
    let body = genl_payload.get(GENL_HDRLEN..).unwrap_or_default();
    raw_attrs(body).filter_map(move |attr| match attr {
        Ok((found, value)) if found == kind => Some(Ok(value)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}
