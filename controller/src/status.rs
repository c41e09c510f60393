//! A VirtualService's status, made from the translation (its verdict and the
//! nodes that direct it) and the agents' reports in their LvsNode statuses;
//! and the Events its changes deserve. Pure: the clock is an argument.
//!
//! Conditions:
//! - `Accepted`: the verdict (reasons `Accepted`, `Conflict`, `Invalid`, and
//!   the pools' refusals such as `NoPool`, `VipNotInPool`, `PoolExhausted`,
//!   `VrrpConflict`).
//! - `Programmed`: every director reports the VirtualService's current
//!   generation applied without error.
//! - `Healthy`: at least one real server passes its health check, as the
//!   directors report it.
//! - `Ready`: the three above in one, for `kubectl wait` and Argo CD: True
//!   when each is, otherwise the first that is not (False before Unknown),
//!   with its reason.
//! - `Reconciling` and `Stalled`, kstatus' abnormal-true conditions (Flux's
//!   health checks read them with `observedGeneration`): Reconciling while
//!   the directors have not all applied or reported the current generation;
//!   Stalled while only a person can help (not accepted, a programming error,
//!   no director).
//!
//! `lastTransitionTime` moves only when a condition's status changes, so an
//! unchanged cluster gives an identical status and the controller skips the
//! write.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{ResourceExt, runtime::events::EventType};
use lvs_crds::{
    LvsNode, VipPool, VirtualService, VirtualServiceStatus,
    allocation::PoolUsage,
    lvs_node::{DestinationReport, IpvsService},
    translate::{Verdict, VipAllocation},
    vip_pool::{VipPoolStatus, conditions::VALID},
    virtual_service::{
        DirectorStatus, RealServerStatus,
        conditions::{ACCEPTED, HEALTHY, PROGRAMMED, READY, RECONCILING, STALLED},
    },
};

use crate::plan::is_owner;

/// Reasons of the `Programmed` and `Healthy` conditions (those of `Accepted`
/// are the verdict's, [`Verdict::reason`]).
pub mod reasons {
    /// Programmed=True: every director applied the current generation.
    pub const PROGRAMMED: &str = "Programmed";
    /// Programmed=False: some director has not yet reported the current generation.
    pub const PENDING: &str = "Pending";
    /// Programmed=False: an agent reported an error for this service.
    pub const PROGRAMMING_FAILED: &str = "ProgrammingFailed";
    /// Programmed=False: no node matches the directors' selector.
    pub const NO_DIRECTORS: &str = "NoDirectors";
    /// Programmed=False and Healthy=False: the VirtualService is not accepted.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    /// Healthy=True: at least one real server is healthy.
    pub const HEALTHY: &str = "Healthy";
    /// Healthy=False: every real server fails its health check.
    pub const NO_HEALTHY_REAL_SERVERS: &str = "NoHealthyRealServers";
    /// Healthy=False: the service resolved to no real server.
    pub const NO_REAL_SERVERS: &str = "NoRealServers";
    /// Ready=True: accepted, programmed on every director, healthy.
    pub const READY: &str = "Ready";
    /// Reconciling=False: every director applied and reported the current generation.
    pub const RECONCILED: &str = "Reconciled";
    /// Stalled=False: nothing waits on a person.
    pub const NOT_STALLED: &str = "NotStalled";
}

/// A condition's (status, reason, message).
type Summary = (&'static str, &'static str, String);

/// The status `service` should have. `desired` is the translation's output,
/// `reported` the LvsNodes as the agents last reported on them.
pub fn aggregate(
    service: &VirtualService,
    verdict: &Verdict,
    desired: &[LvsNode],
    reported: &[Arc<LvsNode>],
    now: &Time,
) -> VirtualServiceStatus {
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let owner = (namespace.as_str(), name.as_str());
    let generation = service.metadata.generation;
    let old = service.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let condition = |type_: &str, (status, reason, message): (&str, &str, String)| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    };

    let accepted =
        (if *verdict == Verdict::Accepted { "True" } else { "False" }, verdict.reason(), verdict.message());
    let (ipvs_service, directors) = directors_of(owner, desired);
    let observed: Vec<Observed<'_>> = directors
        .iter()
        .map(|(node, revision)| observe(node, revision, owner, generation, ipvs_service, reported))
        .collect();
    let real_servers = ipvs_service.map(|s| real_server_rows(s, &observed)).unwrap_or_default();

    let (programmed, healthy) = if *verdict == Verdict::Accepted {
        (programmed(&observed), healthy(&real_servers, &observed))
    } else {
        let message = format!("not accepted: {}", verdict.reason());
        (("False", reasons::NOT_ACCEPTED, message.clone()), ("False", reasons::NOT_ACCEPTED, message))
    };

    let ready = ready([(ACCEPTED, &accepted), (PROGRAMMED, &programmed), (HEALTHY, &healthy)]);
    let reconciling = reconciling(&accepted, &programmed, &healthy);
    let stalled = stalled(&accepted, &programmed);
    VirtualServiceStatus {
        observed_generation: generation,
        // The allocation's, see [`with_allocation`].
        vip: None,
        pool: None,
        conditions: vec![
            condition(ACCEPTED, accepted),
            condition(PROGRAMMED, programmed),
            condition(HEALTHY, healthy),
            condition(READY, ready),
            condition(RECONCILING, reconciling),
            condition(STALLED, stalled),
        ],
        real_server_count: Some(u32::try_from(real_servers.len()).unwrap_or(u32::MAX)),
        directors: observed.into_iter().map(|o| o.row).collect(),
        real_servers,
    }
}

/// `status` with the allocation shown: the VIP and pool (read back as the
/// previous allocation by the next translation).
pub fn with_allocation(
    mut status: VirtualServiceStatus,
    allocation: Option<&VipAllocation>,
) -> VirtualServiceStatus {
    status.vip = allocation.and_then(|a| a.vip).map(|vip| vip.to_string());
    status.pool = allocation.map(|a| a.pool.clone());
    status
}

/// The status a VipPool should have: its counts, and `Valid` (False with
/// the entries that do not parse; the others are used).
pub fn pool_status(pool: &VipPool, usage: &PoolUsage, now: &Time) -> VipPoolStatus {
    let (status, reason, message) = match usage.errors.as_slice() {
        [] => ("True", "Valid", "every address entry parses".to_owned()),
        errors => (
            "False",
            "InvalidAddresses",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        ),
    };
    let old = pool.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let valid = Condition {
        type_: VALID.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: pool.metadata.generation,
        last_transition_time: old
            .iter()
            .find(|c| c.type_ == VALID && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    };
    VipPoolStatus { used: usage.used, free: usage.free, conditions: vec![valid] }
}

/// The IPVS service the translation made of `owner`, and its director nodes
/// with the revision each node's state should reach.
fn directors_of<'a>(
    owner: (&str, &str),
    desired: &'a [LvsNode],
) -> (Option<&'a IpvsService>, BTreeMap<&'a str, &'a str>) {
    let mut service = None;
    let mut directors = BTreeMap::new();
    for object in desired {
        let services = object.spec.director.iter().flat_map(|d| &d.services);
        for ipvs_service in services.filter(|s| is_owner(&s.owner, owner)) {
            service.get_or_insert(&**ipvs_service);
            directors.insert(object.spec.node.as_str(), object.spec.revision.as_str());
        }
    }
    (service, directors)
}

/// One director as its agent reports it.
struct Observed<'a> {
    row: DirectorStatus,
    /// The agent's error for this service, once it applied the current state.
    error: Option<String>,
    /// The agent's view of the destinations (possibly of an older state).
    destinations: &'a [DestinationReport],
}

fn observe<'a>(
    node: &str,
    revision: &str,
    owner: (&str, &str),
    generation: Option<i64>,
    service: Option<&IpvsService>,
    reported: &'a [Arc<LvsNode>],
) -> Observed<'a> {
    let objects: Vec<&LvsNode> = reported.iter().filter(|o| o.spec.node == node).map(AsRef::as_ref).collect();
    // Every chunk of the node holds the desired revision, and the agent applied it.
    let applied = !objects.is_empty()
        && objects.iter().all(|o| {
            o.spec.revision == revision
                && o.status.as_ref().and_then(|s| s.applied_revision.as_deref()) == Some(revision)
        });
    let statuses = || objects.iter().filter_map(|o| o.status.as_ref());
    let report = statuses().flat_map(|s| &s.services).find(|r| is_owner(&r.owner, owner));
    let error = report.filter(|_| applied).and_then(|r| r.error.clone());
    let programmed = applied
        && report
            .is_some_and(|r| r.programmed && r.error.is_none() && Some(r.owner.generation) == generation);
    let vip: Option<IpAddr> = service.and_then(|s| s.key.address);
    let vrrp_state =
        vip.and_then(|vip| statuses().flat_map(|s| &s.vips).find(|v| v.address == vip)).map(|v| v.vrrp_state);
    Observed {
        row: DirectorStatus { node: node.to_owned(), programmed, vrrp_state },
        error,
        destinations: report.map(|r| r.destinations.as_slice()).unwrap_or_default(),
    }
}

/// One row per destination of the service: healthy when every director that
/// reports it says so, the lowest weight any director holds.
fn real_server_rows(service: &IpvsService, observed: &[Observed<'_>]) -> Vec<RealServerStatus> {
    service
        .destinations
        .iter()
        .map(|destination| {
            let seen: Vec<&DestinationReport> = observed
                .iter()
                .flat_map(|o| o.destinations)
                .filter(|r| r.address == destination.address && r.port == destination.port)
                .collect();
            RealServerStatus {
                address: destination.address.to_string(),
                port: (destination.port != 0).then_some(destination.port),
                healthy: !seen.is_empty() && seen.iter().all(|r| r.healthy),
                weight: seen.iter().map(|r| r.weight).min().unwrap_or(destination.weight),
            }
        })
        .collect()
}

fn programmed(observed: &[Observed<'_>]) -> Summary {
    let errors: Vec<String> =
        observed.iter().filter_map(|o| Some(format!("{}: {}", o.row.node, o.error.as_ref()?))).collect();
    let waiting: Vec<&str> =
        observed.iter().filter(|o| !o.row.programmed).map(|o| o.row.node.as_str()).collect();
    if observed.is_empty() {
        ("False", reasons::NO_DIRECTORS, "no node matches the directors' nodeSelector".into())
    } else if !errors.is_empty() {
        ("False", reasons::PROGRAMMING_FAILED, errors.join("; "))
    } else if waiting.is_empty() {
        (
            "True",
            reasons::PROGRAMMED,
            format!("programmed on {} of {} directors", observed.len(), observed.len()),
        )
    } else {
        let done = observed.len() - waiting.len();
        let message = format!(
            "programmed on {done} of {} directors; waiting for {}",
            observed.len(),
            waiting.join(", ")
        );
        ("False", reasons::PENDING, message)
    }
}

fn healthy(rows: &[RealServerStatus], observed: &[Observed<'_>]) -> Summary {
    let healthy = rows.iter().filter(|r| r.healthy).count();
    if rows.is_empty() {
        ("False", reasons::NO_REAL_SERVERS, "the service resolved to no real server".into())
    } else if observed.iter().all(|o| o.destinations.is_empty()) {
        ("Unknown", reasons::PENDING, "no director has reported on the real servers yet".into())
    } else if healthy > 0 {
        ("True", reasons::HEALTHY, format!("{healthy} of {} real servers healthy", rows.len()))
    } else {
        ("False", reasons::NO_HEALTHY_REAL_SERVERS, format!("none of {} real servers is healthy", rows.len()))
    }
}

/// `Ready`: True when every part is; otherwise the first False part (else
/// the first Unknown), named in the message.
fn ready(parts: [(&str, &Summary); 3]) -> Summary {
    let first = |status: &str| parts.iter().find(|(_, part)| part.0 == status);
    match first("False").or_else(|| first("Unknown")) {
        Some((type_, (status, reason, message))) => (status, reason, format!("{type_}: {message}")),
        None => ("True", reasons::READY, "accepted, programmed on every director, and healthy".into()),
    }
}

/// `Reconciling`: True while an accepted service waits for its directors.
fn reconciling(accepted: &Summary, programmed: &Summary, healthy: &Summary) -> Summary {
    let waiting = [programmed, healthy].into_iter().find(|part| part.1 == reasons::PENDING);
    match waiting {
        Some((_, reason, message)) if accepted.0 == "True" => ("True", reason, message.clone()),
        _ => ("False", reasons::RECONCILED, "nothing waits for the directors".into()),
    }
}

/// `Stalled`: True while only a person can help.
fn stalled(accepted: &Summary, programmed: &Summary) -> Summary {
    if accepted.0 != "True" {
        return ("True", accepted.1, accepted.2.clone());
    }
    match programmed {
        (_, reason @ (reasons::PROGRAMMING_FAILED | reasons::NO_DIRECTORS), message) => {
            ("True", reason, message.clone())
        }
        _ => ("False", reasons::NOT_STALLED, "nothing waits on a person".into()),
    }
}

/// An Event to publish about a VirtualService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
}

/// The Events that the change `old` -> `new` deserves, once per transition: a
/// Warning when a condition turns False for a reason a person must act on
/// (not `Pending`, and not `NotAccepted`, which the `Accepted` Warning already
/// explains), a Normal event when the service becomes Programmed.
pub fn transitions(old: Option<&VirtualServiceStatus>, new: &VirtualServiceStatus) -> Vec<Notice> {
    let old = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    new.conditions
        .iter()
        .filter(|c| !old.iter().any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason))
        .filter_map(|c| {
            // Ready, Reconciling and Stalled repeat these three: no Events of their own.
            let action = match c.type_.as_str() {
                ACCEPTED => "Accept",
                PROGRAMMED => "Program",
                HEALTHY => "CheckHealth",
                _ => return None,
            };
            let type_ = match (c.status.as_str(), c.reason.as_str()) {
                ("False", reasons::PENDING | reasons::NOT_ACCEPTED) => return None,
                ("False", _) => EventType::Warning,
                ("True", reasons::PROGRAMMED) => EventType::Normal,
                _ => return None,
            };
            Some(Notice { type_, reason: c.reason.clone(), action, note: c.message.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use lvs_crds::{
        LvsNodeSpec, LvsNodeStatus, ValidationError,
        lvs_node::{Destination, DirectorState, IpvsServiceKey, ServiceOwner, ServiceReport, VipReport},
        virtual_service::{AddressFamily, Forwarding, Protocol, Scheduler, VrrpState},
    };
    use pretty_assertions::assert_eq;

    use super::*;

    fn time(text: &str) -> Time {
        Time(text.parse::<Timestamp>().unwrap())
    }

    fn web(generation: i64) -> VirtualService {
        let mut service = VirtualService::new("web", Default::default());
        service.metadata.namespace = Some("default".into());
        service.metadata.generation = Some(generation);
        service
    }

    fn owner(generation: i64) -> ServiceOwner {
        ServiceOwner { namespace: "default".into(), name: "web".into(), generation, ..Default::default() }
    }

    const VIP: &str = "192.0.2.10";
    const REAL_SERVERS: [&str; 2] = ["198.51.100.1", "198.51.100.2"];

    fn ipvs_service(generation: i64) -> IpvsService {
        IpvsService {
            owner: owner(generation),
            key: IpvsServiceKey {
                family: AddressFamily::IPv4,
                address: Some(VIP.parse().unwrap()),
                port: 80,
                protocol: Protocol::TCP,
                fwmark: None,
            },
            scheduler: Scheduler::Wlc,
            scheduler_flags: vec![],
            persistence: None,
            one_packet: false,
            destinations: REAL_SERVERS
                .iter()
                .map(|address| Destination {
                    address: address.parse().unwrap(),
                    port: 80,
                    weight: 1,
                    forwarding: Forwarding::DirectRouting,
                    tunnel: None,
                    upper_threshold: 0,
                    lower_threshold: 0,
                })
                .collect(),
            health_check: None,
            drain_seconds: 0,
            sorry_server: None,
        }
    }

    /// What the translation would give for `web` directed by `nodes`.
    fn desired(nodes: &[&str], generation: i64) -> Vec<LvsNode> {
        nodes
            .iter()
            .map(|node| {
                let spec = LvsNodeSpec {
                    node: (*node).into(),
                    chunks: 1,
                    revision: format!("rev-{generation}"),
                    director: Some(DirectorState {
                        services: vec![ipvs_service(generation).into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                LvsNode::new(node, spec)
            })
            .collect()
    }

    /// The agent's report on `object`: applied, with the health of each real server.
    fn report(object: &LvsNode, healthy: [bool; 2], error: Option<&str>) -> Arc<LvsNode> {
        let service = &object.spec.director.as_ref().unwrap().services[0];
        let destinations = service
            .destinations
            .iter()
            .zip(healthy)
            .map(|(d, healthy)| DestinationReport {
                address: d.address,
                port: d.port,
                healthy,
                weight: if healthy { d.weight } else { 0 },
            })
            .collect();
        let mut object = object.clone();
        object.status = Some(LvsNodeStatus {
            applied_revision: Some(object.spec.revision.clone()),
            services: vec![ServiceReport {
                owner: service.owner.clone(),
                key: service.key.clone(),
                programmed: error.is_none(),
                error: error.map(Into::into),
                destinations,
            }],
            vips: vec![VipReport {
                address: VIP.parse().unwrap(),
                vrrp_state: VrrpState::Master,
                held: true,
            }],
            ..Default::default()
        });
        Arc::new(object)
    }

    fn summary(status: &VirtualServiceStatus) -> Vec<(String, String, String)> {
        status.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect()
    }

    fn expect(conditions: [(&str, &str, &str); 6]) -> Vec<(String, String, String)> {
        conditions.iter().map(|(t, s, r)| ((*t).into(), (*s).into(), (*r).into())).collect()
    }

    #[test]
    fn programmed_and_healthy_when_every_director_reports_the_generation() {
        let desired = desired(&["lvs1", "lvs2"], 3);
        let reported =
            vec![report(&desired[0], [true, false], None), report(&desired[1], [true, true], None)];
        let status =
            aggregate(&web(3), &Verdict::Accepted, &desired, &reported, &time("2026-01-01T00:00:00Z"));
        assert_eq!(
            summary(&status),
            expect([
                ("Accepted", "True", "Accepted"),
                ("Programmed", "True", "Programmed"),
                ("Healthy", "True", "Healthy"),
                ("Ready", "True", "Ready"),
                ("Reconciling", "False", "Reconciled"),
                ("Stalled", "False", "NotStalled"),
            ])
        );
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.real_server_count, Some(2));
        assert_eq!(
            status.directors,
            ["lvs1", "lvs2"]
                .map(|node| DirectorStatus {
                    node: node.into(),
                    programmed: true,
                    vrrp_state: Some(VrrpState::Master)
                })
                .to_vec()
        );
        // .2 is unhealthy on lvs1: not healthy, weight 0.
        assert_eq!(
            status.real_servers,
            vec![
                RealServerStatus {
                    address: REAL_SERVERS[0].into(),
                    port: Some(80),
                    healthy: true,
                    weight: 1,
                },
                RealServerStatus {
                    address: REAL_SERVERS[1].into(),
                    port: Some(80),
                    healthy: false,
                    weight: 0,
                },
            ]
        );
        assert_eq!(status.conditions[2].message, "1 of 2 real servers healthy");
    }

    #[test]
    fn pending_until_every_director_applied_the_current_generation() {
        let old = desired(&["lvs1"], 1);
        let new = desired(&["lvs1", "lvs2"], 2);
        // lvs1 still runs generation 1; lvs2 has not reported at all.
        let reported = vec![report(&old[0], [true, true], None)];
        let status = aggregate(&web(2), &Verdict::Accepted, &new, &reported, &time("2026-01-01T00:00:00Z"));
        assert_eq!(status.conditions[1].reason, reasons::PENDING);
        assert_eq!(status.conditions[1].message, "programmed on 0 of 2 directors; waiting for lvs1, lvs2");
        // The stale report still tells the health of the real servers.
        assert_eq!(status.conditions[2].status, "True");
    }

    #[test]
    fn agent_errors_make_programming_fail() {
        let desired = desired(&["lvs1"], 1);
        let reported = vec![report(&desired[0], [false, false], Some("EEXIST"))];
        let status =
            aggregate(&web(1), &Verdict::Accepted, &desired, &reported, &time("2026-01-01T00:00:00Z"));
        assert_eq!(
            summary(&status),
            expect([
                ("Accepted", "True", "Accepted"),
                ("Programmed", "False", "ProgrammingFailed"),
                ("Healthy", "False", "NoHealthyRealServers"),
                ("Ready", "False", "ProgrammingFailed"),
                ("Reconciling", "False", "Reconciled"),
                ("Stalled", "True", "ProgrammingFailed"),
            ])
        );
        assert_eq!(status.conditions[1].message, "lvs1: EEXIST");
    }

    #[test]
    fn no_directors_and_no_reports() {
        let status = aggregate(&web(1), &Verdict::Accepted, &[], &[], &time("2026-01-01T00:00:00Z"));
        assert_eq!(status.conditions[1].reason, reasons::NO_DIRECTORS);
        assert_eq!(status.conditions[2].reason, reasons::NO_REAL_SERVERS);
        let desired = desired(&["lvs1"], 1);
        let status = aggregate(&web(1), &Verdict::Accepted, &desired, &[], &time("2026-01-01T00:00:00Z"));
        assert_eq!(status.conditions[2].status, "Unknown");
        assert_eq!(status.real_server_count, Some(2));
    }

    #[test]
    fn refused_services_say_why() {
        let conflict = Verdict::Conflict {
            winner: ("default".into(), "old".into()),
            winner_kind: lvs_crds::lvs_node::OwnerKind::VirtualService,
            key: "192.0.2.10:80/TCP".into(),
        };
        let status = aggregate(&web(1), &conflict, &[], &[], &time("2026-01-01T00:00:00Z"));
        assert_eq!(
            summary(&status),
            expect([
                ("Accepted", "False", "Conflict"),
                ("Programmed", "False", "NotAccepted"),
                ("Healthy", "False", "NotAccepted"),
                ("Ready", "False", "Conflict"),
                ("Reconciling", "False", "Reconciled"),
                ("Stalled", "True", "Conflict"),
            ])
        );
        assert_eq!(status.conditions[0].message, conflict.message());
        let invalid = Verdict::Invalid(vec![ValidationError {
            field: "spec.port".into(),
            value: Some("0".into()),
            message: "port 0 needs persistence".into(),
        }]);
        let status = aggregate(&web(1), &invalid, &[], &[], &time("2026-01-01T00:00:00Z"));
        assert_eq!(status.conditions[0].reason, "Invalid");
        assert_eq!(status.conditions[0].message, "spec.port: 0: port 0 needs persistence");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let desired = desired(&["lvs1"], 1);
        let mut service = web(1);
        let first = aggregate(&service, &Verdict::Accepted, &desired, &[], &time("2026-01-01T00:00:00Z"));
        service.status = Some(first.clone());
        // Same inputs later: byte-identical status, so nothing to write.
        let again = aggregate(&service, &Verdict::Accepted, &desired, &[], &time("2026-01-01T00:05:00Z"));
        assert_eq!(again, first);
        // The agent reports: Programmed and Healthy flip, Accepted keeps its time.
        let reported = vec![report(&desired[0], [true, true], None)];
        let later =
            aggregate(&service, &Verdict::Accepted, &desired, &reported, &time("2026-01-01T00:10:00Z"));
        let times: Vec<String> =
            later.conditions.iter().map(|c| c.last_transition_time.0.to_string()).collect();
        // Ready, Reconciling (Pending -> Reconciled) flip too; Stalled stays False.
        assert_eq!(
            times,
            [
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:10:00Z",
                "2026-01-01T00:10:00Z",
                "2026-01-01T00:10:00Z",
                "2026-01-01T00:10:00Z",
                "2026-01-01T00:00:00Z"
            ]
        );
    }

    /// Before the agents report: Ready False by the first part that is not
    /// True, Reconciling True; no director at all: Stalled.
    #[test]
    fn ready_sums_up_and_reconciling_waits_for_the_directors() {
        let desired = desired(&["lvs1"], 1);
        let status = aggregate(&web(1), &Verdict::Accepted, &desired, &[], &time("2026-01-01T00:00:00Z"));
        assert_eq!(
            summary(&status),
            expect([
                ("Accepted", "True", "Accepted"),
                ("Programmed", "False", "Pending"),
                ("Healthy", "Unknown", "Pending"),
                ("Ready", "False", "Pending"),
                ("Reconciling", "True", "Pending"),
                ("Stalled", "False", "NotStalled"),
            ])
        );
        assert_eq!(
            status.conditions[3].message,
            "Programmed: programmed on 0 of 1 directors; waiting for lvs1"
        );
        let nowhere = aggregate(&web(1), &Verdict::Accepted, &[], &[], &time("2026-01-01T00:00:00Z"));
        let stalled = &nowhere.conditions[5];
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "NoDirectors"));
        // Only the three conditions they sum up give Events.
        let notices: Vec<(&str, String)> =
            transitions(None, &nowhere).into_iter().map(|n| (n.action, n.reason)).collect();
        assert_eq!(notices, [("Program", "NoDirectors".into()), ("CheckHealth", "NoRealServers".into())]);
    }

    #[test]
    fn events_once_per_transition() {
        let desired = desired(&["lvs1"], 1);
        let conflict = Verdict::Conflict {
            winner: ("default".into(), "old".into()),
            winner_kind: lvs_crds::lvs_node::OwnerKind::VirtualService,
            key: "k".into(),
        };
        let now = time("2026-01-01T00:00:00Z");
        let mut service = web(1);
        let refused = aggregate(&service, &conflict, &[], &[], &now);
        let notices = transitions(None, &refused);
        assert_eq!(
            notices,
            vec![Notice {
                type_: EventType::Warning,
                reason: "Conflict".into(),
                action: "Accept",
                note: conflict.message()
            }]
        );
        // The same verdict again: no new event.
        service.status = Some(refused.clone());
        assert_eq!(transitions(Some(&refused), &aggregate(&service, &conflict, &[], &[], &now)), vec![]);
        // Accepted and programmed: one Normal event; pending says nothing.
        let pending = aggregate(&service, &Verdict::Accepted, &desired, &[], &now);
        assert_eq!(transitions(Some(&refused), &pending), vec![]);
        let reported = vec![report(&desired[0], [true, true], None)];
        let programmed = aggregate(&service, &Verdict::Accepted, &desired, &reported, &now);
        let reasons: Vec<String> =
            transitions(Some(&pending), &programmed).into_iter().map(|n| n.reason).collect();
        assert_eq!(reasons, ["Programmed"]);
    }
}
