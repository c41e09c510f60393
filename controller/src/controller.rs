//! The controller: watches, reconcile and the API writes around the pure
//! decisions of [`crate::plan`] and [`crate::status`].

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, channel::mpsc, future};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, Recorder, Reporter},
        finalizer,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{debug, info, instrument, warn};

use lvs_crds::{
    LvsNode, NODE_LABEL, VipPool, VirtualService,
    translate::{ClusterState, TranslateOptions, Translation, translate},
};

use crate::{
    Error, FIELD_MANAGER, FINALIZER, Result, metrics::Metrics, plan, server::Health, status, triggers, watch,
};

/// Level-triggered safety net: every VirtualService is reconciled this often.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry of a failed reconcile.
const RETRY: Duration = Duration::from_secs(15);
/// Poll of a deletion waiting for the agents.
const CLEANUP_POLL: Duration = Duration::from_secs(2);

/// The reflector stores: what the translation and the status read.
#[derive(Clone)]
pub struct Stores {
    pub virtual_services: Store<VirtualService>,
    pub nodes: Store<Node>,
    pub endpoint_slices: Store<EndpointSlice>,
    /// The administrator's pools.
    pub vip_pools: Store<VipPool>,
    /// For the pools' namespaceSelector.
    pub namespaces: Store<Namespace>,
    /// The LvsNodes written by the controller, with the agents' reports.
    pub lvs_nodes: Store<LvsNode>,
    /// Bumped by the watches whenever an input of the translation changed.
    pub inputs_epoch: Arc<AtomicU64>,
}

impl Stores {
    pub async fn wait_until_ready(&self) -> Result<()> {
        let closed = |_| Error::StoresClosed;
        self.virtual_services.wait_until_ready().await.map_err(closed)?;
        self.nodes.wait_until_ready().await.map_err(closed)?;
        self.endpoint_slices.wait_until_ready().await.map_err(closed)?;
        self.vip_pools.wait_until_ready().await.map_err(closed)?;
        self.namespaces.wait_until_ready().await.map_err(closed)?;
        self.lvs_nodes.wait_until_ready().await.map_err(closed)
    }

    /// The translation's input. VirtualServices being deleted are left out:
    /// removing them from every node is what their deletion waits for.
    pub fn cluster_state(&self) -> ClusterState {
        let mut virtual_services = snapshot(&self.virtual_services);
        virtual_services.retain(|s| s.meta().deletion_timestamp.is_none());
        ClusterState {
            virtual_services,
            nodes: snapshot(&self.nodes),
            endpoint_slices: snapshot(&self.endpoint_slices),
            vip_pools: Some(snapshot(&self.vip_pools)),
            namespaces: snapshot(&self.namespaces),
        }
    }
}

fn snapshot<K: Resource + Clone>(store: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|object| K::clone(object)).collect()
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub options: TranslateOptions,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The last translation and the input epoch it was made at. The lock
    /// also serializes the LvsNode writes of concurrent reconciles.
    translation: Mutex<Option<(u64, Arc<Translation>)>>,
    /// VirtualServices to reconcile because a translation changed their verdict.
    requeue: mpsc::UnboundedSender<ObjectRef<VirtualService>>,
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        options: TranslateOptions,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        requeue: mpsc::UnboundedSender<ObjectRef<VirtualService>>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Self { client, stores, options, recorder, metrics, translation: Mutex::default(), requeue }
    }

    /// Make the LvsNodes match the translation of the current stores, and
    /// return that translation.
    async fn sync(&self) -> Result<Arc<Translation>> {
        let mut cached = self.translation.lock().await;
        let epoch = self.stores.inputs_epoch.load(Ordering::Acquire);
        let translation = match cached.as_ref() {
            Some((made_at, translation)) if *made_at == epoch => Arc::clone(translation),
            _ => {
                let translation = Arc::new(translate(&self.stores.cluster_state(), &self.options));
                for ((namespace, name), allocation) in &translation.allocations {
                    if let (Some(released), Some(vip)) = (allocation.released, allocation.vip) {
                        warn!(virtualservice = %format!("{namespace}/{name}"), %released, %vip, pool = %allocation.pool,
                            "the previous VIP left every admitting pool: released, and a new one allocated");
                    }
                }
                for stale in triggers::stale_verdicts(&translation, &self.stores.virtual_services.state()) {
                    // Fails only when the controller is shutting down.
                    let _ = self.requeue.unbounded_send(stale);
                }
                *cached = Some((epoch, Arc::clone(&translation)));
                translation
            }
        };

        let plan = plan::plan(&translation.lvs_nodes, &self.stores.lvs_nodes.state());
        let api: Api<LvsNode> = Api::all(self.client.clone());
        for object in &plan.apply {
            info!(lvsnode = %object.name_any(), revision = %object.spec.revision, "applying LvsNode");
            api.patch(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
                .await?;
        }
        for name in &plan.delete {
            info!(lvsnode = %name, "deleting LvsNode no node needs");
            match api.delete(name, &DeleteParams::default()).await {
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                result => drop(result?),
            }
        }
        self.write_pool_statuses(&translation).await?;
        self.metrics.set_managed(self.stores.virtual_services.state().len(), translation.lvs_nodes.len());
        Ok(translation)
    }

    /// Each VipPool's used/free counts, written when they changed.
    async fn write_pool_statuses(&self, translation: &Translation) -> Result<()> {
        let api: Api<VipPool> = Api::all(self.client.clone());
        let now = Time(Timestamp::now());
        for pool in self.stores.vip_pools.state() {
            let Some(usage) = translation.pools.get(&pool.name_any()) else { continue };
            let new = status::pool_status(&pool, usage, &now);
            if pool.status.as_ref() == Some(&new) {
                continue;
            }
            info!(vippool = %pool.name_any(), used = new.used, free = new.free, "writing VipPool status");
            let patch = json!({
                "apiVersion": VipPool::api_version(&()),
                "kind": VipPool::kind(&()),
                "status": new,
            });
            api.patch_status(
                &pool.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
        }
        Ok(())
    }

    /// The VirtualService exists: write the LvsNodes, then its status.
    async fn apply(&self, service: &VirtualService) -> Result<Action> {
        let translation = self.sync().await?;
        let key = (service.namespace().unwrap_or_default(), service.name_any());
        let Some(verdict) = translation.verdicts.get(&key) else {
            // Not in the cached translation yet: its watch event is on the way.
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let now = Time(Timestamp::now());
        let new =
            status::aggregate(service, verdict, &translation.lvs_nodes, &self.stores.lvs_nodes.state(), &now);
        let new = status::with_allocation(new, translation.allocations.get(&key));
        if service.status.as_ref() == Some(&new) {
            return Ok(Action::requeue(RESYNC));
        }
        for notice in status::transitions(service.status.as_ref(), &new) {
            let event = Event {
                type_: notice.type_,
                reason: notice.reason,
                note: Some(notice.note),
                action: notice.action.into(),
                secondary: None,
            };
            // Best effort: a lost Event must not hold the status back.
            if let Err(error) = self.recorder.publish(&event, &service.object_ref(&())).await {
                warn!(%error, reason = %event.reason, "could not publish an Event");
            }
        }
        let api: Api<VirtualService> = Api::namespaced(self.client.clone(), &key.0);
        let patch = json!({
            "apiVersion": VirtualService::api_version(&()),
            "kind": VirtualService::kind(&()),
            "status": new,
        });
        api.patch_status(&key.1, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        Ok(Action::requeue(RESYNC))
    }

    /// The VirtualService is being deleted: write the LvsNodes without it,
    /// and keep the finalizer until every node's agent dropped it.
    async fn cleanup(&self, service: &VirtualService) -> Result<Action> {
        self.sync().await?;
        let (namespace, name) = (service.namespace().unwrap_or_default(), service.name_any());
        let nodes: HashSet<String> = self.stores.nodes.state().iter().map(|n| n.name_any()).collect();
        let pending = plan::cleanup_pending((&namespace, &name), &self.stores.lvs_nodes.state(), |node| {
            nodes.contains(node)
        });
        if pending.is_empty() {
            info!("every node dropped the service; releasing it");
            Ok(Action::await_change())
        } else {
            Err(Error::CleanupPending(pending.into_iter().collect()))
        }
    }
}

/// Reconcile one VirtualService: the whole cluster's LvsNodes, then its own
/// status (or, when it is being deleted, its removal from every node).
#[instrument(skip_all, fields(virtualservice = %format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any())))]
pub async fn reconcile(service: Arc<VirtualService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile();
    ctx.stores.wait_until_ready().await?;
    let api: Api<VirtualService> =
        Api::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, service, |event| async {
        match event {
            finalizer::Event::Apply(service) => ctx.apply(&service).await,
            finalizer::Event::Cleanup(service) => ctx.cleanup(&service).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// Count the failure and retry: soon for a deletion waiting on agents,
/// after [`RETRY`] otherwise.
pub fn error_policy(service: Arc<VirtualService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    let name = format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any());
    if let Error::CleanupPending(_) = error.cause() {
        info!(virtualservice = %name, %error, "deletion in progress");
        Action::requeue(CLEANUP_POLL)
    } else {
        warn!(virtualservice = %name, %error, "reconcile failed");
        Action::requeue(RETRY)
    }
}

/// Watch the cluster and reconcile until the future is dropped (on shutdown
/// or when the lease is lost). `health` learns when the caches are synced.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    options: TranslateOptions,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    let epoch = Arc::new(AtomicU64::new(0));
    let (virtual_services, services_writer) = reflector::store();
    let (nodes, nodes_writer) = reflector::store();
    let (endpoint_slices, slices_writer) = reflector::store();
    let (lvs_nodes, lvs_nodes_writer) = reflector::store();
    let (vip_pools, pools_writer) = reflector::store();
    let (namespaces, namespaces_writer) = reflector::store();
    let stores = Stores {
        virtual_services: virtual_services.clone(),
        nodes,
        endpoint_slices,
        vip_pools: vip_pools.clone(),
        namespaces,
        lvs_nodes,
        inputs_epoch: Arc::clone(&epoch),
    };

    let config = watcher::Config::default();
    let service_changes = watch::changes(
        scoped(client.clone(), namespace.as_deref()),
        config.clone(),
        services_writer,
        watch::virtual_service_fingerprint,
        Some(Arc::clone(&epoch)),
    );
    let node_changes = watch::changes(
        Api::all(client.clone()),
        config.clone(),
        nodes_writer,
        watch::node_fingerprint,
        Some(Arc::clone(&epoch)),
    );
    let slice_changes = watch::changes(
        scoped(client.clone(), namespace.as_deref()),
        config.clone(),
        slices_writer,
        watch::endpoint_slice_fingerprint,
        Some(Arc::clone(&epoch)),
    );
    let pool_changes = watch::changes(
        Api::all(client.clone()),
        config.clone(),
        pools_writer,
        watch::vip_pool_fingerprint,
        Some(Arc::clone(&epoch)),
    );
    let namespace_changes = watch::changes(
        Api::all(client.clone()),
        config.clone(),
        namespaces_writer,
        watch::namespace_fingerprint,
        Some(Arc::clone(&epoch)),
    );
    // Not an input of the translation: no epoch.
    let lvs_node_changes = watch::changes(
        Api::all(client.clone()),
        config.labels(NODE_LABEL),
        lvs_nodes_writer,
        watch::lvs_node_fingerprint,
        None,
    );

    let (requeue, requeued) = mpsc::unbounded();
    let ctx = Arc::new(Context::new(client, stores.clone(), options, reporter, metrics, requeue));
    let (for_nodes, for_slices, for_lvs_nodes) =
        (virtual_services.clone(), virtual_services.clone(), virtual_services.clone());
    let (for_pools, for_namespaces, pools_for_nodes) =
        (virtual_services.clone(), virtual_services.clone(), vip_pools.clone());
    let controller = Controller::for_stream(service_changes, virtual_services)
        .watches_stream(node_changes, move |node| {
            triggers::for_node(&node, &for_nodes.state(), &pools_for_nodes.state())
        })
        .watches_stream(pool_changes, move |pool| triggers::for_vip_pool(&pool, &for_pools.state()))
        .watches_stream(namespace_changes, move |namespace| {
            triggers::for_namespace(&namespace, &for_namespaces.state())
        })
        .watches_stream(slice_changes, move |slice| triggers::for_endpoint_slice(&slice, &for_slices.state()))
        .watches_stream(lvs_node_changes, move |object| {
            triggers::for_lvs_node(&object, &for_lvs_nodes.state())
        })
        .reconcile_on(requeued)
        // Bursts (a rollout changing many EndpointSlices) become one reconcile.
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)).concurrency(8))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                // A watch failing (RBAC, API server down): retried with backoff.
                Err(error @ controller::Error::QueueError(_)) => warn!(%error, "watch failed"),
                // Reconcile failures are logged by error_policy.
                Err(error) => debug!(%error, "reconcile failed"),
                Ok((object, _)) => debug!(virtualservice = %object, "reconciled"),
            }
            future::ready(())
        });
    let synced = async {
        if stores.wait_until_ready().await.is_ok() {
            info!("caches synced");
            health.set_synced();
        }
    };
    tokio::join!(controller, synced);
}

/// The namespaced kinds are watched in `namespace`, or in all namespaces.
fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    }
}

#[cfg(test)]
mod tests;
