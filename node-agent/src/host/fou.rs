//! GUE's receiving end on a real server: a UDP port that the kernel's `fou`
//! module opens and whose packets (GUE header, then the inner IP packet) it
//! hands to the IPIP devices, as `ip fou add port PORT gue` does. Spoken over
//! the module's generic-netlink family `fou`.
//!
//! The kernel does not load `fou` for a generic-netlink request (the module has
//! no family alias), and the agent runs no `modprobe`: where the family is
//! missing the error says that the host must load the module.

use std::io;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use nix::errno::Errno;

use super::{
    changes::{GuePort, HostChanges},
    error::{Cause, HostError, Result},
};

/// `FOU_GENL_NAME`, `FOU_GENL_VERSION`.
const FOU_GENL_NAME: &str = "fou";
const FOU_GENL_VERSION: u8 = 1;
const FOU_CMD_ADD: u8 = 1;
const FOU_CMD_DEL: u8 = 2;
const FOU_CMD_GET: u8 = 3;
const FOU_ATTR_PORT: u16 = 1;
const FOU_ATTR_AF: u16 = 2;
const FOU_ATTR_TYPE: u16 = 4;
const FOU_ENCAP_GUE: u8 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `NLMSG_ERROR`, which carries acknowledgements too (error 0).
const NLMSG_ERROR: u16 = 2;

/// An attribute of a fou request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FouAttr {
    /// The UDP port, in network byte order on the wire.
    Port(u16),
    /// The address family of the port's socket.
    Family(u8),
    /// The encapsulation: direct (the payload is the inner packet) or GUE.
    Encapsulation(u8),
    Other(DefaultNla),
}

impl Nla for FouAttr {
    fn value_len(&self) -> usize {
        match self {
            FouAttr::Port(_) => 2,
            FouAttr::Family(_) | FouAttr::Encapsulation(_) => 1,
            FouAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            FouAttr::Port(_) => FOU_ATTR_PORT,
            FouAttr::Family(_) => FOU_ATTR_AF,
            FouAttr::Encapsulation(_) => FOU_ATTR_TYPE,
            FouAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            FouAttr::Port(port) => buffer[..2].copy_from_slice(&port.to_be_bytes()),
            FouAttr::Family(value) | FouAttr::Encapsulation(value) => buffer[0] = *value,
            FouAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for FouAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        let byte = || value.first().copied().ok_or_else(|| DecodeError::from("empty fou attribute"));
        Ok(match buf.kind() {
            FOU_ATTR_PORT => match value {
                [high, low, ..] => FouAttr::Port(u16::from_be_bytes([*high, *low])),
                _ => return Err("short FOU_ATTR_PORT".into()),
            },
            FOU_ATTR_AF => FouAttr::Family(byte()?),
            FOU_ATTR_TYPE => FouAttr::Encapsulation(byte()?),
            _ => FouAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One fou generic-netlink message: command and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FouMessage {
    cmd: u8,
    attrs: Vec<FouAttr>,
}

impl FouMessage {
    /// The request for `port`: its number, family and GUE (the GUE header names
    /// the inner protocol, so no protocol is given).
    fn for_port(cmd: u8, port: &GuePort) -> Self {
        let family = if port.ipv6 { AF_INET6 } else { AF_INET };
        let attrs =
            vec![FouAttr::Port(port.port), FouAttr::Family(family), FouAttr::Encapsulation(FOU_ENCAP_GUE)];
        FouMessage { cmd, attrs }
    }
}

impl GenlFamily for FouMessage {
    fn family_name() -> &'static str {
        FOU_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        FOU_GENL_VERSION
    }
}

impl Emitable for FouMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for FouMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf).map(|nla| nla.and_then(|nla| FouAttr::parse(&nla)));
        Ok(FouMessage { cmd: header.cmd, attrs: attrs.collect::<Result<_, _>>()? })
    }
}

/// Opens the GUE port `port` unless it is open already (then it is someone
/// else's, or the agent's from before, and nothing new is recorded). A port the
/// agent opened is recorded, so that undo closes it and nothing else.
pub(super) fn open_gue_port(changes: &mut HostChanges, port: GuePort) -> Result<()> {
    let action = || format!("opening GUE port {port}");
    match request(FouMessage::for_port(FOU_CMD_ADD, &port)) {
        Ok(()) => {
            changes.gue_ports.insert(port);
            Ok(())
        }
        // The port is bound: fine if fou holds it; any other socket would
        // swallow the VIP's packets.
        Err(Failure::Refused(Errno::EEXIST | Errno::EALREADY | Errno::EADDRINUSE)) => {
            match request(FouMessage::for_port(FOU_CMD_GET, &port)) {
                Ok(()) => Ok(()),
                Err(Failure::Refused(Errno::ESRCH | Errno::ENOENT)) => Err(HostError::new(
                    action(),
                    Cause::Unsupported(format!("UDP port {} is taken by another socket", port.port)),
                )),
                Err(failure) => Err(failure.into_error(action())),
            }
        }
        Err(failure) => Err(failure.into_error(action())),
    }
}

/// Whether the GUE port `port` is open (a dry run's look; nothing changes).
/// Without the fou module, the error says that the host must load it.
pub(super) fn gue_port_open(port: GuePort) -> Result<bool> {
    match request(FouMessage::for_port(FOU_CMD_GET, &port)) {
        Ok(()) => Ok(true),
        Err(Failure::Refused(Errno::ESRCH | Errno::ENOENT)) => Ok(false),
        Err(failure) => Err(failure.into_error(format!("looking up GUE port {port}"))),
    }
}

/// Closes a GUE port the agent opened, and forgets it.
pub(super) fn close_gue_port(changes: &mut HostChanges, port: GuePort) -> Result<()> {
    if changes.gue_ports.contains(&port) {
        match request(FouMessage::for_port(FOU_CMD_DEL, &port)) {
            // Gone already, or the module with it.
            Ok(()) | Err(Failure::Refused(Errno::ENOENT) | Failure::NoFamily) => {}
            Err(failure) => return Err(failure.into_error(format!("closing GUE port {port}"))),
        }
    }
    changes.gue_ports.remove(&port);
    Ok(())
}

/// Why a fou request failed.
enum Failure {
    NoFamily,
    Refused(Errno),
    Io(io::Error),
}

impl Failure {
    fn into_error(self, action: String) -> HostError {
        match self {
            Failure::NoFamily => HostError::new(
                action,
                Cause::Unsupported(
                    "the kernel's fou module is not loaded (the kernel does not load it on request): \
                     load it on the host, e.g. with /etc/modules-load.d"
                        .into(),
                ),
            ),
            Failure::Refused(errno) => HostError::refused(action, errno),
            Failure::Io(e) => HostError::io(action, e),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// Sends `message` to the fou family and waits for its acknowledgement.
fn request(message: FouMessage) -> std::result::Result<(), Failure> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let lookup =
        GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(FOU_GENL_NAME.into())] };
    let replies =
        exchange(&mut socket, GenlMessage::from_payload(lookup)).map_err(|failure| match failure {
            Failure::Refused(Errno::ENOENT) => Failure::NoFamily,
            other => other,
        })?;
    let family_id = replies
        .iter()
        .filter_map(|(kind, payload)| GenlMessage::<GenlCtrl>::parse_with_param(payload, *kind).ok())
        .flat_map(|genl| genl.payload.nlas)
        .find_map(|nla| match nla {
            GenlCtrlAttrs::FamilyId(id) => Some(id),
            _ => None,
        })
        .ok_or(Failure::NoFamily)?;
    let mut genl = GenlMessage::from_payload(message);
    genl.set_resolved_family_id(family_id);
    exchange(&mut socket, genl).map(drop)
}

/// Sends one request asking for an acknowledgement; returns the payloads of its
/// data replies (message type and payload, before the acknowledgement), or
/// the kernel's refusal.
fn exchange<F>(socket: &mut Socket, genl: GenlMessage<F>) -> std::result::Result<Vec<(u16, Vec<u8>)>, Failure>
where
    F: GenlFamily + Emitable + std::fmt::Debug,
{
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(genl));
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    message.header.sequence_number = 1;
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut data = Vec::new();
    let mut datagram = Vec::with_capacity(16 << 10);
    loop {
        datagram.clear();
        socket.recv(&mut datagram, 0)?;
        let mut offset = 0;
        while offset < datagram.len() {
            let buffer = NetlinkBuffer::new_checked(&datagram[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            offset += (buffer.length() as usize).div_ceil(4) * 4;
            let payload = buffer.payload();
            if buffer.message_type() == NLMSG_ERROR {
                let code = payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                return if code == 0 { Ok(data) } else { Err(Failure::Refused(Errno::from_raw(-code))) };
            }
            data.push((buffer.message_type(), payload.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gue_port_request_is_what_ip_fou_sends() {
        let port = GuePort { port: 5555, ipv6: false };
        let mut genl = GenlMessage::from_payload(FouMessage::for_port(FOU_CMD_ADD, &port));
        genl.set_resolved_family_id(30);
        let mut bytes = vec![0; genl.buffer_len()];
        genl.emit(&mut bytes);
        // genl header (cmd 1, version 1), then port 5555 big-endian, AF_INET, GUE.
        assert_eq!(
            bytes,
            [
                1, 1, 0, 0, //
                6, 0, 1, 0, 0x15, 0xb3, 0, 0, //
                5, 0, 2, 0, 2, 0, 0, 0, //
                5, 0, 4, 0, 2, 0, 0, 0,
            ]
        );
        let parsed = GenlMessage::<FouMessage>::parse_with_param(&bytes, 30).unwrap();
        assert_eq!(parsed.payload, FouMessage::for_port(FOU_CMD_ADD, &port));
        let v6 = FouMessage::for_port(FOU_CMD_DEL, &GuePort { port: 6080, ipv6: true });
        assert_eq!(v6.attrs[1], FouAttr::Family(AF_INET6));
    }
}
