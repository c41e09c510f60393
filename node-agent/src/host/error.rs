//! Why a host change failed: what the agent was doing, and the cause, in types,
//! so that callers can tell a refusal of the kernel from a missing device or a
//! socket that would not open.

use std::{fmt, io, sync::Arc};

use nix::errno::Errno;

/// A host change that failed: `action` says what was being done ("adding
/// 10.0.0.1 to eth0"), `cause` why it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {cause}")]
pub struct HostError {
    pub action: String,
    pub cause: Cause,
}

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// The kernel refused a request.
    #[error("{}", .0.desc())]
    Refused(Errno),
    /// A socket or file failed (opening, sending, reading, or an answer that
    /// could not be parsed). Shared, so that one socket failure can be every
    /// item's of a batch.
    #[error("{0}")]
    Io(Arc<io::Error>),
    /// The device named is not there.
    #[error("no such device {0}")]
    NoDevice(String),
    /// No route leads to the address, so no interface can be chosen for it.
    #[error("no route to it: set spec.directors.interface")]
    NoRoute,
    /// The host cannot do this (yet), whatever its state.
    #[error("{0}")]
    Unsupported(String),
    /// Several changes failed (undoing keeps going after a failure).
    #[error("{}", Several(.0))]
    Several(Vec<HostError>),
    /// The socket's receive buffer overran (`ENOBUFS`): the kernel's answers
    /// were dropped, so whether the requests took effect is unknown. Neither a
    /// success nor a refusal: the host must be read again.
    #[error("outcome unknown, the kernel's answers were lost (netlink receive buffer overrun)")]
    Lost,
}

impl HostError {
    pub fn new(action: impl Into<String>, cause: Cause) -> Self {
        HostError { action: action.into(), cause }
    }

    pub(crate) fn refused(action: impl Into<String>, errno: Errno) -> Self {
        Self::new(action, Cause::Refused(errno))
    }

    /// A socket's failure; `ENOBUFS` is [`Cause::Lost`].
    pub(crate) fn io(action: impl Into<String>, error: io::Error) -> Self {
        if error.raw_os_error() == Some(Errno::ENOBUFS as i32) {
            return Self::new(action, Cause::Lost);
        }
        Self::new(action, Cause::Io(Arc::new(error)))
    }

    /// Whether what was asked may or may not have happened (answers lost): the
    /// caller reads the host again rather than trust either.
    pub fn outcome_unknown(&self) -> bool {
        match &self.cause {
            Cause::Lost => true,
            Cause::Several(errors) => errors.iter().any(HostError::outcome_unknown),
            _ => false,
        }
    }

    /// The same cause for another action (one failure shared by a batch's items).
    pub(crate) fn for_action(&self, action: impl Into<String>) -> Self {
        HostError { action: action.into(), cause: self.cause.clone() }
    }

    /// The kernel's error number, when the kernel refused.
    pub fn errno(&self) -> Option<Errno> {
        match &self.cause {
            Cause::Refused(errno) => Some(*errno),
            Cause::Io(e) => e.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}

/// `a; b; c`, for [`Cause::Several`].
struct Several<'a>(&'a [HostError]);

impl fmt::Display for Several<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

pub(super) type Result<T, E = HostError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_action_then_the_cause() {
        let refused = HostError::refused("adding 10.0.0.1 to eth0", Errno::EPERM);
        assert_eq!(refused.to_string(), "adding 10.0.0.1 to eth0: Operation not permitted");
        assert_eq!(refused.errno(), Some(Errno::EPERM));
        let missing = HostError::new("adding 10.0.0.1 to lvs9", Cause::NoDevice("lvs9".into()));
        let several = HostError::new("undoing host changes", Cause::Several(vec![refused, missing]));
        assert_eq!(
            several.to_string(),
            "undoing host changes: adding 10.0.0.1 to eth0: Operation not permitted; \
             adding 10.0.0.1 to lvs9: no such device lvs9"
        );
        assert_eq!(several.errno(), None);
        assert!(!several.outcome_unknown());
    }

    #[test]
    fn an_overrun_receive_buffer_is_an_unknown_outcome() {
        let lost = HostError::io("sending", io::Error::from_raw_os_error(Errno::ENOBUFS as i32));
        assert!(matches!(lost.cause, Cause::Lost), "{lost:?}");
        assert!(lost.outcome_unknown());
        assert_eq!(
            lost.for_action("adding 10.0.0.1 to eth0").to_string(),
            "adding 10.0.0.1 to eth0: outcome unknown, the kernel's answers were lost (netlink receive buffer overrun)"
        );
        // Among several, it still is.
        let refused = HostError::refused("adding 10.0.0.2 to eth0", Errno::EPERM);
        let several = HostError::new("undoing host changes", Cause::Several(vec![refused, lost]));
        assert!(several.outcome_unknown());
        // Any other socket error is a failure of a known kind.
        let other = HostError::io("sending", io::Error::from_raw_os_error(Errno::EBADF as i32));
        assert!(matches!(other.cause, Cause::Io(_)) && !other.outcome_unknown());
        assert_eq!(other.errno(), Some(Errno::EBADF));
    }
}
