//! The status of a Service of type LoadBalancer that is ours, made from its
//! outcome in the translation, and the Events its changes deserve. Pure: the
//! clock is an argument.
//!
//! The controller owns, by server-side apply, `status.loadBalancer.ingress`
//! (one entry per address, `ipMode: Proxy`) and one condition,
//! [`ACCEPTED`] (reasons `Accepted`, `NoAddress`, `Conflict`, `Invalid`,
//! `VipNotAllowed`); conditions of other writers are left alone.

use std::net::IpAddr;

use k8s_openapi::{
    api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::runtime::events::EventType;
use lvs_crds::{
    service_lb::IP_MODE,
    translate::{LoadBalancerOutcome, Verdict},
    validation::parse_ip,
};

use crate::status::Notice;

/// Type of the Service condition the controller writes: prefixed, since
/// Services carry conditions of other writers.
pub const ACCEPTED: &str = "lvs.dev/Accepted";

/// The part of a Service's status the controller writes, for `outcome`.
/// `lastTransitionTime` moves only when the condition's status changes.
pub fn status(service: &Service, outcome: &LoadBalancerOutcome, now: &Time) -> ServiceStatus {
    let accepted = outcome.verdict == Verdict::Accepted;
    let (status, message) = if accepted {
        let addresses: Vec<String> = outcome.addresses.iter().map(ToString::to_string).collect();
        ("True", format!("serving {}", addresses.join(", ")))
    } else {
        ("False", outcome.verdict.message())
    };
    let old = service.status.as_ref().and_then(|s| s.conditions.as_ref());
    let last_transition_time = old
        .into_iter()
        .flatten()
        .find(|c| c.type_ == ACCEPTED && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    let ingress = outcome
        .addresses
        .iter()
        .map(|address| LoadBalancerIngress {
            ip: Some(address.to_string()),
            ip_mode: Some(IP_MODE.to_owned()),
            ..LoadBalancerIngress::default()
        })
        .collect();
    ServiceStatus {
        load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }),
        conditions: Some(vec![Condition {
            type_: ACCEPTED.to_owned(),
            status: status.to_owned(),
            reason: outcome.verdict.reason().to_owned(),
            message,
            observed_generation: service.metadata.generation,
            last_transition_time,
        }]),
    }
}

/// Whether the Service's status lacks what `desired` says: its ingress
/// differs, or its [`ACCEPTED`] condition does.
pub fn differs(current: Option<&ServiceStatus>, desired: &ServiceStatus) -> bool {
    let ingress = |s: Option<&ServiceStatus>| {
        s.and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.clone()).unwrap_or_default()
    };
    ingress(current) != ingress(Some(desired)) || accepted(current) != accepted(Some(desired))
}

/// The IP addresses of `status.loadBalancer.ingress`.
pub fn ingress_addresses(status: Option<&ServiceStatus>) -> Vec<IpAddr> {
    let ingress = status.and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref().and_then(parse_ip)).collect()
}

fn accepted(status: Option<&ServiceStatus>) -> Option<&Condition> {
    status.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == ACCEPTED))
}

/// The Events a change of the condition deserves: a Warning for each new
/// refusal reason, a Normal one when the Service becomes served.
pub fn transitions(old: Option<&ServiceStatus>, new: &ServiceStatus) -> Vec<Notice> {
    let (before, Some(after)) = (accepted(old), accepted(Some(new))) else { return vec![] };
    if before.is_some_and(|b| b.status == after.status && b.reason == after.reason) {
        return vec![];
    }
    let type_ = if after.status == "True" { EventType::Normal } else { EventType::Warning };
    vec![Notice { type_, reason: after.reason.clone(), action: "Accept", note: after.message.clone() }]
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use lvs_crds::lvs_node::OwnerKind;
    use pretty_assertions::assert_eq;

    use super::*;

    fn time(text: &str) -> Time {
        Time(text.parse::<Timestamp>().unwrap())
    }

    fn served(addresses: &[&str]) -> LoadBalancerOutcome {
        LoadBalancerOutcome {
            verdict: Verdict::Accepted,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn web(status: Option<ServiceStatus>) -> Service {
        let mut service = Service::default();
        service.metadata.generation = Some(3);
        service.status = status;
        service
    }

    #[test]
    fn accepted_services_show_their_addresses_in_proxy_mode() {
        let status =
            status(&web(None), &served(&["192.0.2.10", "2001:db8::10"]), &time("2026-01-01T00:00:00Z"));
        let ingress = status.load_balancer.as_ref().unwrap().ingress.clone().unwrap();
        let ingress: Vec<(&str, &str)> =
            ingress.iter().map(|i| (i.ip.as_deref().unwrap(), i.ip_mode.as_deref().unwrap())).collect();
        assert_eq!(ingress, [("192.0.2.10", "Proxy"), ("2001:db8::10", "Proxy")]);
        let condition = &status.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (
                condition.type_.as_str(),
                condition.status.as_str(),
                condition.reason.as_str(),
                condition.observed_generation
            ),
            ("lvs.dev/Accepted", "True", "Accepted", Some(3))
        );
        assert_eq!(condition.message, "serving 192.0.2.10, 2001:db8::10");
        assert_eq!(ingress_addresses(Some(&status)), served(&["192.0.2.10", "2001:db8::10"]).addresses);
    }

    #[test]
    fn refused_services_have_no_ingress_and_say_why() {
        let outcome = LoadBalancerOutcome { verdict: Verdict::NoAddress, addresses: vec![] };
        let status = status(&web(None), &outcome, &time("2026-01-01T00:00:00Z"));
        assert_eq!(status.load_balancer.as_ref().unwrap().ingress, Some(vec![]));
        let condition = &status.conditions.as_ref().unwrap()[0];
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", "NoAddress"));
        let notices = transitions(None, &status);
        assert_eq!(notices.len(), 1);
        assert_eq!((notices[0].type_, notices[0].reason.as_str()), (EventType::Warning, "NoAddress"));
    }

    #[test]
    fn an_unchanged_outcome_writes_nothing_and_keeps_the_transition_time() {
        let first = status(&web(None), &served(&["192.0.2.10"]), &time("2026-01-01T00:00:00Z"));
        let mut current = first.clone();
        // Another writer's condition is not ours to compare.
        current
            .conditions
            .as_mut()
            .unwrap()
            .push(Condition { type_: "Other".into(), ..first.conditions.clone().unwrap()[0].clone() });
        let again =
            status(&web(Some(current.clone())), &served(&["192.0.2.10"]), &time("2026-01-01T00:05:00Z"));
        assert_eq!(again, first);
        assert!(!differs(Some(&current), &again));
        assert!(transitions(Some(&current), &again).is_empty());

        let conflict = LoadBalancerOutcome {
            verdict: Verdict::Conflict {
                winner: ("default".into(), "old".into()),
                winner_kind: OwnerKind::Service,
                key: "TCP 192.0.2.10:80".into(),
            },
            addresses: vec![],
        };
        let lost = status(&web(Some(current.clone())), &conflict, &time("2026-01-01T00:10:00Z"));
        assert!(differs(Some(&current), &lost));
        assert_eq!(lost.conditions.as_ref().unwrap()[0].last_transition_time, time("2026-01-01T00:10:00Z"));
        assert_eq!(transitions(Some(&current), &lost)[0].reason, "Conflict");
    }
}
