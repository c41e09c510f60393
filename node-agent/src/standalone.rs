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
};

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lvs_crds::{
    lvs_node::LvsNodeSpec,
    translate::{ClusterState, DIRECTOR_LABEL, TranslateOptions, Verdict, assemble, translate},
    validation::validate,
    virtual_service::VirtualService,
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
    serde_yaml::from_value(value).map(Some).map_err(|e| e.to_string())
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
