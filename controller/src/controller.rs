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
        core::v1::{Namespace, Node, Service},
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
    lvs_node::OwnerKind,
    service_lb,
    translate::{ClusterState, TranslateOptions, Translation, translate},
};

use crate::{
    Error, FIELD_MANAGER, FINALIZER, Result, SERVICE_FINALIZER, load_balancer, metrics::Metrics, plan,
    server::Health, status, triggers, watch,
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
    /// Services of every type and class (the translation picks those of ours).
    pub services: Store<Service>,
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
        self.services.wait_until_ready().await.map_err(closed)?;
        self.lvs_nodes.wait_until_ready().await.map_err(closed)
    }

    /// The translation's input. VirtualServices and Services being deleted
    /// are left out: removing them from every node is what their deletion
    /// waits for.
    pub fn cluster_state(&self) -> ClusterState {
        let mut virtual_services = snapshot(&self.virtual_services);
        virtual_services.retain(|s| s.meta().deletion_timestamp.is_none());
        // Only those of type LoadBalancer can be ours: the others are not copied.
        let services = (self.services.state().iter())
            .filter(|s| s.meta().deletion_timestamp.is_none())
            .filter(|s| s.spec.as_ref().and_then(|spec| spec.type_.as_deref()) == Some("LoadBalancer"))
            .map(|s| Service::clone(s))
            .collect();
        ClusterState {
            virtual_services,
            nodes: snapshot(&self.nodes),
            endpoint_slices: snapshot(&self.endpoint_slices),
            vip_pools: Some(snapshot(&self.vip_pools)),
            namespaces: snapshot(&self.namespaces),
            services,
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
    /// The same for Services of type LoadBalancer.
    requeue_services: mpsc::UnboundedSender<ObjectRef<Service>>,
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        options: TranslateOptions,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        requeue: mpsc::UnboundedSender<ObjectRef<VirtualService>>,
        requeue_services: mpsc::UnboundedSender<ObjectRef<Service>>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            stores,
            options,
            recorder,
            metrics,
            translation: Mutex::default(),
            requeue,
            requeue_services,
        }
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
                for stale in triggers::stale_load_balancers(&translation, &self.stores.services.state()) {
                    let _ = self.requeue_services.unbounded_send(stale);
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
            self.publish(service, notice).await;
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
        let pending = plan::cleanup_pending(
            OwnerKind::VirtualService,
            (&namespace, &name),
            &self.stores.lvs_nodes.state(),
            |node| nodes.contains(node),
        );
        if pending.is_empty() {
            info!("every node dropped the service; releasing it");
            Ok(Action::await_change())
        } else {
            Err(Error::CleanupPending(pending.into_iter().collect()))
        }
    }
}

impl Context {
    /// A Service of ours with our finalizer: write the LvsNodes, then its
    /// status (addresses and the `lvs.dev/Accepted` condition).
    async fn apply_load_balancer(&self, service: &Service) -> Result<Action> {
        let translation = self.sync().await?;
        let key = service_lb::service_id(service);
        let Some(outcome) = translation.load_balancers.get(&key) else {
            // Not in the cached translation yet: its watch event is on the way.
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let new = load_balancer::status(service, outcome, &Time(Timestamp::now()));
        if !load_balancer::differs(service.status.as_ref(), &new) {
            return Ok(Action::requeue(RESYNC));
        }
        for notice in load_balancer::transitions(service.status.as_ref(), &new) {
            self.publish(service, notice).await;
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.0);
        let patch = json!({"apiVersion": "v1", "kind": "Service", "status": new});
        api.patch_status(&key.1, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        Ok(Action::requeue(RESYNC))
    }

    /// A Service with our finalizer that is no longer ours (deleted, or of
    /// another class or type now): write the LvsNodes without it, wait until
    /// every node's agent dropped it, clear what we wrote in its status
    /// (unless it is going away), then remove the finalizer.
    async fn release_load_balancer(&self, service: &Service) -> Result<Action> {
        self.sync().await?;
        let (namespace, name) = service_lb::service_id(service);
        let nodes: HashSet<String> = self.stores.nodes.state().iter().map(|n| n.name_any()).collect();
        let pending = plan::cleanup_pending(
            OwnerKind::Service,
            (&namespace, &name),
            &self.stores.lvs_nodes.state(),
            |node| nodes.contains(node),
        );
        if !pending.is_empty() {
            return Err(Error::CleanupPending(pending.into_iter().collect()));
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        if service.meta().deletion_timestamp.is_none() {
            // Applying an empty status drops every field we own in it: the
            // ingress is free for the Service's new implementation.
            let patch = json!({"apiVersion": "v1", "kind": "Service", "status": {}});
            api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        }
        info!("every node dropped the load balancer; releasing it");
        let finalizers = service.finalizers();
        if let Some(index) = finalizers.iter().position(|f| f == SERVICE_FINALIZER) {
            let path = format!("/metadata/finalizers/{index}");
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": path, "value": SERVICE_FINALIZER},
                {"op": "remove", "path": path},
            ]))
            .expect("a JSON patch");
            api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
        }
        Ok(Action::await_change())
    }

    /// Add our finalizer to a Service of ours, before anything is programmed for it.
    async fn add_service_finalizer(&self, service: &Service) -> Result<Action> {
        let (namespace, name) = service_lb::service_id(service);
        let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let patch = match service.metadata.finalizers.as_ref() {
            None => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [SERVICE_FINALIZER]},
            ]),
            Some(finalizers) => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "add", "path": "/metadata/finalizers/-", "value": SERVICE_FINALIZER},
            ]),
        };
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("a JSON patch");
        api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
        // The patch's watch event reconciles the Service again.
        Ok(Action::await_change())
    }

    /// Best effort: a lost Event must not hold the status back.
    async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, notice: status::Notice) {
        let event = Event {
            type_: notice.type_,
            reason: notice.reason,
            note: Some(notice.note),
            action: notice.action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            warn!(%error, reason = %event.reason, "could not publish an Event");
        }
    }
}

/// Reconcile one Service: when it is of type LoadBalancer and our class,
/// hold it with our finalizer, write the whole cluster's LvsNodes and its
/// status; when it no longer is (deleted, or another class or type) but
/// carries our finalizer, release it. Other Services are left alone.
#[instrument(skip_all, fields(service = %format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any())))]
pub async fn reconcile_service(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile();
    ctx.stores.wait_until_ready().await?;
    let ours = service_lb::is_ours(&service, ctx.options.default_load_balancer_class)
        && service.meta().deletion_timestamp.is_none();
    let held = service.finalizers().iter().any(|f| f == SERVICE_FINALIZER);
    match (ours, held) {
        (true, false) => ctx.add_service_finalizer(&service).await,
        (true, true) => ctx.apply_load_balancer(&service).await,
        (false, true) => ctx.release_load_balancer(&service).await,
        (false, false) => Ok(Action::await_change()),
    }
}

/// As [`error_policy`], for Services.
pub fn service_error_policy(service: Arc<Service>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    let name = format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any());
    if let Error::CleanupPending(_) = error.cause() {
        info!(service = %name, %error, "release in progress");
        Action::requeue(CLEANUP_POLL)
    } else {
        warn!(service = %name, %error, "reconcile failed");
        Action::requeue(RETRY)
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
    let (services, k8s_services_writer) = reflector::store();
    let stores = Stores {
        virtual_services: virtual_services.clone(),
        nodes,
        endpoint_slices,
        vip_pools: vip_pools.clone(),
        namespaces,
        services: services.clone(),
        lvs_nodes,
        inputs_epoch: Arc::clone(&epoch),
    };
    let default_class = options.default_load_balancer_class;

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
    let load_balancer_changes = watch::changes(
        scoped(client.clone(), namespace.as_deref()),
        config.clone(),
        k8s_services_writer,
        watch::service_fingerprint,
        Some(Arc::clone(&epoch)),
    );
    // Nodes, EndpointSlices and VipPools matter to Services too: their changes
    // are passed on to the Service controller's queue as they go by.
    let (concerned, services_concerned) = mpsc::unbounded();
    let node_changes = node_changes.inspect({
        let (concerned, services) = (concerned.clone(), services.clone());
        move |change| {
            if change.is_ok() {
                for service in triggers::our_services(&services.state(), default_class) {
                    let _ = concerned.unbounded_send(service);
                }
            }
        }
    });
    let slice_changes = slice_changes.inspect({
        let (concerned, services) = (concerned.clone(), services.clone());
        move |change| {
            if let Ok(slice) = change {
                for service in triggers::services_for_endpoint_slice(slice, &services.state(), default_class)
                {
                    let _ = concerned.unbounded_send(service);
                }
            }
        }
    });
    let pool_changes = watch::changes(
        Api::all(client.clone()),
        config.clone(),
        pools_writer,
        watch::vip_pool_fingerprint,
        Some(Arc::clone(&epoch)),
    )
    .inspect({
        let (concerned, services) = (concerned.clone(), services.clone());
        // A pool's change may give every Service of ours another address.
        move |change| {
            if change.is_ok() {
                for service in triggers::our_services(&services.state(), default_class) {
                    let _ = concerned.unbounded_send(service);
                }
            }
        }
    });
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
    let (requeue_services, services_requeued) = mpsc::unbounded();
    let ctx =
        Arc::new(Context::new(client, stores.clone(), options, reporter, metrics, requeue, requeue_services));
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
        .run(reconcile, error_policy, Arc::clone(&ctx))
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
    let load_balancer_controller = Controller::for_stream(load_balancer_changes, services)
        .reconcile_on(futures::stream::select(services_concerned, services_requeued))
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)).concurrency(8))
        .run(reconcile_service, service_error_policy, ctx)
        .for_each(|result| {
            match result {
                Err(error @ controller::Error::QueueError(_)) => warn!(%error, "watch failed"),
                Err(error) => debug!(%error, "reconcile failed"),
                Ok((object, _)) => debug!(service = %object, "reconciled"),
            }
            future::ready(())
        });
    let synced = async {
        if stores.wait_until_ready().await.is_ok() {
            info!("caches synced");
            health.set_synced();
        }
    };
    tokio::join!(controller, load_balancer_controller, synced);
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

#[cfg(test)]
mod load_balancer_tests;
