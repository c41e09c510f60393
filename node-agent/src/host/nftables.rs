//! The few nf_tables messages the agent sends (`NETLINK_NETFILTER`), written on
//! netlink-packet-core: tables, chains with a hook, constant anonymous sets and
//! rules of expressions. They go to the kernel as one batch, which nf_tables
//! applies as one atomic transaction: all of it or none of it.
//!
//! The kernel loads nf_tables and each expression's module (`nft-expr-masq`,
//! `nft-chain-2-nat`, ...) itself on first use, replaying the batch, so nothing
//! needs `modprobe` or `nft`. No pure-Rust crate with a licence that fits
//! Apache-2.0 writes these messages (rustables is GPL-3.0; the nftables crate
//! runs the `nft` program).
//!
//! Constants are those of the kernel's `include/uapi/linux/netfilter/nf_tables.h`
//! and `nfnetlink.h`.

use std::io;

use netlink_packet_core::{
    Emitable, NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    Nla,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::{
    errno::Errno,
    sys::socket::{setsockopt, sockopt},
};

use super::error::HostError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const MSG_DONTWAIT: i32 = 0x40;

/// `NFPROTO_INET`: a table for IPv4 and IPv6 together.
pub(crate) const FAMILY_INET: u8 = 1;
/// `NFPROTO_IPV4`, `NFPROTO_IPV6`, as `meta nfproto` reads them.
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_IPV6: u8 = 10;

/// `NFT_MSG_GETTABLE`, a question outside any batch.
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;

/// `NFT_MSG_*` message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    NewTable = 0,
    DelTable = 2,
    NewChain = 3,
    NewRule = 6,
    NewSet = 9,
    NewSetElement = 12,
}

/// An attribute: a value, or attributes nested in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    kind: u16,
    value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Bytes(Vec<u8>),
    Nested(Vec<Attr>),
}

impl Attr {
    pub(crate) fn bytes(kind: u16, bytes: &[u8]) -> Self {
        Attr { kind, value: Value::Bytes(bytes.to_vec()) }
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING` policies read names.
    pub(crate) fn string(kind: u16, text: &str) -> Self {
        Attr { kind, value: Value::Bytes([text.as_bytes(), &[0]].concat()) }
    }

    /// nf_tables numbers are big-endian.
    pub(crate) fn be32(kind: u16, value: u32) -> Self {
        Attr::bytes(kind, &value.to_be_bytes())
    }

    pub(crate) fn nested(kind: u16, attrs: Vec<Attr>) -> Self {
        Attr { kind, value: Value::Nested(attrs) }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match &self.value {
            Value::Bytes(bytes) => bytes.len(),
            Value::Nested(attrs) => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self.value {
            Value::Bytes(_) => self.kind,
            Value::Nested(_) => self.kind | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match &self.value {
            Value::Bytes(bytes) => buffer[..bytes.len()].copy_from_slice(bytes),
            Value::Nested(attrs) => attrs.as_slice().emit(buffer),
        }
    }
}

/// One nfnetlink message: a `nfgenmsg` header (family, version 0, resource id)
/// and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    message_type: u16,
    family: u8,
    resource_id: u16,
    attrs: Vec<Attr>,
}

const NFGENMSG_LEN: usize = 4;

impl NetlinkSerializable for Message {
    fn message_type(&self) -> u16 {
        self.message_type
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = 0; // NFNETLINK_V0
        buffer[2..4].copy_from_slice(&self.resource_id.to_be_bytes());
        self.attrs.as_slice().emit(&mut buffer[NFGENMSG_LEN..]);
    }
}

/// One request of a transaction, with a description for its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    kind: Kind,
    family: u8,
    attrs: Vec<Attr>,
    what: String,
}

impl Request {
    pub(crate) fn new(kind: Kind, family: u8, attrs: Vec<Attr>, what: impl Into<String>) -> Self {
        Request { kind, family, attrs, what: what.into() }
    }

    #[cfg(test)]
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    fn flags(&self) -> u16 {
        match self.kind {
            Kind::DelTable => 0,
            Kind::NewRule => NLM_F_CREATE | NLM_F_APPEND,
            _ => NLM_F_CREATE,
        }
    }
}

/// The batch as bytes: begin, each request asking for an acknowledgement with
/// sequence numbers from `first_sequence`, end.
fn encode(requests: &[Request], first_sequence: u32) -> Vec<u8> {
    let marker = |message_type, sequence| {
        Message { message_type, family: 0, resource_id: NFNL_SUBSYS_NFTABLES, attrs: Vec::new() }
            .with_header(NLM_F_REQUEST, sequence)
    };
    let mut messages = vec![marker(NFNL_MSG_BATCH_BEGIN, first_sequence.wrapping_sub(1))];
    for (i, request) in requests.iter().enumerate() {
        let message = Message {
            message_type: NFNL_SUBSYS_NFTABLES << 8 | request.kind as u16,
            family: request.family,
            resource_id: 0,
            attrs: request.attrs.clone(),
        };
        messages.push(
            message.with_header(
                NLM_F_REQUEST | NLM_F_ACK | request.flags(),
                first_sequence.wrapping_add(i as u32),
            ),
        );
    }
    messages.push(marker(NFNL_MSG_BATCH_END, first_sequence.wrapping_add(requests.len() as u32)));
    let mut bytes = Vec::new();
    for message in messages {
        let start = bytes.len();
        bytes.resize(start + message.buffer_len(), 0);
        message.serialize(&mut bytes[start..]);
    }
    bytes
}

impl Message {
    fn with_header(self, flags: u16, sequence: u32) -> NetlinkMessage<Message> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(self));
        message.finalize();
        message
    }
}

/// Sends `requests` as one transaction in the calling thread's network namespace.
///
/// nfnetlink runs a batch while the send is in progress, so every answer is
/// queued on the socket when `send` returns; they are read without waiting.
/// A failure names the request the kernel refused (`nf_tables: <what>`).
pub(crate) fn commit(requests: &[Request]) -> Result<(), HostError> {
    send_batch(requests).map_err(|e| match e {
        Failed::Socket(e) => HostError::io("nf_tables", e),
        Failed::Refused { what, errno } => HostError::refused(format!("nf_tables: {what}"), errno),
    })
}

/// Whether the table `name` of `family` exists: one `NFT_MSG_GETTABLE`, which
/// changes nothing (a dry run's look). Needs CAP_NET_ADMIN, as every nf_tables
/// request does.
pub(crate) fn table_exists(family: u8, name: &str) -> Result<bool, HostError> {
    let action = format!("looking up nf_tables table {name}");
    let failed = |e: io::Error| HostError::io(action.as_str(), e);
    let socket = nfnetlink_socket().map_err(failed)?;
    let question = Message {
        message_type: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE,
        family,
        resource_id: 0,
        attrs: vec![Attr::string(NFTA_TABLE_NAME, name)],
    }
    .with_header(NLM_F_REQUEST | NLM_F_ACK, 1);
    let mut bytes = vec![0; question.buffer_len()];
    question.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(failed)?;
    let mut datagram = Vec::with_capacity(16 << 10);
    // The table's description (when it exists), then the acknowledgement.
    loop {
        datagram.clear();
        socket.recv(&mut datagram, 0).map_err(failed)?;
        match answer(&datagram) {
            Some(0) => return Ok(true),
            Some(code) if Errno::from_raw(code) == Errno::ENOENT => return Ok(false),
            Some(code) => return Err(HostError::refused(action.clone(), Errno::from_raw(code))),
            None => continue,
        }
    }
}

/// The errno (0: an acknowledgement) of the datagram's first `NLMSG_ERROR`, if it has one.
fn answer(datagram: &[u8]) -> Option<i32> {
    answers(datagram).first().map(|&(_, code)| -code)
}

enum Failed {
    Socket(io::Error),
    Refused { what: String, errno: Errno },
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Self {
        Failed::Socket(e)
    }
}

/// A netfilter netlink socket, bound and connected to the kernel.
fn nfnetlink_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn send_batch(requests: &[Request]) -> Result<(), Failed> {
    let socket = nfnetlink_socket()?;
    let first_sequence = 1;
    let batch = encode(requests, first_sequence);
    // A batch is one datagram: room for it, and for the acknowledgements.
    let _ = socket.set_rx_buf_sz(1 << 20);
    // (Beyond `wmem_max` with CAP_NET_ADMIN, which the agent has.)
    let room = batch.len() + 4096;
    if setsockopt(&socket, sockopt::SndBufForce, &room).is_err() {
        setsockopt(&socket, sockopt::SndBuf, &room).map_err(io::Error::from)?;
    }
    socket.send(&batch, 0)?;
    let mut datagram = Vec::with_capacity(64 << 10);
    loop {
        datagram.clear();
        match socket.recv(&mut datagram, MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // The first error is the cause; later ones follow from the aborted batch.
        if let Some((sequence, errno)) = errors(&datagram).into_iter().next() {
            let index = sequence.wrapping_sub(first_sequence) as usize;
            let what = requests.get(index).map_or_else(|| "the batch".to_string(), |r| r.what.clone());
            return Err(Failed::Refused { what, errno });
        }
    }
}

/// The errors among a datagram's messages (acknowledgements carry error 0).
fn errors(datagram: &[u8]) -> Vec<(u32, Errno)> {
    answers(datagram)
        .into_iter()
        .filter(|&(_, code)| code != 0)
        .map(|(sequence, code)| (sequence, Errno::from_raw(-code)))
        .collect()
}

/// The datagram's `NLMSG_ERROR` messages: each one's sequence number and
/// error code (negative; 0 for an acknowledgement). A truncated message ends
/// the reading.
fn answers(datagram: &[u8]) -> Vec<(u32, i32)> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset + 20 <= datagram.len() {
        let field = |at: usize| u32::from_ne_bytes(datagram[at..at + 4].try_into().expect("4 bytes"));
        let length = field(offset) as usize;
        if length < 16 || offset + length > datagram.len() {
            break;
        }
        let message_type = u16::from_ne_bytes([datagram[offset + 4], datagram[offset + 5]]);
        // NLMSG_ERROR: an i32 error, then the request's header.
        if message_type == 2 {
            found.push((field(offset + 8), field(offset + 16) as i32));
        }
        offset += length.div_ceil(4) * 4;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn a_batch_is_framed_by_begin_and_end_markers_for_the_nftables_subsystem() {
        let table = Request::new(Kind::NewTable, FAMILY_INET, vec![Attr::string(1, "t")], "table t");
        let bytes = encode(&[table], 7);
        // begin: 16-byte header + nfgenmsg { AF_UNSPEC, v0, res_id 10 (big-endian) }
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), NFNL_MSG_BATCH_BEGIN);
        assert_eq!(&bytes[16..20], &[0, 0, 0, 10]);
        // the table: type NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE, flags
        // REQUEST | ACK | CREATE, sequence 7, family inet, then NFTA_TABLE_NAME "t\0".
        let table = &bytes[20..];
        assert_eq!(u32::from_ne_bytes(table[0..4].try_into().unwrap()), 16 + 4 + 8);
        assert_eq!(u16::from_ne_bytes([table[4], table[5]]), 10 << 8);
        assert_eq!(u16::from_ne_bytes([table[6], table[7]]), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(u32::from_ne_bytes(table[8..12].try_into().unwrap()), 7);
        assert_eq!(&table[16..20], &[FAMILY_INET, 0, 0, 0]);
        assert_eq!(&table[20..28], &[6, 0, 1, 0, b't', 0, 0, 0]);
        let end = &table[28..];
        assert_eq!(u16::from_ne_bytes([end[4], end[5]]), NFNL_MSG_BATCH_END);
        assert_eq!(end.len(), 20);
    }

    #[test]
    fn an_answer_is_the_error_message_and_a_description_is_not_one() {
        let message = |kind: u16, code: i32| {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&36u32.to_ne_bytes());
            bytes.extend_from_slice(&kind.to_ne_bytes());
            bytes.extend_from_slice(&[0; 10]);
            bytes.extend_from_slice(&code.to_ne_bytes());
            bytes.extend_from_slice(&[0; 16]);
            bytes
        };
        let table = message(NFNL_SUBSYS_NFTABLES << 8, 0);
        assert_eq!(answer(&table), None);
        assert_eq!(answer(&[table, message(2, 0)].concat()), Some(0));
        assert_eq!(answer(&message(2, -2)), Some(Errno::ENOENT as i32));
    }

    #[test]
    fn nested_attributes_carry_the_nested_flag() {
        let nested = Attr::nested(4, vec![Attr::be32(1, 5)]);
        let mut buffer = vec![0; nested.buffer_len()];
        nested.emit(&mut buffer);
        assert_eq!(buffer, [12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn errors_name_their_request_and_acknowledgements_are_not_errors() {
        let mut datagram = Vec::new();
        for (sequence, code) in [(1u32, 0i32), (2, -22)] {
            datagram.extend_from_slice(&36u32.to_ne_bytes());
            datagram.extend_from_slice(&2u16.to_ne_bytes());
            datagram.extend_from_slice(&[0; 2]);
            datagram.extend_from_slice(&sequence.to_ne_bytes());
            datagram.extend_from_slice(&[0; 4]);
            datagram.extend_from_slice(&code.to_ne_bytes());
            datagram.extend_from_slice(&[0; 16]);
        }
        assert_eq!(errors(&datagram), [(2, Errno::EINVAL)]);
        assert_eq!(errors(&datagram[..30]), [], "a truncated message is not read");
    }
}
