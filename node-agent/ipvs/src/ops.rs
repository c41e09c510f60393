//! Changes to the IPVS table, as values: what batches and plans are made of.

use std::{fmt, net::SocketAddr};

use super::{
    daemon::{SyncDaemon, SyncState},
    destination::Destination,
    error::Subject,
    message::{IpvsAttr, IpvsCmd, IpvsMessage},
    service::{Service, ServiceKey},
};

/// The global connection timeouts (`ipvsadm --set tcp tcpfin udp`), in seconds.
/// On writes, 0 keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// What `GET_INFO` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// e.g. 0x010201 for 1.2.1.
    pub version: u32,
    /// Buckets of the connection hash table.
    pub connection_table_size: u32,
}

impl Info {
    /// `major.minor.patch`, as ipvsadm prints it.
    pub(crate) fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version >> 16, (self.version >> 8) & 0xff, self.version & 0xff)
    }
}

/// One change to the kernel's IPVS state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsOp {
    AddService(Service),
    EditService(Service),
    DeleteService(ServiceKey),
    AddDestination(ServiceKey, Destination),
    EditDestination(ServiceKey, Destination),
    DeleteDestination(ServiceKey, SocketAddr),
    /// Zeroes the counters of one service (and its destinations), or of everything.
    Zero(Option<ServiceKey>),
    /// Deletes every service of this network namespace.
    Flush,
    SetTimeouts(Timeouts),
    StartSyncDaemon(SyncDaemon),
    StopSyncDaemon(SyncState),
}

impl IpvsOp {
    pub(crate) fn to_message(&self) -> IpvsMessage {
        use IpvsOp::*;
        let (cmd, attrs) = match self {
            AddService(service) => (IpvsCmd::NewService, vec![IpvsAttr::Service(service.to_attrs())]),
            EditService(service) => (IpvsCmd::SetService, vec![IpvsAttr::Service(service.to_attrs())]),
            DeleteService(key) => (IpvsCmd::DelService, vec![IpvsAttr::Service(key.to_attrs())]),
            AddDestination(key, dest) => (
                IpvsCmd::NewDest,
                vec![IpvsAttr::Service(key.to_attrs()), IpvsAttr::Destination(dest.to_attrs())],
            ),
            EditDestination(key, dest) => (
                IpvsCmd::SetDest,
                vec![IpvsAttr::Service(key.to_attrs()), IpvsAttr::Destination(dest.to_attrs())],
            ),
            DeleteDestination(key, address) => (
                IpvsCmd::DelDest,
                vec![
                    IpvsAttr::Service(key.to_attrs()),
                    IpvsAttr::Destination(Destination::identity_attrs(address)),
                ],
            ),
            Zero(key) => (IpvsCmd::Zero, key.iter().map(|k| IpvsAttr::Service(k.to_attrs())).collect()),
            Flush => (IpvsCmd::Flush, vec![]),
            SetTimeouts(t) => (
                IpvsCmd::SetConfig,
                vec![
                    IpvsAttr::TimeoutTcp(t.tcp),
                    IpvsAttr::TimeoutTcpFin(t.tcp_fin),
                    IpvsAttr::TimeoutUdp(t.udp),
                ],
            ),
            StartSyncDaemon(daemon) => (IpvsCmd::NewDaemon, vec![IpvsAttr::Daemon(daemon.to_attrs())]),
            StopSyncDaemon(state) => (
                IpvsCmd::DelDaemon,
                vec![IpvsAttr::Daemon(vec![super::daemon::IpvsDaemonAttr::State(state.number())])],
            ),
        };
        IpvsMessage::new(cmd, attrs)
    }

    /// The service this operation changes, if it is about one.
    pub fn service_key(&self) -> Option<ServiceKey> {
        use IpvsOp::*;
        match self {
            AddService(s) | EditService(s) => Some(s.key),
            DeleteService(k) | AddDestination(k, _) | EditDestination(k, _) | DeleteDestination(k, _) => {
                Some(*k)
            }
            Zero(key) => *key,
            Flush | SetTimeouts(_) | StartSyncDaemon(_) | StopSyncDaemon(_) => None,
        }
    }

    /// What an ambiguous errno (ENOENT) refers to for this operation.
    pub(crate) fn subject(&self) -> Subject<'_> {
        match self {
            IpvsOp::AddService(s) | IpvsOp::EditService(s) => Subject::ServiceSpec(&s.scheduler),
            IpvsOp::EditDestination(..) | IpvsOp::DeleteDestination(..) => Subject::Destination,
            _ => Subject::Other,
        }
    }
}

impl fmt::Display for IpvsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use IpvsOp::*;
        match self {
            AddService(s) => write!(f, "add service {}", s.key),
            EditService(s) => write!(f, "edit service {}", s.key),
            DeleteService(key) => write!(f, "delete service {key}"),
            AddDestination(key, d) => write!(f, "add destination {} to {key}", d.address),
            EditDestination(key, d) => write!(f, "edit destination {} of {key}", d.address),
            DeleteDestination(key, address) => write!(f, "delete destination {address} from {key}"),
            Zero(Some(key)) => write!(f, "zero counters of {key}"),
            Zero(None) => f.write_str("zero all counters"),
            Flush => f.write_str("flush the IPVS table"),
            SetTimeouts(t) => write!(f, "set timeouts tcp {} tcpfin {} udp {}", t.tcp, t.tcp_fin, t.udp),
            StartSyncDaemon(d) => write!(f, "start {} sync daemon on {}", d.state.name(), d.interface),
            StopSyncDaemon(state) => write!(f, "stop {} sync daemon", state.name()),
        }
    }
}
