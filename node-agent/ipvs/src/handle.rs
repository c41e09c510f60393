//! The request handle: one generic-netlink socket speaking the IPVS family.
//!
//! This is a small purpose-built transport rather than `genetlink`/`netlink-proto`:
//! programming tens of thousands of objects is dominated by per-request overhead,
//! so batches pack many requests into one `send` and ask the kernel to acknowledge
//! only failures plus the last request of each chunk (the kernel always reports
//! errors, and processes a socket's requests in order, so that final acknowledgement
//! proves the whole chunk done). Replies are matched to requests by sequence number.

use std::{
    collections::HashSet,
    io,
    sync::{Mutex, mpsc},
    thread,
};

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use nix::errno::Errno;

use super::{
    daemon::SyncDaemon,
    destination::DestinationEntry,
    error::{IpvsError, KernelError, Subject},
    message::{GENL_HDRLEN, IPVS_GENL_NAME, IpvsAttr, IpvsCmd, IpvsMessage, Nest, nests},
    netlink::Sequences,
    ops::{Info, IpvsOp, Timeouts},
    service::{ServiceEntry, ServiceKey},
};

/// `GENL_ID_CTRL`: the fixed id of the generic-netlink controller family.
const GENL_ID_CTRL: u16 = 0x10;
/// Requests per batch chunk. Bounded so that, even if every request of a chunk
/// fails, the error messages fit the socket's receive buffer.
const CHUNK_REQUESTS: usize = 128;
/// Receive buffer asked of the kernel (it caps the request at `rmem_max`).
const RECEIVE_BUFFER: usize = 4 << 20;
/// Receive buffer sizes. The kernel builds each dump datagram as large as the
/// largest buffer the socket has offered (up to 32 KiB), and never smaller than
/// `NLMSG_GOODSIZE` (a page less the socket-buffer overhead: 3776 bytes with 4 KiB
/// pages). Buffers of exactly that size keep every datagram of the many short
/// destination dumps within one page, which measurably speeds them up; the one long
/// service dump prefers large datagrams, since the kernel restarts its walk of the
/// service hash table for each one.
const DATAGRAM: usize = 3776;
const BULK_DATAGRAM: usize = 32 << 10;

/// `MSG_TRUNC`: `recv` then reports a datagram's full length, so a reply too large
/// for the buffer is an error instead of silently cut.
fn libc_msg_trunc() -> i32 {
    nix::sys::socket::MsgFlags::MSG_TRUNC.bits()
}

/// The outcome of a batch: how many requests ran, and which of them failed.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub requests: usize,
    /// (index into the batch, error); the other requests succeeded.
    pub failures: Vec<(usize, IpvsError)>,
}

impl BatchReport {
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }

    /// The first failure as an error, with the count of the others.
    pub fn into_result(self) -> Result<usize, IpvsError> {
        let others = self.failures.len().saturating_sub(1);
        match self.failures.into_iter().next() {
            None => Ok(self.requests),
            Some((_, IpvsError::Kernel { op, error })) if others > 0 => {
                Err(IpvsError::Kernel { op: format!("{op} (and {others} more failed requests)"), error })
            }
            Some((_, error)) => Err(error),
        }
    }
}

/// Sockets a handle opens for requests and destination dumps: the first serves
/// every request; dumps of many services' destinations spread over all of them, in
/// parallel threads (the kernel serialises much of its part, but decoding and
/// system-call overhead overlap; more than two gained nothing in the lab).
const CONNECTIONS: usize = 2;

/// A handle on the IPVS table of the network namespace it was opened in.
pub struct IpvsHandle {
    connections: Vec<Mutex<Connection>>,
    /// For the service dump only (see [`BULK_DATAGRAM`]).
    bulk: Mutex<Connection>,
    family_id: u16,
}

impl IpvsHandle {
    /// Opens sockets in the current network namespace and resolves the IPVS family
    /// (asking for it also makes the kernel load `ip_vs` when it can).
    pub fn connect() -> Result<Self, IpvsError> {
        // Every socket is opened here, by the calling thread: a socket belongs to
        // the network namespace of the thread that creates it.
        let io = |source| IpvsError::Io { op: "open netlink socket".into(), source };
        let mut connections = (0..CONNECTIONS)
            .map(|_| Connection::open(DATAGRAM))
            .collect::<io::Result<Vec<_>>>()
            .map_err(io)?;
        let bulk = Mutex::new(Connection::open(BULK_DATAGRAM).map_err(io)?);
        let family_id = connections[0].resolve_family()?;
        Ok(IpvsHandle { connections: connections.into_iter().map(Mutex::new).collect(), bulk, family_id })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves at worst unread replies, which the
        // next request's sequence check skips.
        self.connections[0].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one change and waits for the kernel's answer.
    pub fn apply(&self, op: &IpvsOp) -> Result<(), IpvsError> {
        self.apply_batch(std::slice::from_ref(op)).into_result().map(drop)
    }

    /// Applies many changes, pipelined. Every request is attempted, in order; the
    /// report names each one that failed.
    pub fn apply_batch(&self, ops: &[IpvsOp]) -> BatchReport {
        let mut connection = self.connection();
        let mut report = BatchReport { requests: ops.len(), failures: Vec::new() };
        for (chunk_index, chunk) in ops.chunks(CHUNK_REQUESTS).enumerate() {
            let base = chunk_index * CHUNK_REQUESTS;
            if let Err(failures) = connection.run_chunk(self.family_id, chunk) {
                report.failures.extend(failures.into_iter().map(|(i, e)| (base + i, e)));
            }
        }
        report
    }

    pub fn info(&self) -> Result<Info, IpvsError> {
        let op = "get IPVS info";
        let mut info = Info { version: 0, connection_table_size: 0 };
        for message in self.request(op, IpvsMessage::new(IpvsCmd::GetInfo, vec![]), Subject::Other)? {
            for attr in message.attrs {
                match attr {
                    IpvsAttr::Version(v) => info.version = v,
                    IpvsAttr::ConnectionTableSize(v) => info.connection_table_size = v,
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    pub fn timeouts(&self) -> Result<Timeouts, IpvsError> {
        let op = "get timeouts";
        let mut timeouts = Timeouts::default();
        for message in self.request(op, IpvsMessage::new(IpvsCmd::GetConfig, vec![]), Subject::Other)? {
            for attr in message.attrs {
                match attr {
                    IpvsAttr::TimeoutTcp(v) => timeouts.tcp = v,
                    IpvsAttr::TimeoutTcpFin(v) => timeouts.tcp_fin = v,
                    IpvsAttr::TimeoutUdp(v) => timeouts.udp = v,
                    _ => {}
                }
            }
        }
        Ok(timeouts)
    }

    /// Every service of this network namespace, in the kernel's (hash) order.
    ///
    /// A kernel dump is no snapshot: it resumes by position in a hash table that
    /// every network namespace shares, so concurrent changes (even in another
    /// namespace) can repeat an entry. Repeats are dropped here.
    pub fn services(&self) -> Result<Vec<ServiceEntry>, IpvsError> {
        retrying(|| {
            let mut services = Vec::new();
            self.for_each_service(|entry| services.push(entry))?;
            Ok(services)
        })
    }

    /// Streams the service dump (without repeats) to `on_service` as it arrives.
    fn for_each_service(&self, mut on_service: impl FnMut(ServiceEntry)) -> Result<(), IpvsError> {
        let mut seen = HashSet::new();
        let request = IpvsMessage::new(IpvsCmd::GetService, vec![]);
        let mut bulk = self.bulk.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        bulk.exchange(self.family_id, "list services", request, flags, Subject::Other, |payload| {
            for nest in nests(payload, Nest::Service) {
                let entry = ServiceEntry::decode(nest?)?;
                if seen.insert(entry.service.key) {
                    on_service(entry);
                }
            }
            Ok(())
        })
    }

    /// One service; [`KernelError::NoSuchService`] when it does not exist.
    pub fn service(&self, key: &ServiceKey) -> Result<ServiceEntry, IpvsError> {
        let op = format!("get service {key}");
        let request = IpvsMessage::new(IpvsCmd::GetService, vec![IpvsAttr::Service(key.to_attrs())]);
        let messages = self.request(&op, request, Subject::Other)?;
        let attrs = messages.into_iter().flat_map(|m| m.attrs).find_map(|attr| match attr {
            IpvsAttr::Service(attrs) => Some(attrs),
            _ => None,
        });
        let attrs = attrs
            .ok_or_else(|| IpvsError::Decode { op: op.clone(), message: "no service in reply".into() })?;
        decode(&op, ServiceEntry::from_attrs(&attrs))
    }

    /// The destinations of one service. An unknown service gives an empty list
    /// (the kernel's dump does not tell the two apart). Repeats from concurrent
    /// changes are dropped, as for [`Self::services`].
    pub fn destinations(&self, key: &ServiceKey) -> Result<Vec<DestinationEntry>, IpvsError> {
        retrying(|| self.connection().destinations(self.family_id, key))
    }

    /// The whole table: every service with its destinations.
    ///
    /// Destinations are dumped on all connections in parallel threads while the
    /// service dump still streams in: most of the cost is the kernel's, per entry,
    /// and two CPUs share it.
    pub fn table(&self) -> Result<Vec<(ServiceEntry, Vec<DestinationEntry>)>, IpvsError> {
        self.table_of(|entry| entry)
    }

    /// [`Self::table`], each destination as `view` makes it from its entry as
    /// soon as it is dumped: a caller that keeps less than the counters never
    /// holds the table with them (16 MB at 100,000 destinations).
    pub fn table_of<D: Send>(
        &self,
        view: impl Fn(DestinationEntry) -> D + Sync,
    ) -> Result<Vec<(ServiceEntry, Vec<D>)>, IpvsError> {
        retrying(|| self.table_once(&view))
    }

    /// One attempt at [`Self::table_of`].
    fn table_once<D: Send>(
        &self,
        view: &(impl Fn(DestinationEntry) -> D + Sync),
    ) -> Result<Vec<(ServiceEntry, Vec<D>)>, IpvsError> {
        let (to_workers, work) = mpsc::channel::<(usize, ServiceKey)>();
        let work = Mutex::new(work);
        let mut services = Vec::new();
        let dumped = thread::scope(|scope| {
            let workers: Vec<_> = self
                .connections
                .iter()
                .map(|connection| {
                    let work = &work;
                    scope.spawn(move || {
                        let mut connection =
                            connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        let mut dumped = Vec::new();
                        // The lock is held only while taking the next service.
                        while let Ok((index, key)) = { work.lock().expect("work queue").recv() } {
                            let destinations = connection.destinations(self.family_id, &key)?;
                            dumped.push((index, destinations.into_iter().map(view).collect::<Vec<_>>()));
                        }
                        Ok::<_, IpvsError>(dumped)
                    })
                })
                .collect();
            let listed = self.for_each_service(|entry| {
                let _ = to_workers.send((services.len(), entry.service.key));
                services.push(entry);
            });
            drop(to_workers); // lets the workers finish
            let dumped: Vec<_> =
                workers.into_iter().map(|w| w.join().expect("destination dump thread")).collect();
            listed.map(|()| dumped)
        })?;
        let mut destinations: Vec<Vec<D>> = std::iter::repeat_with(Vec::new).take(services.len()).collect();
        for worker in dumped {
            for (index, dests) in worker? {
                destinations[index] = dests;
            }
        }
        Ok(services.into_iter().zip(destinations).collect())
    }

    /// The running sync daemons (at most one master and one backup).
    pub fn sync_daemons(&self) -> Result<Vec<SyncDaemon>, IpvsError> {
        let mut daemons = Vec::new();
        self.dump("list sync daemons", IpvsMessage::new(IpvsCmd::GetDaemon, vec![]), |payload| {
            daemons.extend(parse_message(payload)?.attrs.into_iter().filter_map(|attr| match attr {
                IpvsAttr::Daemon(attrs) => SyncDaemon::from_attrs(&attrs),
                _ => None,
            }));
            Ok(())
        })?;
        Ok(daemons)
    }

    /// A request answered by reply messages and an acknowledgement.
    fn request(
        &self,
        op: &str,
        message: IpvsMessage,
        subject: Subject<'_>,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut replies = Vec::new();
        let mut connection = self.connection();
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        connection.exchange(self.family_id, op, message, flags, subject, |payload| {
            replies.push(parse_message(payload)?);
            Ok(())
        })?;
        Ok(replies)
    }

    /// A dump: each reply message's generic-netlink payload goes to `on_reply`,
    /// until `NLMSG_DONE`.
    fn dump(
        &self,
        op: &str,
        message: IpvsMessage,
        on_reply: impl FnMut(&[u8]) -> Result<(), DecodeError>,
    ) -> Result<(), IpvsError> {
        let mut connection = self.connection();
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        connection.exchange(self.family_id, op, message, flags, Subject::Other, on_reply)
    }
}

pub(crate) fn parse_message(genl_payload: &[u8]) -> Result<IpvsMessage, DecodeError> {
    let header = GenlHeader::parse(genl_payload)?;
    IpvsMessage::parse_with_param(&genl_payload[GENL_HDRLEN..], header)
}

fn decode<T>(op: &str, result: Result<T, DecodeError>) -> Result<T, IpvsError> {
    result.map_err(|e| IpvsError::Decode { op: op.to_string(), message: e.to_string() })
}

/// One reply message, classified by what it means for the request it answers.
pub(crate) enum Reply<'a> {
    /// An answer carrying data (a genl message of the family).
    Data { message_type: u16, payload: &'a [u8] },
    /// `NLMSG_ERROR` with 0: the acknowledgement.
    Ack,
    /// `NLMSG_ERROR` with an errno (positive here).
    Error(i32),
    /// `NLMSG_DONE`, possibly carrying the dump's error.
    Done(i32),
}

struct Connection {
    socket: Socket,
    sequences: Sequences,
    datagram: Vec<u8>,
    outgoing: Vec<u8>,
}

impl Connection {
    fn open(datagram: usize) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        let raw = &mut socket;
        raw.bind_auto()?;
        raw.connect(&SocketAddr::new(0, 0))?;
        // Best effort: a larger buffer only adds headroom for error messages.
        let _ = raw.set_rx_buf_sz(RECEIVE_BUFFER);
        // Errors need not echo the whole request; the header's sequence number
        // is all we match on.
        let _ = raw.set_cap_ack(true);
        Ok(Connection {
            socket,
            sequences: Sequences::default(),
            datagram: Vec::with_capacity(datagram),
            outgoing: Vec::new(),
        })
    }

    /// Appends one message to `outgoing`, returning its sequence number.
    fn encode<F>(&mut self, family_id: u16, flags: u16, payload: F) -> u32
    where
        F: netlink_packet_generic::GenlFamily + netlink_packet_core::Emitable + std::fmt::Debug,
    {
        let seq = self.sequences.reserve(1).first();
        self.encode_as(family_id, flags, payload, seq);
        seq
    }

    /// Appends one message with sequence number `seq` to `outgoing`.
    fn encode_as<F>(&mut self, family_id: u16, flags: u16, payload: F, seq: u32)
    where
        F: netlink_packet_generic::GenlFamily + netlink_packet_core::Emitable + std::fmt::Debug,
    {
        let mut genl = GenlMessage::from_payload(payload);
        genl.set_resolved_family_id(family_id);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
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
        let length = self.socket.recv(&mut self.datagram, libc_msg_trunc())?;
        if length > self.datagram.len() {
            let message =
                format!("a {length}-byte reply did not fit the {}-byte buffer", self.datagram.capacity());
            return Err(io::Error::other(message));
        }
        Ok(())
    }

    fn resolve_family(&mut self) -> Result<u16, IpvsError> {
        let op = "resolve generic netlink family IPVS";
        let io = |source| IpvsError::Io { op: op.into(), source };
        let request = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.into())],
        };
        let seq = self.encode(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, request);
        self.flush().map_err(io)?;
        let mut family_id = None;
        loop {
            self.receive().map_err(io)?;
            for reply in replies(&self.datagram) {
                let (reply_seq, _, reply) =
                    reply.map_err(|message| IpvsError::Decode { op: op.into(), message })?;
                if reply_seq != seq {
                    continue;
                }
                match reply {
                    Reply::Data { message_type, payload, .. } => {
                        let genl = GenlMessage::<GenlCtrl>::parse_with_param(payload, message_type)
                            .map_err(|e| IpvsError::Decode { op: op.into(), message: e.to_string() })?;
                        family_id = genl.payload.nlas.iter().find_map(|nla| match nla {
                            GenlCtrlAttrs::FamilyId(id) => Some(*id),
                            _ => None,
                        });
                    }
                    Reply::Ack | Reply::Done(0) => return family_id.ok_or(IpvsError::Unavailable),
                    Reply::Error(2) | Reply::Done(2) => return Err(IpvsError::Unavailable),
                    Reply::Error(errno) | Reply::Done(errno) => {
                        return Err(IpvsError::Kernel {
                            op: op.into(),
                            error: KernelError::from_errno(errno, Subject::Other),
                        });
                    }
                }
            }
        }
    }

    /// Dumps one service's destinations (see [`IpvsHandle::destinations`]).
    fn destinations(&mut self, family_id: u16, key: &ServiceKey) -> Result<Vec<DestinationEntry>, IpvsError> {
        let mut destinations = Vec::new();
        let mut seen = HashSet::new();
        let family = key.family().number();
        let request = IpvsMessage::new(IpvsCmd::GetDest, vec![IpvsAttr::Service(key.to_attrs())]);
        let op = format!("list destinations of {key}");
        self.exchange(family_id, &op, request, NLM_F_REQUEST | NLM_F_DUMP, Subject::Other, |payload| {
            for nest in nests(payload, Nest::Destination) {
                let entry = DestinationEntry::decode(nest?, family)?;
                if seen.insert(entry.destination.address) {
                    destinations.push(entry);
                }
            }
            Ok(())
        })?;
        Ok(destinations)
    }

    /// Sends one request and hands each data reply's generic-netlink payload to
    /// `on_reply`, until the acknowledgement (or, for dumps, `NLMSG_DONE`).
    fn exchange(
        &mut self,
        family_id: u16,
        op: &str,
        message: IpvsMessage,
        flags: u16,
        subject: Subject<'_>,
        mut on_reply: impl FnMut(&[u8]) -> Result<(), DecodeError>,
    ) -> Result<(), IpvsError> {
        let seq = self.encode(family_id, flags, message);
        self.flush().map_err(|source| IpvsError::Io { op: op.into(), source })?;
        let mut interrupted = false;
        loop {
            self.receive().map_err(|e| lost_or_io(op, e))?;
            for reply in replies(&self.datagram) {
                let (reply_seq, reply_flags, reply) =
                    reply.map_err(|message| IpvsError::Decode { op: op.into(), message })?;
                if reply_seq != seq {
                    continue; // left over from a request whose caller gave up
                }
                // A dump that a concurrent change interrupted may miss or
                // repeat entries: not trusted (its caller dumps again).
                interrupted |= reply_flags & NLM_F_DUMP_INTR != 0;
                match reply {
                    Reply::Data { payload, .. } => decode(op, on_reply(payload))?,
                    Reply::Ack | Reply::Done(0) if interrupted => {
                        return Err(IpvsError::Interrupted { op: op.into() });
                    }
                    Reply::Ack | Reply::Done(0) => return Ok(()),
                    Reply::Error(errno) | Reply::Done(errno) => {
                        return Err(IpvsError::Kernel {
                            op: op.into(),
                            error: KernelError::from_errno(errno, subject),
                        });
                    }
                }
            }
        }
    }

    /// Sends a chunk of requests in one datagram; only the last asks for an
    /// acknowledgement. Returns the failures by index within the chunk.
    fn run_chunk(&mut self, family_id: u16, ops: &[IpvsOp]) -> Result<(), Vec<(usize, IpvsError)>> {
        let Some(last_index) = ops.len().checked_sub(1) else { return Ok(()) };
        let sequences = self.sequences.reserve(ops.len());
        for ((i, op), seq) in ops.iter().enumerate().zip(sequences) {
            let flags = if i == last_index { NLM_F_REQUEST | NLM_F_ACK } else { NLM_F_REQUEST };
            self.encode_as(family_id, flags, op.to_message(), seq);
        }
        let whole_chunk_failed = |error: &dyn Fn(&IpvsOp) -> IpvsError| {
            ops.iter().enumerate().map(|(i, op)| (i, error(op))).collect::<Vec<_>>()
        };
        if let Err(e) = self.flush() {
            let kind = e.kind();
            return Err(whole_chunk_failed(&|op| IpvsError::Io {
                op: op.to_string(),
                source: io::Error::from(kind),
            }));
        }
        let mut failures = Vec::new();
        loop {
            if let Err(e) = self.receive() {
                // Anything not yet reported has an unknown outcome.
                let reported: Vec<usize> = failures.iter().map(|(i, _)| *i).collect();
                let kind = e.kind();
                let lost = e.raw_os_error() == Some(Errno::ENOBUFS as i32);
                failures.extend(ops.iter().enumerate().filter(|(i, _)| !reported.contains(i)).map(
                    |(i, op)| {
                        let op = op.to_string();
                        let error = if lost {
                            IpvsError::Lost { op }
                        } else {
                            IpvsError::Io { op, source: io::Error::from(kind) }
                        };
                        (i, error)
                    },
                ));
                return Err(failures);
            }
            let mut done = false;
            for reply in replies(&self.datagram) {
                let Ok((seq, _, reply)) = reply else { continue };
                let Some(index) = sequences.index_of(seq) else { continue };
                match reply {
                    Reply::Error(errno) => {
                        let op = &ops[index];
                        let error = KernelError::from_errno(errno, op.subject());
                        failures.push((index, IpvsError::Kernel { op: op.to_string(), error }));
                    }
                    Reply::Ack | Reply::Data { .. } | Reply::Done(_) => {}
                }
                done |= index == last_index;
            }
            if done {
                return if failures.is_empty() { Ok(()) } else { Err(failures) };
            }
        }
    }
}

/// Dumps taken in all when concurrent changes keep interrupting them.
const DUMP_ATTEMPTS: usize = 5;

/// `dump` again while concurrent changes interrupt it (`NLM_F_DUMP_INTR`):
/// each attempt starts afresh, and an interrupted one is never used.
fn retrying<T>(mut dump: impl FnMut() -> Result<T, IpvsError>) -> Result<T, IpvsError> {
    let mut attempts = 1;
    loop {
        match dump() {
            Err(IpvsError::Interrupted { .. }) if attempts < DUMP_ATTEMPTS => attempts += 1,
            done => return done,
        }
    }
}

fn lost_or_io(op: &str, e: io::Error) -> IpvsError {
    if e.raw_os_error() == Some(Errno::ENOBUFS as i32) {
        IpvsError::Lost { op: op.into() }
    } else {
        IpvsError::Io { op: op.into(), source: e }
    }
}

/// Splits a datagram into its netlink messages: (sequence number, flags, reply).
pub(crate) fn replies(datagram: &[u8]) -> impl Iterator<Item = Result<(u32, u16, Reply<'_>), String>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= datagram.len() {
            return None;
        }
        let buffer = match NetlinkBuffer::new_checked(&datagram[offset..]) {
            Ok(buffer) => buffer,
            Err(e) => {
                offset = datagram.len();
                return Some(Err(e.to_string()));
            }
        };
        let length = buffer.length() as usize;
        offset += length.div_ceil(4) * 4;
        let payload = buffer.payload();
        let code = || payload.get(..4).map_or(0, |b| -i32::from_ne_bytes(b.try_into().expect("4 bytes")));
        let reply = match buffer.message_type() {
            NLMSG_ERROR => match code() {
                0 => Reply::Ack,
                errno => Reply::Error(errno),
            },
            NLMSG_DONE => Reply::Done(code()),
            message_type => Reply::Data { message_type, payload },
        };
        Some(Ok((buffer.sequence_number(), buffer.flags(), reply)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interrupted() -> IpvsError {
        IpvsError::Interrupted { op: "list services".into() }
    }

    #[test]
    fn an_interrupted_dump_is_taken_again_and_never_used() {
        let mut attempts = 0;
        let dumped = retrying(|| {
            attempts += 1;
            if attempts < 3 { Err(interrupted()) } else { Ok(attempts) }
        });
        assert_eq!(dumped.unwrap(), 3);
        // Interrupted every time: an error, after DUMP_ATTEMPTS tries.
        let mut attempts = 0;
        let dumped: Result<(), _> = retrying(|| {
            attempts += 1;
            Err(interrupted())
        });
        assert!(matches!(dumped, Err(IpvsError::Interrupted { .. })));
        assert_eq!(attempts, DUMP_ATTEMPTS);
        // Any other error ends it at once.
        let mut attempts = 0;
        let dumped: Result<(), _> = retrying(|| {
            attempts += 1;
            Err(IpvsError::Unavailable)
        });
        assert!(matches!(dumped, Err(IpvsError::Unavailable)));
        assert_eq!(attempts, 1);
    }

    #[test]
    fn a_reply_carries_its_flags() {
        // NLMSG_DONE (16-byte header, 4-byte code), sequence 7, NLM_F_MULTI | NLM_F_DUMP_INTR.
        let mut datagram = Vec::new();
        datagram.extend(20u32.to_ne_bytes());
        datagram.extend(NLMSG_DONE.to_ne_bytes());
        datagram.extend((0x2 | NLM_F_DUMP_INTR).to_ne_bytes());
        datagram.extend(7u32.to_ne_bytes());
        datagram.extend(0u32.to_ne_bytes());
        datagram.extend(0i32.to_ne_bytes());
        let (sequence, flags, reply) = replies(&datagram).next().unwrap().unwrap();
        assert_eq!(sequence, 7);
        assert_ne!(flags & NLM_F_DUMP_INTR, 0);
        assert!(matches!(reply, Reply::Done(0)));
    }
}
