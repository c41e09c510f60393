//! The generated schemas are structural (what Kubernetes requires of a CRD)
//! and document every field (`kubectl explain` shows the descriptions).

mod common;

use common::open_api_schema;
use lvs_crds::{LvsNode, VirtualService};
use serde_json::Value;

/// Kubernetes' structural-schema rules, as far as our schemas can break them,
/// plus our own: every property has a description.
fn check_structural(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let mut problem = |text: &str| problems.push(format!("{path}: {text}"));
    for junctor in ["anyOf", "oneOf", "allOf", "not"] {
        if schema.get(junctor).is_some() {
            problem(&format!("has {junctor}"));
        }
    }
    if schema.get("$ref").is_some() {
        problem("has $ref");
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    let preserve_unknown = schema["x-kubernetes-preserve-unknown-fields"] == true;
    if int_or_string || preserve_unknown {
        problem("is untyped (int-or-string or preserve-unknown-fields)");
    }
    match schema["type"].as_str() {
        Some("object") => {
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties");
            match (properties, additional) {
                (Some(_), Some(_)) => problem("has both properties and additionalProperties"),
                (None, None) => problem("object without properties or additionalProperties"),
                _ => {}
            }
            for (name, child) in properties.into_iter().flatten() {
                let child_path = format!("{path}.{name}");
                if child["description"].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{child_path}: no description"));
                }
                check_structural(child, &child_path, problems);
            }
            if let Some(child) = additional.filter(|a| a.is_object()) {
                check_structural(child, &format!("{path}.*"), problems);
            }
        }
        Some("array") => match schema.get("items") {
            Some(items) => check_structural(items, &format!("{path}[]"), problems),
            None => problem("array without items"),
        },
        Some("string" | "integer" | "number" | "boolean") => {}
        other => problem(&format!("no known type: {other:?}")),
    }
    if let Some(values) = schema["enum"].as_array() {
        let kind = schema["type"].as_str().unwrap_or_default();
        for value in values {
            let fits = match kind {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                _ => false,
            };
            // kube renders Option<enum> with a null member next to `nullable: true`.
            let nullable_null = value.is_null() && schema["nullable"] == true;
            if !(fits || nullable_null) {
                problems.push(format!("{path}: enum value {value} is not a {kind}"));
            }
        }
    }
}

fn assert_structural(schema: &Value) {
    let mut problems = Vec::new();
    check_structural(schema, "", &mut problems);
    assert!(problems.is_empty(), "not structural:\n{}", problems.join("\n"));
}

#[test]
fn virtual_service_schema_is_structural_and_documented() {
    assert_structural(&open_api_schema::<VirtualService>());
}

#[test]
fn lvs_node_schema_is_structural_and_documented() {
    assert_structural(&open_api_schema::<LvsNode>());
}

#[test]
fn crd_names_match_the_design() {
    use kube::CustomResourceExt;
    let crd = VirtualService::crd();
    assert_eq!(crd.spec.group, "lvs.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["lvs".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["lvs".to_owned()]));
    // `kubectl get lvs` expands the category first: only VirtualServices are in it.
    assert_eq!(LvsNode::crd().spec.names.categories, Some(vec!["lvs-internal".to_owned()]));
    assert_eq!(LvsNode::crd().spec.names.short_names, None);
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().is_some_and(|s| s.status.is_some()));
    let columns: Vec<_> =
        version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["VIP", "PORT", "PROTO", "MODE", "SCHED", "REAL SERVERS", "READY", "AGE"]);

    let crd = LvsNode::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert!(crd.spec.versions[0].subresources.as_ref().is_some_and(|s| s.status.is_some()));
}

/// Istio's VirtualService CRD (networking.istio.io), by the names it declares
/// (istio/api, kubernetes/customresourcedefinitions.gen.yaml): ours installs
/// beside it. The API server keys CRDs by `<plural>.<group>`, and kubectl
/// resolves short names and categories across groups, so none may be shared.
#[test]
fn the_crds_install_beside_istios_virtual_service() {
    use kube::CustomResourceExt;
    let istio_name = "virtualservices.networking.istio.io";
    let istio_short_names = ["vs"];
    let istio_categories = ["istio-io", "networking-istio-io"];
    for crd in [VirtualService::crd(), LvsNode::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        assert_ne!(name, istio_name);
        assert!(name.ends_with(".lvs.dev"), "{name}");
        for short in crd.spec.names.short_names.iter().flatten() {
            assert!(!istio_short_names.contains(&short.as_str()), "{name}: short name {short} is Istio's");
        }
        for category in crd.spec.names.categories.iter().flatten() {
            assert!(!istio_categories.contains(&category.as_str()), "{name}: category {category} is Istio's");
        }
    }
    assert_eq!(VirtualService::crd().metadata.name.as_deref(), Some("virtualservices.lvs.dev"));
}
