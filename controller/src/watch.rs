//! The watches: one reflector per kind. Each keeps a store up to date (what
//! the translation and the status read) and passes on the objects that
//! changed in a way that matters, as the controller's triggers.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use lvs_crds::{LvsNode, VipPool, VirtualService};

/// Watch `api`, keep `writer`'s store up to date, and yield the objects whose
/// `fingerprint` changed, and deleted ones. Each such change bumps `epoch`
/// (after the store saw it), if given: it tells the controller that its
/// cached translation is stale. A Node's heartbeat thus triggers nothing.
pub fn changes<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    fingerprint: fn(&K) -> u64,
    epoch: Option<Arc<AtomicU64>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
    let bump = move || {
        if let Some(epoch) = &epoch {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
    };
    watcher(api, config).default_backoff().reflect(writer).filter_map(move |event| {
        let change = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let hash = fingerprint(&object);
                (seen.insert(ObjectRef::from_obj(&object), hash) != Some(hash)).then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                seen.remove(&ObjectRef::from_obj(&object));
                Some(Ok(object))
            }
            Ok(watcher::Event::Init) => None,
            Ok(watcher::Event::InitDone) => {
                // A relist may have dropped objects that no event announced.
                bump();
                None
            }
            Err(error) => Some(Err(error)),
        };
        if matches!(change, Some(Ok(_))) {
            bump();
        }
        future::ready(change)
    })
}

fn hash(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What of a VirtualService the translation and the finalizer read: its spec
/// (the generation), its deletion and its finalizers, not its status.
pub fn virtual_service_fingerprint(service: &VirtualService) -> u64 {
    let meta = service.meta();
    hash((meta.generation, meta.deletion_timestamp.is_some(), service.finalizers()))
}

/// What of a Node the translation reads: its labels, its `lvs.dev/`
/// annotations (VRRP priority) and its addresses.
pub fn node_fingerprint(node: &Node) -> u64 {
    let lvs_annotations: BTreeMap<&String, &String> =
        node.annotations().iter().filter(|(key, _)| key.starts_with("lvs.dev/")).collect();
    hash((node.labels(), lvs_annotations, crate::triggers::addresses(node)))
}

/// What of a Service the translation and the finalizer read: its spec, its
/// `lvs.dev/` annotations, its deletion and finalizers, and the addresses
/// its status shows (an allocator keeps them); not the rest of its status.
pub fn service_fingerprint(service: &Service) -> u64 {
    let lvs_annotations: BTreeMap<&String, &String> =
        service.annotations().iter().filter(|(key, _)| key.starts_with("lvs.dev/")).collect();
    let spec = serde_json::to_string(&service.spec).unwrap_or_default();
    let addresses = crate::load_balancer::ingress_addresses(service.status.as_ref());
    hash((
        spec,
        lvs_annotations,
        service.meta().deletion_timestamp.is_some(),
        service.finalizers(),
        addresses,
    ))
}

/// Any change of an EndpointSlice: its endpoints, their readiness, its ports.
/// A pool's spec (its status is the controller's own write).
pub fn vip_pool_fingerprint(pool: &VipPool) -> u64 {
    hash(serde_json::to_string(&pool.spec).unwrap_or_default())
}

/// A namespace's labels: what the pools' namespaceSelector reads.
pub fn namespace_fingerprint(namespace: &Namespace) -> u64 {
    hash(namespace.labels())
}

pub fn endpoint_slice_fingerprint(slice: &EndpointSlice) -> u64 {
    hash(&slice.metadata.resource_version)
}

/// Any change of an LvsNode: the agents' status reports matter to the status.
pub fn lvs_node_fingerprint(object: &LvsNode) -> u64 {
    hash(&object.metadata.resource_version)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

    use super::*;

    #[test]
    fn node_heartbeats_do_not_change_the_fingerprint() {
        let mut node = Node::default();
        node.metadata.labels = Some([("lvs.dev/director".to_owned(), "true".to_owned())].into());
        node.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let before = node_fingerprint(&node);

        let mut heartbeat = node.clone();
        heartbeat.metadata.resource_version = Some("2".into());
        heartbeat.annotations_mut().insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
        assert_eq!(node_fingerprint(&heartbeat), before);

        let mut priority = node.clone();
        priority.annotations_mut().insert("lvs.dev/vrrp-priority".into(), "200".into());
        assert_ne!(node_fingerprint(&priority), before);

        let mut not_ready = node.clone();
        not_ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert_eq!(node_fingerprint(&not_ready), before, "the translation ignores readiness");

        let mut relabelled = node.clone();
        relabelled.labels_mut().clear();
        assert_ne!(node_fingerprint(&relabelled), before);
    }

    #[test]
    fn a_service_fingerprint_follows_spec_annotations_finalizers_and_addresses_only() {
        let mut service = Service { spec: Some(Default::default()), ..Service::default() };
        let before = service_fingerprint(&service);
        service
            .annotations_mut()
            .insert("kubectl.kubernetes.io/last-applied-configuration".into(), "{}".into());
        service.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
            conditions: Some(vec![]),
            ..Default::default()
        });
        assert_eq!(service_fingerprint(&service), before);
        let mut changed = service.clone();
        changed.annotations_mut().insert("lvs.dev/scheduler".into(), "rr".into());
        assert_ne!(service_fingerprint(&changed), before);
        let mut changed = service.clone();
        changed.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        assert_ne!(service_fingerprint(&changed), before);
        let mut changed = service.clone();
        changed.finalizers_mut().push(crate::SERVICE_FINALIZER.into());
        assert_ne!(service_fingerprint(&changed), before);
    }

    #[test]
    fn status_writes_do_not_change_a_virtual_service_fingerprint() {
        let mut service = VirtualService::new("web", Default::default());
        service.metadata.generation = Some(1);
        let before = virtual_service_fingerprint(&service);
        service.status = Some(Default::default());
        assert_eq!(virtual_service_fingerprint(&service), before);
        service.finalizers_mut().push(crate::FINALIZER.into());
        assert_ne!(virtual_service_fingerprint(&service), before);
    }
}
