//! Which VirtualServices a change of another object concerns. Pure: the
//! controller's watches call these with the object and the VirtualService
//! store. They err on the side of too many: a needless reconcile writes
//! nothing, a missed one leaves a stale status until the periodic resync.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use lvs_crds::{
    LvsNode, VipPool, VirtualService,
    lvs_node::OwnerKind,
    service_lb,
    translate::{DIRECTOR_LABEL, Translation},
    virtual_service::conditions::ACCEPTED,
};

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The VirtualServices a Node may matter to: those whose director or real
/// server selector matches its labels now, and those whose status lists it
/// (as a director, or one of its addresses as a real server), which covers a
/// node that stopped matching.
pub fn for_node(
    node: &Node,
    services: &[Arc<VirtualService>],
    pools: &[Arc<VipPool>],
) -> Vec<ObjectRef<VirtualService>> {
    let name = node.name_any();
    let labels = node.labels();
    let addresses = addresses(node);
    // The pools whose directors or real servers the node may be: their
    // selectors decide, not the VirtualServices' own.
    let pool_nodes: Vec<String> = pools
        .iter()
        .filter(|pool| {
            let directors = pool.spec.directors.as_ref().map(|d| &d.node_selector).filter(|s| !s.is_empty());
            let directs = match directors {
                Some(selector) => matches(selector, labels),
                None => labels.get(DIRECTOR_LABEL.0).map(String::as_str) == Some(DIRECTOR_LABEL.1),
            };
            directs || pool.spec.real_server_node_selector.as_ref().is_some_and(|s| matches(s, labels))
        })
        .map(|pool| pool.name_any())
        .collect();
    services
        .iter()
        .filter(|service| {
            let spec = &service.spec;
            // As the translation: no (or an empty) selector means the director label.
            let directs = match spec.directors.as_ref().map(|d| &d.node_selector).filter(|s| !s.is_empty()) {
                Some(selector) => matches(selector, labels),
                None => labels.get(DIRECTOR_LABEL.0).map(String::as_str) == Some(DIRECTOR_LABEL.1),
            };
            let serves =
                spec.real_server_selector.as_ref().is_some_and(|s| matches(&s.node_selector, labels));
            let listed = service.status.as_ref().is_some_and(|status| {
                status.directors.iter().any(|d| d.node == name)
                    || status.real_servers.iter().any(|r| addresses.contains(&r.address.as_str()))
            });
            let in_pool =
                service.status.as_ref().and_then(|s| s.pool.as_ref()).is_some_and(|p| pool_nodes.contains(p));
            directs || serves || listed || in_pool
        })
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// The VirtualServices a VipPool may matter to: all, since a pool's change
/// can move allocations (overlaps, exhaustion) of any namespace.
pub fn for_vip_pool(_pool: &VipPool, services: &[Arc<VirtualService>]) -> Vec<ObjectRef<VirtualService>> {
    services.iter().map(|service| ObjectRef::from_obj(service.as_ref())).collect()
}

/// The VirtualServices of a namespace whose labels changed (pools may admit
/// it or not any more).
pub fn for_namespace(
    namespace: &Namespace,
    services: &[Arc<VirtualService>],
) -> Vec<ObjectRef<VirtualService>> {
    let name = namespace.name_any();
    services
        .iter()
        .filter(|service| service.namespace().as_deref() == Some(name.as_str()))
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// The VirtualServices whose `backendService` is the slice's Service.
pub fn for_endpoint_slice(
    slice: &EndpointSlice,
    services: &[Arc<VirtualService>],
) -> Vec<ObjectRef<VirtualService>> {
    let Some(service_name) = slice.labels().get(SERVICE_NAME_LABEL) else { return vec![] };
    services
        .iter()
        .filter(|service| service.namespace() == slice.namespace())
        .filter(|service| service.spec.backend_service.as_ref().is_some_and(|b| &b.name == service_name))
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// The VirtualServices an LvsNode holds or reports on, and those whose status
/// lists its node as a director (which covers one that was removed from it).
pub fn for_lvs_node(object: &LvsNode, services: &[Arc<VirtualService>]) -> Vec<ObjectRef<VirtualService>> {
    services
        .iter()
        .filter(|service| {
            let (namespace, name) = (service.namespace().unwrap_or_default(), service.name_any());
            let owner = (namespace.as_str(), name.as_str());
            let reports = object
                .status
                .iter()
                .flat_map(|s| &s.services)
                .any(|r| crate::plan::is_owner(&r.owner, owner));
            let listed = service
                .status
                .as_ref()
                .is_some_and(|s| s.directors.iter().any(|d| d.node == object.spec.node));
            crate::plan::names_owner(object, OwnerKind::VirtualService, owner) || reports || listed
        })
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// The VirtualServices whose recorded `Accepted` reason differs from their
/// verdict in `translation`: a change of one VirtualService (a conflict's
/// winner deleted, say) changes the verdict of others, which no watch event
/// of theirs announces.
pub fn stale_verdicts(
    translation: &Translation,
    services: &[Arc<VirtualService>],
) -> Vec<ObjectRef<VirtualService>> {
    services
        .iter()
        .filter(|service| {
            let key = (service.namespace().unwrap_or_default(), service.name_any());
            let Some(verdict) = translation.verdicts.get(&key) else { return false };
            // Services without a recorded verdict are new: their own event queues them.
            let recorded =
                service.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == ACCEPTED));
            recorded.is_some_and(|c| c.reason != verdict.reason())
        })
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// The Services of type LoadBalancer an EndpointSlice feeds: its Service, if
/// ours or once ours (it carries our finalizer).
pub fn services_for_endpoint_slice(
    slice: &EndpointSlice,
    services: &[Arc<Service>],
    default_class: bool,
) -> Vec<ObjectRef<Service>> {
    let Some(service_name) = slice.labels().get(SERVICE_NAME_LABEL) else { return vec![] };
    services
        .iter()
        .filter(|service| service.namespace() == slice.namespace() && &service.name_any() == service_name)
        .filter(|service| is_or_was_ours(service, default_class))
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// Every Service of type LoadBalancer that is or was ours: those a Node may
/// matter to (a director, a hostNetwork endpoint's node, or a VIP that is its
/// address), and those a VipPool's change may give another address.
pub fn our_services(services: &[Arc<Service>], default_class: bool) -> Vec<ObjectRef<Service>> {
    services
        .iter()
        .filter(|service| is_or_was_ours(service, default_class))
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// The Services of ours whose status does not show their outcome in
/// `translation`: another object's change (a conflict's winner deleted)
/// changes it without an event of theirs.
pub fn stale_load_balancers(translation: &Translation, services: &[Arc<Service>]) -> Vec<ObjectRef<Service>> {
    services
        .iter()
        .filter(|service| {
            let key = (service.namespace().unwrap_or_default(), service.name_any());
            let Some(outcome) = translation.load_balancers.get(&key) else { return false };
            let status = service.status.as_ref();
            let recorded = status.and_then(|s| {
                s.conditions.iter().flatten().find(|c| c.type_ == crate::load_balancer::ACCEPTED)
            });
            // Services without a recorded outcome are new: their own event queues them.
            recorded.is_some_and(|c| {
                c.reason != outcome.verdict.reason()
                    || crate::load_balancer::ingress_addresses(status) != outcome.addresses
            })
        })
        .map(|service| ObjectRef::from_obj(service.as_ref()))
        .collect()
}

/// Whether a Service is ours, or carries our finalizer (its release is ours to finish).
pub fn is_or_was_ours(service: &Service, default_class: bool) -> bool {
    service_lb::is_ours(service, default_class)
        || service.finalizers().iter().any(|f| f == crate::SERVICE_FINALIZER)
}

/// Whether `labels` carry every pair of `selector`.
fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// The node's addresses, of every type: the translation makes a node a real
/// server when any of them is a destination.
pub fn addresses(node: &Node) -> Vec<&str> {
    node.status.iter().flat_map(|s| s.addresses.iter().flatten()).map(|a| a.address.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use lvs_crds::{
        lvs_node::{DirectorState, LvsNodeSpec, LvsNodeStatus, ServiceOwner, ServiceReport},
        translate::Verdict,
        virtual_service::{
            BackendService, DirectorStatus, Directors, RealServerSelector, RealServerStatus,
            VirtualServiceStatus,
        },
    };
    use pretty_assertions::assert_eq;

    use super::*;

    fn service(name: &str, edit: impl FnOnce(&mut VirtualService)) -> Arc<VirtualService> {
        let mut service = VirtualService::new(name, Default::default());
        service.metadata.namespace = Some("default".into());
        edit(&mut service);
        Arc::new(service)
    }

    fn node(name: &str, labels: &[(&str, &str)], ip: &str) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        node.status = Some(NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: ip.into() }]),
            ..Default::default()
        });
        node
    }

    fn names(refs: Vec<ObjectRef<VirtualService>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn nodes_concern_services_that_select_or_list_them() {
        let services = vec![
            service("default-directors", |_| {}),
            service("edge-directors", |s| {
                s.spec.directors =
                    Some(Directors { node_selector: selector(&[("edge", "yes")]), interface: None })
            }),
            service("web-servers", |s| {
                s.spec.real_server_selector =
                    Some(RealServerSelector { node_selector: selector(&[("role", "web")]), port: None })
            }),
            service("listed-director", |s| {
                s.spec.directors =
                    Some(Directors { node_selector: selector(&[("x", "y")]), interface: None });
                s.status = Some(VirtualServiceStatus {
                    directors: vec![DirectorStatus { node: "n1".into(), programmed: true, vrrp_state: None }],
                    ..Default::default()
                });
            }),
            service("listed-real-server", |s| {
                s.spec.directors =
                    Some(Directors { node_selector: selector(&[("x", "y")]), interface: None });
                s.status = Some(VirtualServiceStatus {
                    real_servers: vec![RealServerStatus {
                        address: "10.0.0.1".into(),
                        port: Some(80),
                        healthy: true,
                        weight: 1,
                    }],
                    ..Default::default()
                });
            }),
        ];
        assert_eq!(
            names(for_node(&node("n1", &[("lvs.dev/director", "true")], "10.0.0.9"), &services, &[])),
            ["default-directors", "web-servers", "listed-director"]
        );
        assert_eq!(
            names(for_node(&node("n2", &[("edge", "yes"), ("role", "web")], "10.0.0.1"), &services, &[])),
            ["edge-directors", "web-servers", "listed-real-server"]
        );
        assert!(for_node(&node("n3", &[], "10.0.0.3"), &services, &[]).is_empty());
    }

    #[test]
    fn nodes_concern_the_services_of_pools_that_select_them() {
        let pool = |name: &str, yaml: &str| -> Arc<VipPool> {
            let text = format!(
                "apiVersion: lvs.dev/v1alpha1\nkind: VipPool\nmetadata: {{name: {name}}}\nspec: {yaml}"
            );
            Arc::new(lvs_crds::yaml::from_str(&text).unwrap())
        };
        let pools = vec![
            pool(
                "edge",
                "{addresses: [192.0.2.0/28], namespaces: [default], directors: {nodeSelector: {edge: 'yes'}}}",
            ),
            pool(
                "workers",
                "{addresses: [192.0.2.16/28], namespaces: [default], realServerNodeSelector: {role: web}}",
            ),
        ];
        let in_pool = |name: &str, pool: &str| {
            let pool = pool.to_owned();
            service(name, move |s| {
                // Its own selector matches no node: only the pool makes it concerned.
                s.spec.directors =
                    Some(Directors { node_selector: selector(&[("x", "y")]), interface: None });
                s.status = Some(VirtualServiceStatus { pool: Some(pool), ..Default::default() });
            })
        };
        let services = vec![in_pool("at-edge", "edge"), in_pool("on-workers", "workers")];
        assert_eq!(
            names(for_node(&node("n1", &[("edge", "yes")], "10.0.0.1"), &services, &pools)),
            ["at-edge"]
        );
        assert_eq!(
            names(for_node(&node("n2", &[("role", "web")], "10.0.0.2"), &services, &pools)),
            ["on-workers"]
        );
        assert!(for_node(&node("n3", &[], "10.0.0.3"), &services, &pools).is_empty());
    }

    #[test]
    fn pools_concern_every_service_and_namespaces_their_own() {
        let services =
            vec![service("a", |_| {}), service("b", |s| s.metadata.namespace = Some("other".into()))];
        let pool: VipPool = lvs_crds::yaml::from_str(
            "apiVersion: lvs.dev/v1alpha1\nkind: VipPool\nmetadata: {name: p}\nspec: {addresses: [192.0.2.0/28], namespaces: [x]}",
        )
        .unwrap();
        assert_eq!(names(for_vip_pool(&pool, &services)), ["a", "b"]);
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some("other".into());
        assert_eq!(names(for_namespace(&namespace, &services)), ["b"]);
    }

    #[test]
    fn endpoint_slices_concern_services_of_their_backend_in_their_namespace() {
        let backend = |s: &mut VirtualService| {
            s.spec.backend_service = Some(BackendService { name: "web".into(), port: None })
        };
        let services = vec![
            service("a", backend),
            service("b", |s| {
                backend(s);
                s.metadata.namespace = Some("other".into());
            }),
            service("c", |_| {}),
        ];
        let mut slice = EndpointSlice::default();
        slice.metadata.namespace = Some("default".into());
        slice.metadata.labels = Some(selector(&[(SERVICE_NAME_LABEL, "web")]));
        assert_eq!(names(for_endpoint_slice(&slice, &services)), ["a"]);
        slice.metadata.labels = None;
        assert!(for_endpoint_slice(&slice, &services).is_empty());
    }

    #[test]
    fn lvs_nodes_concern_the_services_they_hold_report_or_lost() {
        let owner = |name: &str| ServiceOwner {
            namespace: "default".into(),
            name: name.into(),
            ..Default::default()
        };
        let services = vec![
            service("held", |_| {}),
            service("reported", |_| {}),
            service("lost", |s| {
                s.status = Some(VirtualServiceStatus {
                    directors: vec![DirectorStatus {
                        node: "lvs1".into(),
                        programmed: true,
                        vrrp_state: None,
                    }],
                    ..Default::default()
                })
            }),
            service("unrelated", |_| {}),
        ];
        let mut ipvs_service: lvs_crds::lvs_node::IpvsService = serde_json::from_value(serde_json::json!({
            "owner": {"namespace": "default", "name": "held"},
            "key": {"family": "IPv4", "address": "192.0.2.1", "port": 80, "protocol": "TCP"},
            "scheduler": "wlc"
        }))
        .unwrap();
        ipvs_service.owner = owner("held");
        let mut object = LvsNode::new(
            "lvs1",
            LvsNodeSpec {
                node: "lvs1".into(),
                director: Some(DirectorState {
                    services: vec![ipvs_service.clone().into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        object.status = Some(LvsNodeStatus {
            services: vec![ServiceReport {
                owner: owner("reported"),
                key: ipvs_service.key,
                programmed: true,
                error: None,
                destinations: vec![],
            }],
            ..Default::default()
        });
        assert_eq!(names(for_lvs_node(&object, &services)), ["held", "reported", "lost"]);
    }

    fn load_balancer(name: &str, class: Option<&str>, finalizers: &[&str]) -> Arc<Service> {
        let mut service = Service::default();
        service.metadata.namespace = Some("default".into());
        service.metadata.name = Some(name.into());
        service.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
        service.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: class.map(Into::into),
            ..Default::default()
        });
        Arc::new(service)
    }

    fn service_names(refs: Vec<ObjectRef<Service>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn slices_and_nodes_concern_services_of_ours_and_those_we_still_hold() {
        let services = vec![
            load_balancer("ours", Some("lvs.dev/ipvs"), &[]),
            load_balancer("classless", None, &[]),
            load_balancer("moved", Some("example.com/lb"), &[crate::SERVICE_FINALIZER]),
            load_balancer("theirs", Some("example.com/lb"), &[]),
        ];
        assert_eq!(service_names(our_services(&services, false)), ["ours", "moved"]);
        assert_eq!(service_names(our_services(&services, true)), ["ours", "classless", "moved"]);

        let mut slice = EndpointSlice::default();
        slice.metadata.namespace = Some("default".into());
        for (service, concerned) in [("ours", true), ("moved", true), ("theirs", false)] {
            slice.metadata.labels = Some(selector(&[(SERVICE_NAME_LABEL, service)]));
            let found = service_names(services_for_endpoint_slice(&slice, &services, false));
            assert_eq!(found == [service], concerned, "{service}: {found:?}");
        }
    }

    #[test]
    fn stale_load_balancers_are_those_whose_status_does_not_show_their_outcome() {
        use lvs_crds::translate::LoadBalancerOutcome;
        let outcome = |verdict| LoadBalancerOutcome { verdict, addresses: vec![] };
        let with_status = |name: &str, outcome: &LoadBalancerOutcome| {
            let mut service = (*load_balancer(name, Some("lvs.dev/ipvs"), &[])).clone();
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default());
            service.status = Some(crate::load_balancer::status(&service, outcome, &now));
            Arc::new(service)
        };
        let refused = outcome(Verdict::NoAddress);
        let services = vec![
            with_status("was-refused-now-accepted", &refused),
            with_status("still-refused", &refused),
            load_balancer("new", Some("lvs.dev/ipvs"), &[]),
        ];
        let key = |name: &str| ("default".to_owned(), name.to_owned());
        let translation = Translation {
            load_balancers: [
                (key("was-refused-now-accepted"), outcome(Verdict::Accepted)),
                (key("still-refused"), outcome(Verdict::NoAddress)),
                (key("new"), outcome(Verdict::Accepted)),
            ]
            .into(),
            ..Translation::default()
        };
        assert_eq!(
            service_names(stale_load_balancers(&translation, &services)),
            ["was-refused-now-accepted"]
        );
    }

    #[test]
    fn stale_verdicts_are_those_the_status_does_not_show() {
        let accepted_status = |reason: &str| {
            let condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: ACCEPTED.into(),
                status: "False".into(),
                reason: reason.into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
            };
            Some(VirtualServiceStatus { conditions: vec![condition], ..Default::default() })
        };
        let services = vec![
            service("was-conflict-now-accepted", |s| s.status = accepted_status("Conflict")),
            service("still-accepted", |s| s.status = accepted_status("Accepted")),
            service("new", |_| {}),
            service("not-translated", |_| {}),
        ];
        let key = |name: &str| ("default".to_owned(), name.to_owned());
        let translation = Translation {
            load_balancers: BTreeMap::new(),
            lvs_nodes: vec![],
            verdicts: [
                (key("was-conflict-now-accepted"), Verdict::Accepted),
                (key("still-accepted"), Verdict::Accepted),
                (key("new"), Verdict::Accepted),
            ]
            .into(),
            ..Translation::default()
        };
        assert_eq!(names(stale_verdicts(&translation, &services)), ["was-conflict-now-accepted"]);
    }
}
