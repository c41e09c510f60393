//! Test-only: sample objects, a [`Context`] over a mock API server, and the
//! [`ApiServerVerifier`] that plays the API server's part, checking each call
//! the controller makes.

use std::sync::{Arc, atomic::AtomicU64};

use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::{
    api::{
        core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, Service, ServiceStatus},
        discovery::v1::EndpointSlice,
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Client, Resource, ResourceExt,
    client::Body,
    runtime::{
        events::Reporter,
        reflector::{self, Store},
        watcher,
    },
};
use lvs_crds::{
    LvsNode, LvsNodeStatus, VipPool, VirtualService, VirtualServiceStatus,
    lvs_node::{DestinationReport, ServiceReport},
    translate::{ClusterState, TranslateOptions, Translation, translate},
};
use serde_json::{Value, json};

use crate::{
    FINALIZER, SERVICE_FINALIZER,
    controller::{Context, Stores},
};

/// `default/web`: VIP 192.0.2.10:80, DirectRouting to two real servers that
/// are not nodes, directed by the nodes labelled `lvs.dev/director=true`.
pub(crate) fn web() -> VirtualService {
    service("web", "2026-01-01T00:00:00Z")
}

/// A VirtualService like [`web`] named `name`, created at `created`.
pub(crate) fn service(name: &str, created: &str) -> VirtualService {
    let mut service: VirtualService = lvs_crds::yaml::from_str(&format!(
        "apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata: {{name: {name}, namespace: default, uid: uid-{name}, generation: 1, creationTimestamp: '{created}'}}
spec:
  vip: 192.0.2.10
  port: 80
  realServers: [{{address: 198.51.100.1}}, {{address: 198.51.100.2}}]"
    ))
    .expect("a valid VirtualService");
    service.meta_mut().resource_version = Some("1".into());
    service
}

/// Consuming builders on the test VirtualServices.
pub(crate) trait VirtualServiceExt: Sized {
    fn finalized(self) -> Self;
    fn deleting(self) -> Self;
    /// A spec edit: one more real server, next generation.
    fn with_third_real_server(self) -> Self;
    fn with_status(self, status: VirtualServiceStatus) -> Self;
}

impl VirtualServiceExt for VirtualService {
    fn finalized(mut self) -> Self {
        self.finalizers_mut().push(FINALIZER.to_owned());
        self
    }

    fn deleting(mut self) -> Self {
        self.meta_mut().deletion_timestamp = Some(Time("2026-01-02T00:00:00Z".parse().unwrap()));
        self
    }

    fn with_third_real_server(mut self) -> Self {
        let mut third = self.spec.real_servers[0].clone();
        third.address = "198.51.100.3".into();
        self.spec.real_servers.push(third);
        self.meta_mut().generation = self.meta().generation.map(|g| g + 1);
        self
    }

    fn with_status(mut self, status: VirtualServiceStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// A Ready node labelled `lvs.dev/director=true`.
pub(crate) fn director(name: &str, address: &str) -> Node {
    let mut node = Node::default();
    node.metadata.name = Some(name.into());
    node.metadata.labels = Some([("lvs.dev/director".to_owned(), "true".to_owned())].into());
    node.status = Some(NodeStatus {
        addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: address.into() }]),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    node
}

/// The administrator's pool of the tests: `192.0.2.0/24` for namespace
/// `default`, directed by the nodes labelled `lvs.dev/director=true`,
/// addresses shared on different ports.
pub(crate) fn lab_pool() -> VipPool {
    lvs_crds::yaml::from_str(
        "apiVersion: lvs.dev/v1alpha1
kind: VipPool
metadata: {name: lab, generation: 1}
spec: {addresses: [192.0.2.0/24], namespaces: [default], allowSharedVip: true,
       forwardingMethods: [DirectRouting, NAT, Tunnel, FullNAT]}",
    )
    .expect("a valid VipPool")
}

/// The objects the stores hold in a test.
#[derive(Clone)]
pub(crate) struct Cluster {
    pub services: Vec<VirtualService>,
    pub nodes: Vec<Node>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Kubernetes Services (of type LoadBalancer, mostly).
    pub load_balancers: Vec<Service>,
    pub lvs_nodes: Vec<LvsNode>,
    pub vip_pools: Vec<VipPool>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            nodes: Vec::new(),
            endpoint_slices: Vec::new(),
            lvs_nodes: Vec::new(),
            vip_pools: vec![lab_pool()],
            load_balancers: Vec::new(),
        }
    }
}

impl Cluster {
    /// The translation of `services` (those not being deleted) on this
    /// cluster's nodes and pools, as the controller makes it.
    pub(crate) fn translation(&self, services: &[VirtualService]) -> Translation {
        self.translation_with(services, &[])
    }

    /// The same with Kubernetes Services too (of this cluster's EndpointSlices).
    pub(crate) fn translation_with(
        &self,
        services: &[VirtualService],
        load_balancers: &[Service],
    ) -> Translation {
        let state = ClusterState {
            virtual_services: services
                .iter()
                .filter(|s| s.meta().deletion_timestamp.is_none())
                .cloned()
                .collect(),
            nodes: self.nodes.clone(),
            endpoint_slices: self.endpoint_slices.clone(),
            vip_pools: Some(self.vip_pools.clone()),
            namespaces: Vec::new(),
            services: load_balancers
                .iter()
                .filter(|s| s.meta().deletion_timestamp.is_none())
                .cloned()
                .collect(),
        };
        translate(&state, &TranslateOptions::default())
    }

    /// The LvsNodes the translation makes of `services`: what the controller wrote earlier.
    pub(crate) fn translated(&self, services: &[VirtualService]) -> Vec<LvsNode> {
        self.translation(services).lvs_nodes
    }

    /// The same with Kubernetes Services too.
    pub(crate) fn translated_with(
        &self,
        services: &[VirtualService],
        load_balancers: &[Service],
    ) -> Vec<LvsNode> {
        self.translation_with(services, load_balancers).lvs_nodes
    }

    /// The pools with the status the controller wrote for the current
    /// services (so that a reconcile has no pool status to write).
    pub(crate) fn with_pool_statuses(mut self) -> Self {
        let translation = self.translation_with(&self.services, &self.load_balancers);
        for pool in &mut self.vip_pools {
            let usage = &translation.pools[pool.metadata.name.as_deref().unwrap()];
            pool.status = Some(crate::status::pool_status(pool, usage, &now()));
        }
        self
    }
}

/// `objects` as their agents report them once applied: every service
/// programmed, every destination healthy (or not).
pub(crate) fn reported(objects: Vec<LvsNode>, healthy: bool) -> Vec<LvsNode> {
    objects
        .into_iter()
        .map(|mut object| {
            let services = object.spec.director.iter().flat_map(|d| &d.services);
            let reports = services
                .map(|service| ServiceReport {
                    owner: service.owner.clone(),
                    key: service.key.clone(),
                    programmed: true,
                    error: None,
                    destinations: service
                        .destinations
                        .iter()
                        .map(|d| DestinationReport {
                            address: d.address,
                            port: d.port,
                            healthy,
                            weight: d.weight,
                        })
                        .collect(),
                })
                .collect();
            object.status = Some(LvsNodeStatus {
                applied_generation: object.metadata.generation,
                applied_revision: Some(object.spec.revision.clone()),
                services: reports,
                ..Default::default()
            });
            object
        })
        .collect()
}

fn store<K>(objects: &[K]) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Plays the API server: answers the calls it is told to expect, in order,
/// checking each, and records what the controller wrote.
///
/// An unexpected extra call fails the reconcile with
/// `Service(Closed(()))`; a missing call times out in [`timeout_after_1s`].
pub(crate) struct ApiServerVerifier(ApiServerHandle);

impl Context {
    /// A context whose stores hold `cluster` and whose client talks to the verifier.
    pub(crate) fn test(cluster: &Cluster) -> (Arc<Context>, ApiServerVerifier) {
        let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock, "default");
        let stores = Stores {
            virtual_services: store(&cluster.services),
            nodes: store(&cluster.nodes),
            endpoint_slices: store(&cluster.endpoint_slices),
            vip_pools: store(&cluster.vip_pools),
            namespaces: store(&[]),
            services: store(&cluster.load_balancers),
            lvs_nodes: store(&cluster.lvs_nodes),
            inputs_epoch: Arc::new(AtomicU64::new(0)),
        };
        let reporter = Reporter { controller: "lvs-controller".into(), instance: Some("test".into()) };
        // Requeues go nowhere: each test runs one reconcile.
        let (requeue, _) = mpsc::unbounded();
        let (requeue_services, _) = mpsc::unbounded();
        let ctx = Context::new(
            client,
            stores,
            TranslateOptions::default(),
            reporter,
            Arc::default(),
            requeue,
            requeue_services,
        );
        (Arc::new(ctx), ApiServerVerifier(handle))
    }
}

/// One call the controller is expected to make.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Call {
    /// JSON patch adding the finalizer to VirtualService `default/{0}`.
    AddFinalizer(&'static str),
    /// JSON patch removing the finalizer from VirtualService `default/{0}`.
    RemoveFinalizer(&'static str),
    /// Server-side apply of LvsNode `{0}` by `lvs-controller`.
    ApplyLvsNode(&'static str),
    /// Delete of LvsNode `{0}`.
    DeleteLvsNode(&'static str),
    /// An Event with reason `{0}` in namespace `default`.
    CreateEvent(&'static str),
    /// Server-side apply of the status of VirtualService `default/{0}`.
    PatchStatus(&'static str),
    /// Server-side apply of the status of VipPool `{0}`.
    PatchPoolStatus(&'static str),
    /// JSON patch adding the finalizer to Service `default/{0}` (which has none).
    AddServiceFinalizer(&'static str),
    /// JSON patch removing the finalizer (the first) from Service `default/{0}`.
    RemoveServiceFinalizer(&'static str),
    /// Server-side apply of the status of Service `default/{0}`.
    PatchServiceStatus(&'static str),
}

/// What the controller wrote during a scenario.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub applied: Vec<LvsNode>,
    pub events: Vec<Event>,
    pub status: Option<VirtualServiceStatus>,
    pub pool_statuses: Vec<lvs_crds::VipPoolStatus>,
    pub service_status: Option<ServiceStatus>,
}

const SERVICES: &str = "/apis/lvs.dev/v1alpha1/namespaces/default/virtualservices";
const LVS_NODES: &str = "/apis/lvs.dev/v1alpha1/lvsnodes";
const POOLS: &str = "/apis/lvs.dev/v1alpha1/vippools";
const K8S_SERVICES: &str = "/api/v1/namespaces/default/services";
const APPLY: &str = "?&force=true&fieldManager=lvs-controller";

impl ApiServerVerifier {
    /// Answer `calls` in order on a task; its result is what was written.
    pub(crate) fn run(mut self, calls: Vec<Call>) -> tokio::task::JoinHandle<Recorded> {
        tokio::spawn(async move {
            let mut recorded = Recorded::default();
            for call in calls {
                let (request, send) =
                    self.0.next_request().await.unwrap_or_else(|| panic!("{call:?} not made"));
                let (method, uri) = (request.method().clone(), request.uri().to_string());
                let body: Value = match request.into_body().collect_bytes().await.unwrap() {
                    bytes if bytes.is_empty() => Value::Null,
                    bytes => serde_json::from_slice(&bytes).unwrap(),
                };
                let expect = |expected_method: Method, expected_uri: String| {
                    assert_eq!((&method, &uri), (&expected_method, &expected_uri), "for {call:?}");
                };
                let response = match call {
                    Call::AddFinalizer(name) => {
                        expect(Method::PATCH, format!("{SERVICES}/{name}?"));
                        assert_eq!(
                            body[1],
                            json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
                        );
                        json!({"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": name, "namespace": "default", "finalizers": [FINALIZER]}, "spec": {}})
                    }
                    Call::RemoveFinalizer(name) => {
                        expect(Method::PATCH, format!("{SERVICES}/{name}?"));
                        assert_eq!(body[1], json!({"op": "remove", "path": "/metadata/finalizers/0"}));
                        json!({"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": name, "namespace": "default"}, "spec": {}})
                    }
                    Call::ApplyLvsNode(name) => {
                        expect(Method::PATCH, format!("{LVS_NODES}/{name}{APPLY}"));
                        recorded.applied.push(serde_json::from_value(body.clone()).unwrap());
                        body
                    }
                    Call::DeleteLvsNode(name) => {
                        expect(Method::DELETE, format!("{LVS_NODES}/{name}?"));
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}})
                    }
                    Call::CreateEvent(reason) => {
                        expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events?".into());
                        let event: Event = serde_json::from_value(body.clone()).unwrap();
                        assert_eq!(event.reason.as_deref(), Some(reason));
                        recorded.events.push(event);
                        body
                    }
                    Call::PatchStatus(name) => {
                        expect(Method::PATCH, format!("{SERVICES}/{name}/status{APPLY}"));
                        assert_eq!(
                            (&body["apiVersion"], &body["kind"]),
                            (&json!("lvs.dev/v1alpha1"), &json!("VirtualService"))
                        );
                        recorded.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
                        json!({"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": name, "namespace": "default"}, "spec": {}, "status": body["status"]})
                    }
                    Call::PatchPoolStatus(name) => {
                        expect(Method::PATCH, format!("{POOLS}/{name}/status{APPLY}"));
                        assert_eq!(
                            (&body["apiVersion"], &body["kind"]),
                            (&json!("lvs.dev/v1alpha1"), &json!("VipPool"))
                        );
                        recorded.pool_statuses.push(serde_json::from_value(body["status"].clone()).unwrap());
                        json!({"apiVersion": "lvs.dev/v1alpha1", "kind": "VipPool", "metadata": {"name": name}, "spec": {"addresses": ["192.0.2.0/24"], "namespaces": ["default"]}, "status": body["status"]})
                    }
                    Call::AddServiceFinalizer(name) => {
                        expect(Method::PATCH, format!("{K8S_SERVICES}/{name}?"));
                        assert_eq!(
                            body[0],
                            json!({"op": "test", "path": "/metadata/finalizers", "value": null})
                        );
                        assert_eq!(
                            body[1],
                            json!({"op": "add", "path": "/metadata/finalizers", "value": [SERVICE_FINALIZER]})
                        );
                        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "finalizers": [SERVICE_FINALIZER]}})
                    }
                    Call::RemoveServiceFinalizer(name) => {
                        expect(Method::PATCH, format!("{K8S_SERVICES}/{name}?"));
                        assert_eq!(
                            body[0],
                            json!({"op": "test", "path": "/metadata/finalizers/0", "value": SERVICE_FINALIZER})
                        );
                        assert_eq!(body[1], json!({"op": "remove", "path": "/metadata/finalizers/0"}));
                        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}})
                    }
                    Call::PatchServiceStatus(name) => {
                        expect(Method::PATCH, format!("{K8S_SERVICES}/{name}/status{APPLY}"));
                        assert_eq!((&body["apiVersion"], &body["kind"]), (&json!("v1"), &json!("Service")));
                        recorded.service_status =
                            Some(serde_json::from_value(body["status"].clone()).unwrap());
                        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "status": body["status"]})
                    }
                };
                let response = Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(serde_json::to_vec(&response).unwrap()));
                send.send_response(response.unwrap());
            }
            recorded
        })
    }
}

/// Wait for the scenario to complete; a call the controller did not make
/// times out here.
pub(crate) async fn timeout_after_1s(scenario: tokio::task::JoinHandle<Recorded>) -> Recorded {
    tokio::time::timeout(std::time::Duration::from_secs(1), scenario)
        .await
        .expect("the controller made every expected call within 1 s")
        .expect("every call was as expected")
}

/// Now, for statuses made outside a reconcile.
pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

/// `default/{name}`: a Service of type LoadBalancer of our class created at
/// `created`, asking for `vip` (if any), port 80 (named http) to the pods' 8080.
pub(crate) fn load_balancer(name: &str, created: &str, vip: Option<&str>) -> Service {
    let vip = vip.map(|vip| format!("loadBalancerIP: {vip},")).unwrap_or_default();
    let mut service: Service = lvs_crds::yaml::from_str(&format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default, uid: uid-{name}, creationTimestamp: '{created}'}}
spec: {{type: LoadBalancer, loadBalancerClass: lvs.dev/ipvs, {vip} ports: [{{name: http, port: 80, targetPort: 8080}}]}}"
    ))
    .expect("a valid Service");
    service.meta_mut().resource_version = Some("1".into());
    service
}

/// The EndpointSlice of Service `default/{service}`: ready pods at
/// `addresses` on node web1, port http 8080.
pub(crate) fn pods(service: &str, addresses: &[&str]) -> EndpointSlice {
    let endpoints: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{addresses: [{a}], nodeName: web1, conditions: {{ready: true}}}}"))
        .collect();
    lvs_crds::yaml::from_str(&format!(
        "metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}, resourceVersion: '1'}}
addressType: IPv4
endpoints: [{}]
ports: [{{name: http, port: 8080, protocol: TCP}}]",
        endpoints.join(", ")
    ))
    .expect("a valid EndpointSlice")
}

/// Consuming builders on the test Services.
pub(crate) trait ServiceExt: Sized {
    fn finalized(self) -> Self;
    fn deleting(self) -> Self;
    fn with_class(self, class: &str) -> Self;
    fn with_status(self, status: ServiceStatus) -> Self;
}

impl ServiceExt for Service {
    fn finalized(mut self) -> Self {
        self.finalizers_mut().push(SERVICE_FINALIZER.to_owned());
        self
    }

    fn deleting(mut self) -> Self {
        self.meta_mut().deletion_timestamp = Some(Time("2026-01-02T00:00:00Z".parse().unwrap()));
        self
    }

    fn with_class(mut self, class: &str) -> Self {
        self.spec.as_mut().unwrap().load_balancer_class = Some(class.to_owned());
        self
    }

    fn with_status(mut self, status: ServiceStatus) -> Self {
        self.status = Some(status);
        self
    }
}
