//! Standalone mode: the same VirtualService manifests, without a cluster.
//!
//! Manifests are read from files, checked with the API's own validation, and
//! resolved into this host's desired state by the controller's translation, run
//! locally with this host as the only node: it directs every service, and it is a
//! real server of those whose real servers include one of its addresses.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lvs_crds::{
    lvs_node::{LvsNodeSpec, RealServerMode},
    translate::{ClusterState, DIRECTOR_LABEL, TranslateOptions, Verdict, assemble, translate},
    validation::validate,
    virtual_service::VirtualService,
};

use crate::{
    desired::desired_services,
    engine::{self, Engine, Round},
    host::address,
    ipvs::IpvsHandle,
    ipvsadm::op_rule,
    reconcile::{Drains, Ownership, plan},
};
use serde::Deserialize;

/// What this host does with the manifests (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// A real server where one of this host's addresses is a real server, a
    /// director for the rest.
    #[default]
    Auto,
    Director,
    RealServer,
}

/// A manifest that cannot be used, with where it came from.
#[derive(Debug)]
pub struct ManifestError {
    pub source: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Reads every VirtualService in `path` (a YAML file, possibly with several
/// documents, or a directory of `*.yaml`/`*.yml` files, read in name order) and
/// validates it. Every problem is reported, not only the first.
pub fn load_manifests(path: &Path) -> Result<Vec<VirtualService>, Vec<ManifestError>> {
    let files = manifest_files(path)
        .map_err(|message| vec![ManifestError { source: path.display().to_string(), message }])?;
    let mut services = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(ManifestError { source: file.display().to_string(), message: e.to_string() });
                continue;
            }
        };
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let source = format!("{} (document {})", file.display(), index + 1);
            match parse_document(document) {
                Ok(None) => {}
                Ok(Some(vs)) => match validate(&vs.spec) {
                    Ok(()) => services.push(vs),
                    Err(problems) => errors.extend(problems.into_iter().map(|p| ManifestError {
                        source: source.clone(),
                        message: format!("{}: {p}", object_name(&vs)),
                    })),
                },
                Err(message) => errors.push(ManifestError { source, message }),
            }
        }
    }
    if errors.is_empty() { Ok(services) } else { Err(errors) }
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| e.to_string())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// A document's VirtualService; `None` for empty documents and other kinds.
fn parse_document(document: serde_yaml::Deserializer<'_>) -> Result<Option<VirtualService>, String> {
    let value = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
    if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("VirtualService") {
        return Ok(None);
    }
    // Through serde_path_to_error, so that a bad value is named by its field
    // (`spec.port: invalid value: integer 70000, expected u16`).
    serde_path_to_error::deserialize(value).map(Some).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn object_name(vs: &VirtualService) -> String {
    let meta = &vs.metadata;
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// This host's desired state for `services`, and the verdict on each service
/// (conflicts between manifests are settled as the controller settles them).
pub fn local_state(
    services: &[VirtualService],
    host: &str,
    local_addresses: &[IpAddr],
    role: Role,
) -> (LvsNodeSpec, BTreeMap<(String, String), Verdict>) {
    let virtual_services = services
        .iter()
        .cloned()
        .map(|mut vs| {
            // This host directs every service, whatever nodes a cluster would pick.
            if let Some(directors) = vs.spec.directors.as_mut() {
                directors.node_selector.clear();
            }
            vs.metadata.namespace.get_or_insert_with(|| "default".into());
            vs
        })
        .collect();
    let state = ClusterState {
        virtual_services,
        nodes: vec![local_node(host, local_addresses)],
        endpoint_slices: vec![],
    };
    let translation = translate(&state, &TranslateOptions::default());
    let mut spec = assemble(translation.lvs_nodes.iter().map(|n| &n.spec)).unwrap_or_else(|| LvsNodeSpec {
        node: host.into(),
        chunks: 1,
        ..LvsNodeSpec::default()
    });
    match role {
        Role::Auto => {}
        Role::Director => spec.real_server = None,
        Role::RealServer => spec.director = None,
    }
    if role == Role::Auto && spec.real_server.is_some() {
        // A real server of a service does not also direct it in auto mode.
        if let (Some(director), Some(real_server)) = (spec.director.as_mut(), spec.real_server.as_ref()) {
            let served: Vec<_> =
                real_server.vips.iter().map(|v| (v.owner.namespace.clone(), v.owner.name.clone())).collect();
            director
                .services
                .retain(|s| !served.contains(&(s.owner.namespace.clone(), s.owner.name.clone())));
            director.vips.retain(|v| !real_server.vips.iter().any(|r| r.address == v.address));
        }
    }
    (spec, translation.verdicts)
}

/// The one node of a standalone "cluster": this host, a director, with its addresses.
fn local_node(host: &str, addresses: &[IpAddr]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(host.into()),
            labels: Some([(DIRECTOR_LABEL.0.to_string(), DIRECTOR_LABEL.1.to_string())].into()),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|a| NodeAddress { type_: "InternalIP".into(), address: a.to_string() })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// `lvs-agent apply`'s options.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub path: PathBuf,
    pub once: bool,
    pub dry_run: bool,
    pub role: Role,
    pub state_dir: PathBuf,
    pub sysctl_root: PathBuf,
    pub exclusive: bool,
    pub resync: Duration,
}

/// How often the manifests are checked for changes: small, so a change reaches
/// the kernel within a few tens of milliseconds.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Applies the manifests at `options.path`; without `once`, keeps them applied:
/// reloads on change and on SIGHUP, repairs drift every `resync`. Returns whether
/// everything applied (with `once`) or the error that stopped it.
pub fn apply(options: &ApplyOptions) -> Result<bool> {
    // Taken before reading, so that a change made while applying is seen.
    let mut seen = fingerprint(&options.path);
    let Some(mut spec) = load_spec(options) else { return Ok(false) };
    if options.dry_run {
        print_plan(&spec, options);
        return Ok(true);
    }
    let mut engine = Engine::open(&options.state_dir, &options.sysctl_root, options.exclusive)?;
    let round = engine.reconcile(&spec, true);
    log_round(&round, "applied");
    if options.once {
        return Ok(round.failures.is_empty());
    }

    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
    let mut next_resync = Instant::now() + options.resync;
    let mut next_check = round.next_check;
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        let current = fingerprint(&options.path);
        let changed = current != seen || reload.swap(false, Ordering::Relaxed);
        if changed {
            seen = current;
        }
        let resync = Instant::now() >= next_resync;
        let drain_due = next_check.is_some_and(|at| engine::now() >= at);
        if !(changed || resync || drain_due) {
            continue;
        }
        if changed {
            // A manifest that does not load leaves what is applied untouched.
            match load_spec(options) {
                Some(new) => spec = new,
                None => eprintln!("lvs-agent: keeping the last good manifests applied"),
            }
        }
        let round = engine.reconcile(&spec, resync);
        log_round(
            &round,
            if changed {
                "applied"
            } else if resync {
                "repaired"
            } else {
                "drained"
            },
        );
        next_check = round.next_check;
        if resync {
            next_resync = Instant::now() + options.resync;
        }
    }
}

/// The manifests' desired state for this host, or `None` (errors printed) when
/// they do not load.
fn load_spec(options: &ApplyOptions) -> Option<LvsNodeSpec> {
    let services = match load_manifests(&options.path) {
        Ok(services) => services,
        Err(errors) => {
            for error in errors {
                eprintln!("lvs-agent: {error}");
            }
            return None;
        }
    };
    let addresses: Vec<IpAddr> = match address::local_addresses() {
        Ok(addresses) => addresses.into_iter().map(|a| a.address).collect(),
        Err(e) if options.dry_run => {
            eprintln!("lvs-agent: warning: local addresses unknown ({e:#}); assuming none");
            vec![]
        }
        Err(e) => {
            eprintln!("lvs-agent: local addresses: {e:#}");
            return None;
        }
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".into(), |h| h.trim().to_string());
    let (spec, verdicts) = local_state(&services, &host, &addresses, options.role);
    for ((namespace, name), verdict) in &verdicts {
        if *verdict != Verdict::Accepted {
            eprintln!("lvs-agent: {namespace}/{name} not applied: {}", verdict.message());
        }
    }
    Some(spec)
}

/// `--dry-run`: the IPVS operations as ipvsadm lines (against the kernel's table
/// when it can be read, else against an empty one), and the host changes as comments.
fn print_plan(spec: &LvsNodeSpec, options: &ApplyOptions) {
    let observed = IpvsHandle::connect().and_then(|handle| handle.table()).unwrap_or_else(|e| {
        eprintln!("lvs-agent: the kernel's table cannot be read ({e}); planning from an empty one");
        vec![]
    });
    let desired = spec.director.as_ref().map(desired_services).unwrap_or_default();
    let plan = plan(
        &desired,
        &observed,
        &Ownership::default(),
        &Drains::default(),
        engine::now(),
        options.exclusive,
    );
    for op in &plan.ops {
        println!("{}", op_rule(op));
    }
    for vip in spec.director.iter().flat_map(|d| &d.vips) {
        println!(
            "# director: hold VIP {} on {}",
            vip.address,
            vip.interface.as_deref().unwrap_or("the interface routing to it")
        );
    }
    for vip in spec.real_server.iter().flat_map(|r| &r.vips) {
        let device = match vip.mode {
            RealServerMode::DirectRouting => "lvs0 (arp_ignore=1, arp_announce=2)",
            RealServerMode::Tunnel => "tunl0 (ipip; rp_filter=0, arp_ignore=1, arp_announce=2)",
        };
        println!("# real server: VIP {} on {device}", vip.address);
    }
}

fn log_round(round: &Round, verb: &str) {
    for line in &round.applied {
        eprintln!("lvs-agent: {verb}: {line}");
    }
    for failure in &round.failures {
        eprintln!("lvs-agent: failed: {failure}");
    }
}

/// What identifies the manifests' current contents: names, sizes, change times.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest_files(path)
        .unwrap_or_default()
        .into_iter()
        .map(|file| {
            let meta = std::fs::metadata(&file).ok();
            let (len, modified) = meta.map_or((0, None), |m| (m.len(), m.modified().ok()));
            (file, len, modified)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
    }

    #[test]
    fn the_examples_load() {
        let services = load_manifests(&examples()).unwrap();
        assert_eq!(services.len(), 4);
    }

    #[test]
    fn a_director_gets_the_services_and_a_real_server_its_vip() {
        let services = load_manifests(&examples().join("dr.yaml")).unwrap();
        let director = "192.168.16.11".parse().unwrap();
        let (spec, verdicts) = local_state(&services, "director1", &[director], Role::Auto);
        assert!(verdicts.values().all(|v| *v == Verdict::Accepted));
        let director_state = spec.director.expect("directs");
        assert_eq!(director_state.services.len(), 1);
        assert_eq!(director_state.services[0].destinations.len(), 2);
        assert!(spec.real_server.is_none());

        let rs1 = "192.168.16.21".parse().unwrap();
        let (spec, _) = local_state(&services, "rs1", &[rs1], Role::Auto);
        assert!(spec.director.is_none_or(|d| d.services.is_empty()));
        assert_eq!(spec.real_server.expect("serves").vips[0].address.to_string(), "192.168.16.100");
    }

    #[test]
    fn bad_manifests_are_all_reported_by_file_and_field() {
        let dir = std::env::temp_dir().join(format!("lvs-agent-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("bad.yaml"),
            "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  vip: 10.0.0.1\n  port: 80\n  forwarding: DirectRouting\n  realServers: [{address: 10.0.0.2, port: 8080}]\n---\napiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: b}\nspec: {vip: 10.0.0.1, port: 70000, realServers: [{address: 10.0.0.2}]}\n",
        )
        .unwrap();
        let errors = load_manifests(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].contains("bad.yaml (document 1)") && text[0].contains("spec.realServers[0].port: 8080"),
            "{text:#?}"
        );
        assert!(text[1].contains("(document 2)") && text[1].contains("70000"), "{text:#?}");
    }
}
