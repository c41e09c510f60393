//! A small blocking rtnetlink connection (`NETLINK_ROUTE`): links, addresses and
//! route lookups without an `ip` process each. Requests go out pipelined, many per
//! `send`, every one asking for an acknowledgement; replies are matched to
//! requests by sequence number (as the IPVS handle does, see ipvs/handle.rs).

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::error::HostError;
use lvs_ipvs::netlink::Sequences;

/// Requests sent before their replies are read: bounded so that the replies
/// (a route lookup's answer is ~100 bytes) fit the receive buffer.
const CHUNK_REQUESTS: usize = 256;
/// Receive buffer asked of the kernel (it caps the request at `rmem_max`).
const RECEIVE_BUFFER: usize = 1 << 20;
/// Large enough for the largest datagram the kernel builds for a dump (32 KiB).
const DATAGRAM: usize = 64 << 10;
/// `MSG_TRUNC`: `recv` then reports a datagram's full length.
const MSG_TRUNC: i32 = 0x20;
/// Dumps taken again when the kernel marks them interrupted by a concurrent
/// change (`NLM_F_DUMP_INTR`): such a dump may miss or repeat objects.
const DUMP_ATTEMPTS: usize = 5;

/// The answer to one request: its data replies, or the kernel's error number.
pub(crate) type Answer = Result<Vec<RouteNetlinkMessage>, i32>;

/// One socket in the network namespace of the thread that opened it.
pub(crate) struct Rtnl {
    socket: Socket,
    sequences: Sequences,
    datagram: Vec<u8>,
    outgoing: Vec<u8>,
}

impl Rtnl {
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Best effort: more room only matters for very large batches.
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
        let _ = socket.set_cap_ack(true);
        let sequences = Sequences::default();
        Ok(Rtnl { socket, sequences, datagram: Vec::with_capacity(DATAGRAM), outgoing: Vec::new() })
    }

    /// [`Rtnl::open`] for host changes: its failure is a [`HostError`].
    pub(crate) fn connect() -> Result<Self, HostError> {
        Self::open().map_err(|e| HostError::io("opening a netlink socket", e))
    }

    /// Every object of a kind (`RTM_GET*` with `NLM_F_DUMP`). A dump that a
    /// concurrent change interrupted is not trusted: it is taken again.
    pub(crate) fn dump(&mut self, request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_ATTEMPTS {
            if let Some(objects) = self.dump_once(request.clone())? {
                return Ok(objects);
            }
        }
        Err(io::Error::other(format!(
            "every one of {DUMP_ATTEMPTS} dumps was interrupted by concurrent changes"
        )))
    }

    /// One dump: its objects, or `None` when the kernel marked it interrupted.
    fn dump_once(&mut self, request: RouteNetlinkMessage) -> io::Result<Option<Vec<RouteNetlinkMessage>>> {
        let seq = self.encode(request, NLM_F_REQUEST | NLM_F_DUMP);
        self.flush()?;
        let mut objects = Vec::new();
        let mut interrupted = false;
        loop {
            self.receive()?;
            for reply in parse(&self.datagram)? {
                if reply.sequence != seq {
                    continue; // left over from an earlier request
                }
                interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(message) => objects.push(message),
                    NetlinkPayload::Done(_) => return Ok((!interrupted).then_some(objects)),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }

    /// Sends `requests` pipelined and returns each one's answer, in order. An
    /// error of the socket itself fails the whole batch.
    pub(crate) fn batch(
        &mut self,
        requests: Vec<RouteNetlinkMessage>,
        flags: u16,
    ) -> io::Result<Vec<Answer>> {
        let mut answers = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk: Vec<RouteNetlinkMessage> = requests.by_ref().take(CHUNK_REQUESTS).collect();
            let sequences = self.sequences.reserve(chunk.len());
            for (request, seq) in chunk.into_iter().zip(sequences) {
                self.encode_as(request, NLM_F_REQUEST | NLM_F_ACK | flags, seq);
            }
            self.flush()?;
            let mut pending: Vec<Option<Answer>> = vec![None; sequences.len()];
            let mut data: Vec<Vec<RouteNetlinkMessage>> = vec![Vec::new(); sequences.len()];
            let mut open = sequences.len();
            while open > 0 {
                self.receive()?;
                for reply in parse(&self.datagram)? {
                    let Some(index) = sequences.index_of(reply.sequence) else { continue };
                    if pending[index].is_some() {
                        continue;
                    }
                    match reply.payload {
                        NetlinkPayload::InnerMessage(message) => data[index].push(message),
                        NetlinkPayload::Error(e) => {
                            pending[index] = Some(match e.code {
                                None => Ok(std::mem::take(&mut data[index])),
                                Some(code) => Err(-code.get()),
                            });
                            open -= 1;
                        }
                        _ => {}
                    }
                }
            }
            answers.extend(pending.into_iter().map(|answer| answer.expect("every request answered")));
        }
        Ok(answers)
    }

    fn encode(&mut self, request: RouteNetlinkMessage, flags: u16) -> u32 {
        let seq = self.sequences.reserve(1).first();
        self.encode_as(request, flags, seq);
        seq
    }

    fn encode_as(&mut self, request: RouteNetlinkMessage, flags: u16, seq: u32) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        message.finalize();
        let start = self.outgoing.len();
        self.outgoing.resize(start + message.buffer_len(), 0);
        message.serialize(&mut self.outgoing[start..]);
    }

    fn flush(&mut self) -> io::Result<()> {
        let sent = self.socket.send(&self.outgoing, 0);
        self.outgoing.clear();
        sent.map(drop)
    }

    fn receive(&mut self) -> io::Result<()> {
        self.datagram.clear();
        let length = self.socket.recv(&mut self.datagram, MSG_TRUNC)?;
        if length > self.datagram.len() {
            return Err(io::Error::other(format!("a {length}-byte netlink reply did not fit the buffer")));
        }
        Ok(())
    }
}

/// One message of a reply datagram.
pub(super) struct Reply {
    pub(super) sequence: u32,
    pub(super) flags: u16,
    pub(super) payload: NetlinkPayload<RouteNetlinkMessage>,
}

/// Splits a datagram into its messages.
pub(super) fn parse(datagram: &[u8]) -> io::Result<Vec<Reply>> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while offset + 16 <= datagram.len() {
        let length = u32::from_ne_bytes(datagram[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        if length < 16 || offset + length > datagram.len() {
            return Err(io::Error::other("a truncated netlink reply"));
        }
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..offset + length])
            .map_err(|e| io::Error::other(format!("an undecodable netlink reply: {e}")))?;
        let header = message.header;
        messages.push(Reply {
            sequence: header.sequence_number,
            flags: header.flags,
            payload: message.payload,
        });
        offset += length.div_ceil(4) * 4;
    }
    Ok(messages)
}
