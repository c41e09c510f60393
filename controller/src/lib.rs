//! lvs-controller: turns the cluster's VirtualServices into per-node
//! [`LvsNode`](lvs_crds::LvsNode) desired state and reports back on them.
//!
//! ```text
//!  VirtualServices ─┐  reflector   ┌───────────┐ translate  ┌──────────────┐  server-side apply
//!  Nodes ───────────┼──stores────> │ reconcile │ ─────────> │ plan (pure)  │ ─────────────────> LvsNodes ──> agents
//!  EndpointSlices ──┘              │  (one VS) │            └──────────────┘                        │
//!  LvsNodes (agents' reports) ───> │           │ ─ status::aggregate (pure) ─> VirtualService status  │
//!           ^                      └───────────┘ ─ Events on condition transitions                    │
//!           └───────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The translation is global (conflicts between VirtualServices, directors
//! shared by many of them), so every reconcile recomputes it from the stores
//! (cached until an input changes), writes the LvsNodes that differ, deletes
//! those no longer needed, and then writes the status of its own
//! VirtualService (or of its Service of type LoadBalancer, [`load_balancer`]).
//! The decisions are pure functions ([`plan`], [`status`],
//! [`triggers`]); [`controller`] does the IO. Only the holder of the
//! [`lease`] runs the controller, and its writes go through the
//! [`write_guard`], which ends each one by the lease's renew deadline.

pub mod args;
pub mod controller;
pub mod lease;
pub mod load_balancer;
pub mod metrics;
pub mod plan;
pub mod preview;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod triggers;
pub mod watch;
pub mod write_guard;

#[cfg(test)]
mod fixtures;

use kube::runtime::finalizer;

/// Field manager of every write (server-side apply) of the controller.
pub const FIELD_MANAGER: &str = "lvs-controller";

/// Finalizer that keeps a deleted VirtualService until every node dropped it.
pub const FINALIZER: &str = "lvs.dev/cleanup";

/// Finalizer that keeps a Service of type LoadBalancer of ours, deleted or
/// moved to another class, until every node dropped it and its status is
/// cleared.
pub const SERVICE_FINALIZER: &str = "lvs.dev/load-balancer-cleanup";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    // Boxed: finalizer::Error wraps this very type.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),

    #[error("the reflector stores were dropped before they were synced")]
    StoresClosed,

    #[error("waiting for the agents of {} to drop the service", .0.join(", "))]
    CleanupPending(Vec<String>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error the reconcile's own code raised, unwrapped from the finalizer's.
    pub fn cause(&self) -> &Error {
        match self {
            Error::Finalizer(error) => match error.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.cause()
                }
                _ => self,
            },
            _ => self,
        }
    }

    /// Short label of the error for the `reason` of the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self.cause() {
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "client_error",
            Error::Finalizer(_) => "finalizer",
            Error::StoresClosed => "stores_closed",
            Error::CleanupPending(_) => "cleanup_pending",
        }
    }
}
