//! The Linux IPVS generic-netlink family, and ipvsadm's text formats
//! ([`ipvsadm`]). No Kubernetes here: the agent converts its resources into
//! these types.
//!
//! Layers, bottom up:
//! - (inside the crate) attribute enums per kernel object and the message:
//!   byte-exact `Nla`/`Parseable`/`Emitable` implementations of
//!   `include/uapi/linux/ip_vs.h`, keeping unknown attributes as raw ones;
//! - the model ([`Service`], [`Destination`], [`SyncDaemon`], ...) and changes as
//!   values ([`IpvsOp`]);
//! - the request handle ([`IpvsHandle`]): requests, dumps and pipelined batches;
//! - [`ipvsadm`]: `ipvsadm -S`/`-R` rules and the `-L` views of a dumped table.

mod daemon;
mod destination;
mod error;
mod handle;
pub mod ipvsadm;
mod message;
pub mod netlink;
mod nla;
mod ops;
mod service;
mod stats;

pub use daemon::{SyncDaemon, SyncState};
pub use destination::{Destination, DestinationEntry, ForwardMethod, Tunnel, TunnelChecksum, TunnelType};
pub use error::{IpvsError, KernelError};
pub use handle::{BatchReport, IpvsHandle};
pub use ops::{Info, IpvsOp, Timeouts};
pub use service::{AddressFamily, Netmask, Protocol, Service, ServiceEntry, ServiceFlags, ServiceKey};
pub use stats::Stats;

#[cfg(test)]
mod parse_properties;
#[cfg(test)]
mod tests;
