//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: the holder renews the lease every `retry_period`; another replica
//! takes it over only after it saw the record unchanged for `lease_duration`,
//! measured on its own clock (so clock skew between nodes does not matter);
//! and the holder stops writing once it could not renew for
//! `renew_deadline`, which is shorter than `lease_duration`, so two replicas
//! never write at once. Every write is guarded by the resourceVersion read
//! just before it, so of two replicas racing for a free lease one wins.
//!
//! The loop publishes its [`WriteDeadline`]: the start of its last successful
//! renewal plus `renew_deadline`, or `None` while it does not lead. Counted
//! from the attempt's start, it is never later than what another replica
//! measures from the record it sees, and the controller's writes end by it
//! ([`crate::write_guard`]).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use crate::write_guard::WriteDeadline;

/// Where the lease lives, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps writing without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retries.
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The lease record to write to take or keep the lease, or `None` while
/// another replica's lease is valid. `expired`: the current record has not
/// changed for its lease duration (as observed locally).
pub fn claim(
    current: Option<&LeaseSpec>,
    identity: &str,
    expired: bool,
    now: Timestamp,
    lease_duration: Duration,
) -> Option<LeaseSpec> {
    let current = current.cloned().unwrap_or_default();
    let holder = current.holder_identity.as_deref().filter(|h| !h.is_empty());
    let ours = holder == Some(identity);
    if holder.is_some() && !ours && !expired {
        return None;
    }
    let transitions = current.lease_transitions.unwrap_or(0);
    Some(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(i32::try_from(lease_duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if ours { current.acquire_time.clone() } else { Some(MicroTime(now)) },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || holder.is_none() { transitions } else { transitions + 1 }),
        ..current
    })
}

/// Takes and keeps the lease; see the module documentation.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen and when (local clock) it last changed.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// One attempt to acquire or renew the lease: whether we hold it after it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let name = self.config.name.clone();
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            let spec = claim(None, &self.config.identity, true, Timestamp::now(), self.config.lease_duration);
            let mut lease = Lease { spec, ..Lease::default() };
            lease.metadata.name = Some(name);
            let created = taken(self.api.create(&PostParams::default(), &lease).await)?;
            return Ok(created.map(|lease| self.observe(&lease)).is_some());
        };
        let current = lease.spec.take().unwrap_or_default();
        let expired = self.observe_record(&current);
        let Some(spec) = claim(
            Some(&current),
            &self.config.identity,
            expired,
            Timestamp::now(),
            self.lease_duration(&current),
        ) else {
            return Ok(false);
        };
        lease.spec = Some(spec);
        // `lease` still carries the resourceVersion just read: a replace
        // after someone else's write fails with 409 Conflict.
        let replaced = taken(self.api.replace(&name, &PostParams::default(), &lease).await)?;
        Ok(replaced.map(|lease| self.observe(&lease)).is_some())
    }

    /// Keep acquiring and renewing until the process ends, publishing on
    /// `deadline` until when this replica may write (`None`: it may not).
    pub async fn run(mut self, deadline: watch::Sender<WriteDeadline>) {
        let mut renewed: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let attempt =
                tokio::time::timeout(self.config.retry_period * 2, self.try_acquire_or_renew()).await;
            let now_leading = match attempt {
                Ok(Ok(true)) => {
                    renewed = Some(started);
                    true
                }
                Ok(Ok(false)) => false,
                failed => {
                    let error = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    warn!(%error, lease = %self.config.name, "could not acquire or renew the lease");
                    renewed.is_some_and(|at| at.elapsed() < self.config.renew_deadline)
                }
            };
            if !now_leading {
                renewed = None;
            }
            let until = renewed.map(|at| at + self.config.renew_deadline);
            deadline.send_if_modified(|was| {
                if was.is_some() != until.is_some() {
                    info!(identity = %self.config.identity, leading = until.is_some(), "leadership changed");
                }
                let changed = *was != until;
                *was = until;
                changed
            });
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Give the lease up, so that another replica takes over at once (on shutdown).
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let Some(spec) =
            lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(&self.config.identity))
        else {
            return Ok(());
        };
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        self.api.replace(&self.config.name, &PostParams::default(), &lease).await.map(drop)
    }

    fn lease_duration(&self, spec: &LeaseSpec) -> Duration {
        spec.lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs)
    }

    /// Note the record; whether it has stayed unchanged for its lease duration.
    fn observe_record(&mut self, spec: &LeaseSpec) -> bool {
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let since = match &self.observed {
            Some((holder, renew, at)) if (holder, renew) == (&record.0, &record.1) => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record.0, record.1, since));
        since.elapsed() >= self.lease_duration(spec)
    }

    fn observe(&mut self, lease: &Lease) {
        self.observe_record(&lease.spec.clone().unwrap_or_default());
    }
}

/// The lease a write gave us, or `None` when another replica wrote first
/// (409: Conflict on replace, AlreadyExists on create).
fn taken(written: Result<Lease, kube::Error>) -> Result<Option<Lease>, kube::Error> {
    match written {
        Ok(lease) => Ok(Some(lease)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            acquire_time: Some(MicroTime("2025-12-31T00:00:00Z".parse().unwrap())),
            renew_time: Some(MicroTime("2025-12-31T23:59:59Z".parse().unwrap())),
            lease_transitions: Some(3),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    const FIFTEEN: Duration = Duration::from_secs(15);

    #[test]
    fn a_free_lease_is_taken() {
        let spec = claim(None, "a", false, now(), FIFTEEN).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(now())));
        let released = LeaseSpec { holder_identity: None, ..held_by("b") };
        assert_eq!(claim(Some(&released), "a", false, now(), FIFTEEN).unwrap().lease_transitions, Some(3));
    }

    #[test]
    fn a_valid_lease_of_another_is_left_alone() {
        assert_eq!(claim(Some(&held_by("b")), "a", false, now(), FIFTEEN), None);
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let spec = claim(Some(&held_by("b")), "a", true, now(), FIFTEEN).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(now())));
    }

    #[test]
    fn our_lease_is_renewed_keeping_its_acquire_time() {
        let spec = claim(Some(&held_by("a")), "a", false, now(), FIFTEEN).unwrap();
        assert_eq!(spec.renew_time, Some(MicroTime(now())));
        assert_eq!(spec.acquire_time, held_by("a").acquire_time);
        assert_eq!(spec.lease_transitions, Some(3));
    }

    type Send = tower_test::mock::SendResponse<http::Response<kube::client::Body>>;

    fn respond(send: Send, status: http::StatusCode, body: impl serde::Serialize) {
        let body = kube::client::Body::from(serde_json::to_vec(&body).unwrap());
        send.send_response(http::Response::builder().status(status).body(body).unwrap());
    }

    /// Two rounds against a mock API server: the lease does not exist and
    /// is created; then another replica holds it and nothing is written.
    #[tokio::test]
    async fn creates_a_missing_lease_and_respects_another_holder() {
        use http::{Method, StatusCode};

        let (mock, mut server) = tower_test::mock::pair();
        let config = LeaseConfig::new("lvs-system".into(), "lvs-controller".into(), "a".into());
        let mut elector = LeaderElector::new(Client::new(mock, "default"), config);
        let leases = "/apis/coordination.k8s.io/v1/namespaces/lvs-system/leases";
        let api_server = tokio::spawn(async move {
            let (request, send) = server.next_request().await.unwrap();
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::GET, &*format!("{leases}/lvs-controller"))
            );
            let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
            respond(send, StatusCode::NOT_FOUND, not_found);

            let (request, send) = server.next_request().await.unwrap();
            assert_eq!((request.method(), request.uri().path()), (&Method::POST, leases));
            let created: Lease =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
            assert_eq!(created.spec.as_ref().unwrap().holder_identity.as_deref(), Some("a"));
            respond(send, StatusCode::CREATED, created);

            let (_, send) = server.next_request().await.unwrap();
            let mut theirs = Lease { spec: Some(held_by("b")), ..Lease::default() };
            theirs.metadata.name = Some("lvs-controller".into());
            respond(send, StatusCode::OK, theirs);
        });
        assert!(elector.try_acquire_or_renew().await.unwrap(), "created: ours");
        assert!(!elector.try_acquire_or_renew().await.unwrap(), "held by b: not ours, no write");
        tokio::time::timeout(Duration::from_secs(1), api_server).await.unwrap().unwrap();
    }

    /// The published write deadline is the start of the last successful
    /// renewal plus the renew deadline: attempts that hang do not extend it,
    /// and it passes (10 s) before the loop gives leadership up (12 s, when
    /// its hanging attempt times out), which is why writes consult it.
    #[tokio::test(start_paused = true)]
    async fn the_write_deadline_is_the_last_renewal_plus_the_renew_deadline() {
        use http::{Method, StatusCode};

        let (mock, mut server) = tower_test::mock::pair();
        let config = LeaseConfig::new("lvs-system".into(), "lvs-controller".into(), "a".into());
        let elector = LeaderElector::new(Client::new(mock, "default"), config);
        let (sender, mut deadline) = watch::channel(None);
        let start = Instant::now();
        tokio::spawn(elector.run(sender));

        let (_, send) = server.next_request().await.expect("a read of the lease");
        let mut ours = Lease { spec: Some(held_by("a")), ..Lease::default() };
        ours.metadata.name = Some("lvs-controller".into());
        ours.metadata.resource_version = Some("7".into());
        respond(send, StatusCode::OK, &ours);
        let (request, send) = server.next_request().await.expect("the renewal");
        assert_eq!(request.method(), Method::PUT);
        let renewed: Lease =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        respond(send, StatusCode::OK, renewed);
        deadline.changed().await.unwrap();
        assert_eq!(*deadline.borrow_and_update(), Some(start + Duration::from_secs(10)));

        // From now on the API server takes the reads and never answers.
        let mut hanging = Vec::new();
        for at in [2, 8] {
            let (_, send) = server.next_request().await.expect("an attempt");
            assert_eq!(Instant::now() - start, Duration::from_secs(at));
            hanging.push(send);
        }
        assert_eq!(*deadline.borrow(), Some(start + Duration::from_secs(10)), "not extended");
        deadline.changed().await.unwrap();
        assert_eq!(*deadline.borrow(), None);
        assert_eq!(Instant::now() - start, Duration::from_secs(12));
    }
}
