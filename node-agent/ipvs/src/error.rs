//! Errors of the IPVS handle, typed by what the kernel said and naming the operation.

use std::io;

use nix::errno::Errno;

/// What the kernel answered to one request, by errno, in IPVS terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("already exists")]
    AlreadyExists,
    #[error("no such service")]
    NoSuchService,
    #[error("no such destination")]
    NoSuchDestination,
    /// `NEW_SERVICE`/`SET_SERVICE` with a scheduler (or persistence engine) whose
    /// module the kernel cannot load.
    #[error("unknown scheduler or persistence engine {0:?}")]
    UnknownScheduler(String),
    #[error("not found")]
    NotFound,
    #[error("invalid argument")]
    InvalidArgument,
    /// A negative weight, or a lower threshold above the upper one.
    #[error("value out of range")]
    OutOfRange,
    #[error("operation not permitted (CAP_NET_ADMIN in the initial user namespace is required)")]
    PermissionDenied,
    #[error("address family not supported")]
    AddressFamilyNotSupported,
    #[error("operation not supported")]
    NotSupported,
    #[error("{}", io::Error::from_raw_os_error(*.0))]
    Other(i32),
}

/// Which kind of object a request was about, to read an ambiguous errno right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject<'a> {
    /// Adding or editing a service with this scheduler.
    ServiceSpec(&'a str),
    Destination,
    Other,
}

impl KernelError {
    /// Maps a (positive) errno, as answered to a request about `subject`.
    pub(crate) fn from_errno(errno: i32, subject: Subject<'_>) -> Self {
        match (Errno::from_raw(errno), subject) {
            (Errno::EEXIST, _) => KernelError::AlreadyExists,
            (Errno::ESRCH, _) => KernelError::NoSuchService,
            (Errno::ENOENT, Subject::ServiceSpec(scheduler)) => {
                KernelError::UnknownScheduler(scheduler.to_string())
            }
            (Errno::ENOENT, Subject::Destination) => KernelError::NoSuchDestination,
            (Errno::ENOENT, Subject::Other) => KernelError::NotFound,
            (Errno::EINVAL, _) => KernelError::InvalidArgument,
            (Errno::ERANGE, _) => KernelError::OutOfRange,
            (Errno::EPERM, _) => KernelError::PermissionDenied,
            (Errno::EAFNOSUPPORT, _) => KernelError::AddressFamilyNotSupported,
            (Errno::EOPNOTSUPP, _) => KernelError::NotSupported,
            _ => KernelError::Other(errno),
        }
    }
}

/// An error of the IPVS handle. Every variant names the operation it concerns,
/// e.g. `add destination 10.0.0.11:80 to TCP 10.0.0.100:80: already exists`.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel refused the request.
    #[error("{op}: {error}")]
    Kernel { op: String, error: KernelError },
    /// The generic-netlink family "IPVS" is not registered.
    #[error(
        "IPVS is not available: the kernel has no generic netlink family \"IPVS\" and could not load it \
         (a kernel without IP_VS, or one that cannot load modules: its ip_vs module must be loaded on the host)"
    )]
    Unavailable,
    #[error("{op}: netlink socket error: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// A reply that does not parse; a kernel bug or a protocol this code does not know.
    #[error("{op}: malformed reply from the kernel: {message}")]
    Decode { op: String, message: String },
    /// The socket's receive buffer overflowed: some answers were dropped, so the
    /// outcome of this request is unknown.
    #[error("{op}: outcome unknown, the kernel's answer was lost (netlink receive buffer overrun)")]
    Lost { op: String },
    /// A dump that concurrent changes interrupted (`NLM_F_DUMP_INTR`), every
    /// time it was taken: it may miss or repeat entries, so it is not used.
    #[error("{op}: the dump was interrupted by concurrent changes each time it was taken")]
    Interrupted { op: String },
}

impl IpvsError {
    /// The kernel's answer, when the kernel refused the request.
    pub fn kernel_error(&self) -> Option<&KernelError> {
        match self {
            IpvsError::Kernel { error, .. } => Some(error),
            _ => None,
        }
    }
}
