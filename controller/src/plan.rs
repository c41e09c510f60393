//! What to write, given what should exist (the translation) and what exists
//! (the LvsNode store). Pure: the controller turns a [`Plan`] into API calls.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kube::ResourceExt;
use lvs_crds::{
    LvsNode, NODE_LABEL,
    lvs_node::{OwnerKind, ServiceOwner},
};

/// The writes that bring the LvsNode objects in line with the translation.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Objects to server-side apply: new ones and changed ones, by name.
    pub apply: Vec<LvsNode>,
    /// Names of objects no node needs any more.
    pub delete: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

/// Compare the desired objects with the existing ones. An object is applied
/// when it is missing, its spec differs, or it lacks its [`NODE_LABEL`]; an
/// existing object that is not desired is deleted. Identical input gives an
/// empty plan, so a reconcile that changes nothing writes nothing.
pub fn plan(desired: &[LvsNode], existing: &[Arc<LvsNode>]) -> Plan {
    let existing: BTreeMap<String, &LvsNode> = existing.iter().map(|o| (o.name_any(), o.as_ref())).collect();
    let apply = desired
        .iter()
        .filter(|want| match existing.get(&want.name_any()) {
            None => true,
            Some(have) => have.spec != want.spec || !has_node_label(have),
        })
        .map(apply_body)
        .collect();
    let wanted: BTreeSet<String> = desired.iter().map(ResourceExt::name_any).collect();
    let delete = existing.keys().filter(|name| !wanted.contains(*name)).cloned().collect();
    Plan { apply, delete }
}

/// The body of a server-side apply: exactly the fields the controller owns
/// (name, node label, spec), nothing the server or the agent writes.
pub fn apply_body(desired: &LvsNode) -> LvsNode {
    let mut body = LvsNode::new(&desired.name_any(), desired.spec.clone());
    body.metadata.labels = Some(desired.labels().clone());
    body.labels_mut().insert(NODE_LABEL.to_owned(), desired.spec.node.clone());
    body.metadata.annotations = desired.metadata.annotations.clone();
    body
}

fn has_node_label(object: &LvsNode) -> bool {
    object.labels().get(NODE_LABEL) == Some(&object.spec.node)
}

/// The nodes whose agents have not yet dropped the object `kind` `owner`
/// (namespace, name), a VirtualService or a Service: an object of the node still names it in its spec (the
/// new state is not written or not yet seen), or its agent still reports a
/// service of it (the agent has not applied the new state). Nodes that no
/// longer exist are not waited for: no agent is left to report.
///
/// Real-server VIPs carry no per-owner report, so for them only the spec is
/// checked; the directors' services are what stops the traffic.
pub fn cleanup_pending(
    kind: OwnerKind,
    owner: (&str, &str),
    existing: &[Arc<LvsNode>],
    node_exists: impl Fn(&str) -> bool,
) -> BTreeSet<String> {
    existing
        .iter()
        .filter(|object| node_exists(&object.spec.node))
        .filter(|object| names_owner(object, kind, owner) || reports_owner(object, kind, owner))
        .map(|object| object.spec.node.clone())
        .collect()
}

/// Whether `candidate` is the VirtualService (namespace, name).
pub fn is_owner(candidate: &ServiceOwner, owner: (&str, &str)) -> bool {
    is_owner_of_kind(candidate, OwnerKind::VirtualService, owner)
}

/// Whether `candidate` is the object `kind` (namespace, name).
pub fn is_owner_of_kind(candidate: &ServiceOwner, kind: OwnerKind, (namespace, name): (&str, &str)) -> bool {
    candidate.kind == kind && candidate.namespace == namespace && candidate.name == name
}

/// Whether the object's spec holds anything of `owner`, of `kind`.
pub fn names_owner(object: &LvsNode, kind: OwnerKind, owner: (&str, &str)) -> bool {
    let spec = &object.spec;
    let owns = |candidate| is_owner_of_kind(candidate, kind, owner);
    let directs = spec.director.iter().flat_map(|d| &d.services).any(|s| owns(&s.owner));
    let serves = spec.real_server.iter().flat_map(|r| &r.vips).any(|v| owns(&v.owner));
    directs || serves
}

fn reports_owner(object: &LvsNode, kind: OwnerKind, owner: (&str, &str)) -> bool {
    object.status.iter().flat_map(|s| &s.services).any(|report| is_owner_of_kind(&report.owner, kind, owner))
}

#[cfg(test)]
mod tests {
    use lvs_crds::{
        LvsNodeSpec, LvsNodeStatus,
        lvs_node::{DirectorState, IpvsService, IpvsServiceKey, ServiceReport},
        virtual_service::{AddressFamily, Protocol, Scheduler},
    };
    use pretty_assertions::assert_eq;

    use super::*;

    fn owner(name: &str) -> ServiceOwner {
        ServiceOwner { namespace: "default".into(), name: name.into(), generation: 1, ..Default::default() }
    }

    fn key() -> IpvsServiceKey {
        IpvsServiceKey {
            family: AddressFamily::IPv4,
            address: Some("192.0.2.1".parse().unwrap()),
            port: 80,
            protocol: Protocol::TCP,
            fwmark: None,
        }
    }

    fn directing(node: &str, services: &[&str]) -> LvsNode {
        let services: Vec<Arc<IpvsService>> = services
            .iter()
            .map(|name| IpvsService {
                owner: owner(name),
                key: key(),
                scheduler: Scheduler::Wlc,
                scheduler_flags: vec![],
                persistence: None,
                one_packet: false,
                destinations: vec![],
                health_check: None,
                drain_seconds: 0,
                sorry_server: None,
            })
            .map(Arc::new)
            .collect();
        let spec = LvsNodeSpec {
            node: node.into(),
            chunks: 1,
            revision: format!("{node}-{}", services.len()),
            director: Some(DirectorState { services, ..Default::default() }),
            ..Default::default()
        };
        apply_body(&LvsNode::new(node, spec))
    }

    fn reporting(mut object: LvsNode, services: &[&str]) -> LvsNode {
        object.status = Some(LvsNodeStatus {
            applied_revision: Some(object.spec.revision.clone()),
            services: services
                .iter()
                .map(|name| ServiceReport {
                    owner: owner(name),
                    key: key(),
                    programmed: true,
                    error: None,
                    destinations: vec![],
                })
                .collect(),
            ..Default::default()
        });
        object
    }

    fn names(plan: &Plan) -> (Vec<String>, Vec<String>) {
        (plan.apply.iter().map(ResourceExt::name_any).collect(), plan.delete.clone())
    }

    #[test]
    fn nothing_to_do_when_existing_matches_desired() {
        let desired = vec![directing("lvs1", &["web"]), directing("lvs2", &["web"])];
        let existing: Vec<_> = desired.iter().cloned().map(|o| Arc::new(reporting(o, &["web"]))).collect();
        assert!(plan(&desired, &existing).is_empty());
    }

    #[test]
    fn applies_missing_and_changed_objects_and_deletes_the_rest() {
        let desired = vec![directing("lvs1", &["web", "db"]), directing("lvs2", &["web"])];
        let existing = vec![Arc::new(directing("lvs1", &["web"])), Arc::new(directing("old", &["web"]))];
        assert_eq!(
            names(&plan(&desired, &existing)),
            (vec!["lvs1".into(), "lvs2".into()], vec!["old".into()])
        );
    }

    #[test]
    fn restores_a_missing_node_label() {
        let desired = vec![directing("lvs1", &["web"])];
        let mut unlabelled = desired[0].clone();
        unlabelled.labels_mut().clear();
        let plan = plan(&desired, &[Arc::new(unlabelled)]);
        assert_eq!(names(&plan), (vec!["lvs1".into()], vec![]));
        assert_eq!(plan.apply[0].labels().get(NODE_LABEL).map(String::as_str), Some("lvs1"));
    }

    #[test]
    fn apply_body_carries_neither_status_nor_server_fields() {
        let mut desired = reporting(directing("lvs1", &["web"]), &["web"]);
        desired.metadata.resource_version = Some("42".into());
        let body = serde_json::to_value(apply_body(&desired)).unwrap();
        assert_eq!(body["apiVersion"], "lvs.dev/v1alpha1");
        assert_eq!(body["kind"], "LvsNode");
        assert_eq!(body["metadata"], serde_json::json!({"name": "lvs1", "labels": {"lvs.dev/node": "lvs1"}}));
        assert!(body.get("status").is_none());
    }

    #[test]
    fn cleanup_waits_for_spec_and_for_the_agents_report() {
        let web = ("default", "web");
        // lvs1: our new state is not written yet; lvs2: written, but its
        // agent still reports the service; lvs3: done; gone: node deleted.
        let existing = vec![
            Arc::new(directing("lvs1", &["web", "db"])),
            Arc::new(reporting(directing("lvs2", &["db"]), &["web", "db"])),
            Arc::new(reporting(directing("lvs3", &["db"]), &["db"])),
            Arc::new(directing("gone", &["web"])),
        ];
        let pending = cleanup_pending(OwnerKind::VirtualService, web, &existing, |node| node != "gone");
        assert_eq!(pending, BTreeSet::from(["lvs1".to_owned(), "lvs2".to_owned()]));
        assert!(
            cleanup_pending(OwnerKind::VirtualService, ("default", "other"), &existing, |_| true).is_empty()
        );
        // A Service of the same name is another owner.
        assert!(cleanup_pending(OwnerKind::Service, web, &existing, |_| true).is_empty());
    }
}
