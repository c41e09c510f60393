//! `lvs-controller translate -f DIR`: what the controller would write for a set
//! of objects read from files, with no cluster. A CI pipeline previews a change
//! with it; a user debugs one.
//!
//! The objects are those the controller watches (VirtualServices, Services of
//! type LoadBalancer, VipPools, Namespaces, Nodes, EndpointSlices) and, optionally, LvsNodes as the agents
//! last reported on them (they stand for the existing objects: the plan deletes those no node
//! needs, and the statuses read their reports). The output is the controller's
//! own decisions, made by the functions it runs: [`translate`] (with the VIP
//! allocations), [`plan::plan`], [`status::aggregate`],
//! [`status::pool_status`] and [`load_balancer::status`]. Documents of other kinds are skipped, and said so.

use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    Resource as _,
    api::{
        core::v1::{Namespace, Node, Service, ServiceStatus},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{Resource, ResourceExt};
use lvs_crds::{
    LvsNode, VipPool, VipPoolStatus, VirtualService, VirtualServiceStatus,
    translate::{ClusterState, TranslateOptions, Translation, object_id, translate},
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{load_balancer, plan, status};

/// Largest file read: far above any real set of manifests, and a bound on what
/// a wrong path (a device, a huge log) can make the preview hold.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// The objects read from the files.
#[derive(Debug, Default)]
pub struct Objects {
    pub state: ClusterState,
    /// LvsNodes as they exist, with the agents' reports.
    pub lvs_nodes: Vec<Arc<LvsNode>>,
    /// `file (document n): apiVersion kind` of each document skipped.
    pub skipped: Vec<String>,
}

/// What the controller would write.
#[derive(Debug)]
pub struct Preview {
    pub translation: Translation,
    pub plan: plan::Plan,
    /// Each VirtualService's status (with its VIP allocation), in (namespace, name) order.
    pub statuses: Vec<(VirtualService, VirtualServiceStatus)>,
    /// Each VipPool's status (its counts), by name.
    pub pool_statuses: Vec<(VipPool, VipPoolStatus)>,
    /// Each Service of ours: its status (ingress, condition), in (namespace, name) order.
    pub service_statuses: Vec<(Service, ServiceStatus)>,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file under `path` (a file, or a
/// directory read recursively in name order).
pub fn load(path: &Path) -> anyhow::Result<Objects> {
    let mut objects = Objects::default();
    // As in a cluster: pools decide (none among the files: every VirtualService
    // is refused for want of one, as the controller would refuse it).
    objects.state.vip_pools = Some(Vec::new());
    for file in files(path)? {
        let text = read_bounded(&file)?;
        let documents: Vec<Value> =
            lvs_crds::yaml::from_str_multiple(&text).with_context(|| file.display().to_string())?;
        for (index, value) in documents.into_iter().enumerate() {
            let source = format!("{} (document {})", file.display(), index + 1);
            if let Some(skipped) = add(&mut objects, value).with_context(|| source.clone())? {
                objects.skipped.push(format!("{source}: {skipped}"));
            }
        }
    }
    Ok(objects)
}

/// Adds one document; returns what it was when it is of no kind the preview reads.
fn add(objects: &mut Objects, value: Value) -> anyhow::Result<Option<String>> {
    if value.is_null() {
        return Ok(None);
    }
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let is = |version: &str, name: &str| api_version == version && kind == name;
    if is(&VirtualService::api_version(&()), &VirtualService::kind(&())) {
        objects.state.virtual_services.push(serde_json::from_value(value)?);
    } else if is(&VipPool::api_version(&()), &VipPool::kind(&())) {
        objects.state.vip_pools.get_or_insert_default().push(serde_json::from_value(value)?);
    } else if is(Namespace::API_VERSION, Namespace::KIND) {
        objects.state.namespaces.push(serde_json::from_value(value)?);
    } else if is(Service::API_VERSION, Service::KIND) {
        objects.state.services.push(serde_json::from_value(value)?);
    } else if is(Node::API_VERSION, Node::KIND) {
        objects.state.nodes.push(serde_json::from_value(value)?);
    } else if is(EndpointSlice::API_VERSION, EndpointSlice::KIND) {
        objects.state.endpoint_slices.push(serde_json::from_value(value)?);
    } else if is(&LvsNode::api_version(&()), &LvsNode::kind(&())) {
        objects.lvs_nodes.push(Arc::new(serde_json::from_value(value)?));
    } else if api_version == "v1" && kind == "List" {
        let items = value.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut skipped = Vec::new();
        for item in items {
            skipped.extend(add(objects, item)?);
        }
        return Ok((!skipped.is_empty()).then(|| skipped.join(", ")));
    } else {
        return Ok(Some(format!("skipped {api_version} {kind}: not an input of the controller")));
    }
    Ok(None)
}

fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let metadata = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            found.extend(files(&entry)?);
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
            found.push(entry);
        }
    }
    Ok(found)
}

fn read_bounded(file: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("reading {}", file.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!("{}: larger than {MAX_FILE_BYTES} bytes", file.display());
    }
    Ok(text)
}

/// The controller's decisions on `objects` at time `now`.
pub fn preview(objects: &Objects, options: &TranslateOptions, now: &Time) -> Preview {
    // As the controller's stores give it: a VirtualService being deleted is
    // left out of the translation (its status is not written either).
    let mut state = objects.state.clone();
    state.virtual_services.retain(|vs| vs.meta().deletion_timestamp.is_none());
    state.services.retain(|service| service.meta().deletion_timestamp.is_none());
    let translation = translate(&state, options);
    let plan = plan::plan(&translation.lvs_nodes, &objects.lvs_nodes);
    let mut statuses: Vec<(VirtualService, VirtualServiceStatus)> = objects
        .state
        .virtual_services
        .iter()
        .filter_map(|vs| {
            let id = object_id(vs);
            let verdict = translation.verdicts.get(&id)?;
            let status = status::aggregate(vs, verdict, &translation.lvs_nodes, &objects.lvs_nodes, now);
            Some((vs.clone(), status::with_allocation(status, translation.allocations.get(&id))))
        })
        .collect();
    statuses.sort_by_key(|(vs, _)| object_id(vs));
    let mut pool_statuses: Vec<(VipPool, VipPoolStatus)> = state
        .vip_pools
        .iter()
        .flatten()
        .filter_map(|pool| {
            let usage = translation.pools.get(&pool.name_any())?;
            Some((pool.clone(), status::pool_status(pool, usage, now)))
        })
        .collect();
    pool_statuses.sort_by_key(|(pool, _)| pool.name_any());
    let mut service_statuses: Vec<(Service, ServiceStatus)> = state
        .services
        .iter()
        .filter_map(|service| {
            let key = (service.namespace().unwrap_or_default(), service.name_any());
            let outcome = translation.load_balancers.get(&key)?;
            Some((service.clone(), load_balancer::status(service, outcome, now)))
        })
        .collect();
    service_statuses.sort_by_key(|(service, _)| (service.namespace(), service.name_any()));
    Preview { translation, plan, statuses, pool_statuses, service_statuses }
}

/// The preview as one YAML stream: the LvsNodes the controller would apply
/// (every desired one, marked when unchanged), the names it would delete, each
/// VirtualService's status (its VIP and pool among it), each Service's of
/// ours (its ingress), then each VipPool's.
pub fn render(preview: &Preview) -> anyhow::Result<String> {
    let mut out = String::new();
    let applied: Vec<String> = preview.plan.apply.iter().map(ResourceExt::name_any).collect();
    for object in &preview.translation.lvs_nodes {
        let name = object.name_any();
        let change = if applied.contains(&name) { "apply" } else { "unchanged" };
        writeln!(out, "---\n# LvsNode {name}: {change}")?;
        out.push_str(&lvs_crds::yaml::to_string(&plan::apply_body(object))?);
    }
    for name in &preview.plan.delete {
        writeln!(out, "---\n# LvsNode {name}: delete (no node needs it)")?;
    }
    for (vs, status) in &preview.statuses {
        let (namespace, name) = object_id(vs);
        writeln!(out, "---\n# VirtualService {namespace}/{name}: status")?;
        out.push_str(&lvs_crds::yaml::to_string(&status_object(vs, status))?);
    }
    for (service, status) in &preview.service_statuses {
        let name = format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any());
        writeln!(out, "---\n# Service {name}: status")?;
        let object = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": service.namespace(), "name": service.name_any()},
            "status": status,
        });
        out.push_str(&lvs_crds::yaml::to_string(&object)?);
    }
    for (pool, status) in &preview.pool_statuses {
        writeln!(out, "---\n# VipPool {}: status", pool.name_any())?;
        let object = json!({
            "apiVersion": VipPool::api_version(&()),
            "kind": VipPool::kind(&()),
            "metadata": {"name": pool.name_any(), "generation": pool.meta().generation},
            "status": status,
        });
        out.push_str(&lvs_crds::yaml::to_string(&object)?);
    }
    Ok(out)
}

/// The status as the controller patches it, with the object's identity.
fn status_object(vs: &VirtualService, status: &VirtualServiceStatus) -> impl Serialize {
    json!({
        "apiVersion": VirtualService::api_version(&()),
        "kind": VirtualService::kind(&()),
        "metadata": {"namespace": vs.namespace(), "name": vs.name_any(), "generation": vs.meta().generation},
        "status": status,
    })
}
