//! What the API server and the Rust side say about a manifest, for the tests.
//!
//! The API server is emulated from the generated CRD: its OpenAPI bounds
//! (type, enum, min/max, lengths, required, unknown fields) by a small walker
//! here, its CEL rules by kube-cel, which implements Kubernetes' CEL libraries
//! (`isIP` included) and applies schema defaults first, as admission does.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use kube::CustomResourceExt;
use lvs_crds::{VirtualService, validate};
use serde_json::Value;

/// Which part of the API server rejected a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// The OpenAPI schema: types, enums, minimum/maximum, lengths.
    Schema,
    /// A CEL rule of `x-kubernetes-validations`.
    Cel,
}

/// One complaint of the emulated API server.
#[derive(Clone, Debug)]
pub struct ServerError {
    pub by: By,
    /// Field path, e.g. `spec.realServers[0].port`.
    pub path: String,
    pub message: String,
    /// The CEL rule that failed, for `By::Cel`.
    pub rule: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}: {}", self.by, self.path, self.message)
    }
}

/// The `openAPIV3Schema` of a generated CRD.
pub fn open_api_schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("the CRD has an openAPIV3Schema")).unwrap()
}

/// The emulated API server's validation of one kind: its OpenAPI schema and
/// its compiled CEL rules.
pub struct ApiServer {
    schema: Value,
    rules: kube_cel::CompiledSchema,
    cel: kube_cel::Validator,
}

impl ApiServer {
    pub fn of<K: CustomResourceExt>() -> Self {
        let schema = open_api_schema::<K>();
        ApiServer { rules: kube_cel::compile_schema(&schema), schema, cel: kube_cel::Validator::new() }
    }

    /// Everything it refuses in `spec`.
    pub fn errors(&self, spec: &Value) -> Vec<ServerError> {
        let mut errors = Vec::new();
        openapi_errors(&self.schema["properties"]["spec"], spec, "spec", &mut errors);
        let object = serde_json::json!({ "spec": spec });
        if let Err(cel_errors) = self.cel.validate_compiled(&self.rules, &object, None) {
            errors.extend(cel_errors.iter().map(|e| ServerError {
                by: Cel,
                path: e.field_path.clone(),
                message: format!("{:?}: {}", e.kind, e.message),
                rule: (e.kind == kube_cel::ErrorKind::ValidationFailure).then(|| e.rule.clone()),
            }));
        }
        errors
    }
}

thread_local! {
    // Compiling the rules takes far longer than evaluating them.
    static API_SERVER: ApiServer = ApiServer::of::<VirtualService>();
}

/// Everything the emulated API server refuses in a VirtualService `spec`.
pub fn server_errors(spec: &Value) -> Vec<ServerError> {
    API_SERVER.with(|server| server.errors(spec))
}

use By::{Cel, Schema};

/// The OpenAPI half of the API server's validation (without CEL).
pub fn openapi_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<ServerError>) {
    let mut fail =
        |message: String| errors.push(ServerError { by: Schema, path: path.to_owned(), message, rule: None });
    if value.is_null() {
        if schema["nullable"] != true {
            fail("must not be null".into());
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        fail(format!("{value} is not one of {allowed:?}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(object) = value.as_object() else { return fail(format!("{value} is not an object")) };
            for required in schema["required"].as_array().into_iter().flatten() {
                if !object.contains_key(required.as_str().unwrap()) {
                    fail(format!("{required} is required"));
                }
            }
            for (key, child) in object {
                let child_path = format!("{path}.{key}");
                match schema["properties"].get(key).or(schema.get("additionalProperties")) {
                    Some(child_schema) => openapi_errors(child_schema, child, &child_path, errors),
                    None => errors.push(ServerError {
                        by: Schema,
                        path: child_path,
                        message: "unknown field".into(),
                        rule: None,
                    }),
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else { return fail(format!("{value} is not an array")) };
            let len = items.len() as u64;
            if schema["maxItems"].as_u64().is_some_and(|max| len > max) {
                fail(format!("more than {} items", schema["maxItems"]));
            }
            if schema["minItems"].as_u64().is_some_and(|min| len < min) {
                fail(format!("fewer than {} items", schema["minItems"]));
            }
            for (i, item) in items.iter().enumerate() {
                openapi_errors(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
            if schema["x-kubernetes-list-type"] == "map" {
                list_map_duplicates(schema, items, path, errors);
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else { return fail(format!("{value} is not a string")) };
            let len = text.chars().count() as u64;
            if schema["maxLength"].as_u64().is_some_and(|max| len > max) {
                fail(format!("longer than {}", schema["maxLength"]));
            }
            if schema["minLength"].as_u64().is_some_and(|min| len < min) {
                fail(format!("shorter than {}", schema["minLength"]));
            }
        }
        Some("integer") => {
            let Some(number) = value.as_i64().map(|n| n as f64).or(value.as_u64().map(|n| n as f64)) else {
                return fail(format!("{value} is not an integer"));
            };
            if schema["maximum"].as_f64().is_some_and(|max| number > max) {
                fail(format!("{value} is greater than {}", schema["maximum"]));
            }
            if schema["minimum"].as_f64().is_some_and(|min| number < min) {
                fail(format!("{value} is less than {}", schema["minimum"]));
            }
        }
        Some("boolean") => {
            if !value.is_boolean() {
                fail(format!("{value} is not a boolean"));
            }
        }
        other => fail(format!("schema without a known type: {other:?}")),
    }
}

/// A list-type map's items must differ in their keys, an absent key taking
/// its schema default (as the API server defaults before it compares).
fn list_map_duplicates(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<ServerError>) {
    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
        .as_array()
        .expect("a list-type map names its keys")
        .iter()
        .map(|key| key.as_str().unwrap())
        .collect();
    let properties = &schema["items"]["properties"];
    for key in &keys {
        let required = schema["items"]["required"].as_array().is_some_and(|r| r.contains(&Value::from(*key)));
        // The API server refuses a CRD with such keys.
        assert!(
            required || properties[key].get("default").is_some(),
            "list-map key {path}[].{key} is neither required nor defaulted"
        );
        assert!(properties[key]["nullable"] != true, "list-map key {path}[].{key} is nullable");
    }
    let key_of = |item: &Value| -> Vec<Value> {
        keys.iter().map(|key| item.get(key).unwrap_or(&properties[key]["default"]).clone()).collect()
    };
    let mut seen = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = key_of(item);
        if seen.contains(&key) {
            errors.push(ServerError {
                by: Schema,
                path: format!("{path}[{i}]"),
                message: format!("Duplicate value: {key:?}"),
                rule: None,
            });
        }
        seen.push(key);
    }
}

/// What the Rust side says about a VirtualService `spec`: the deserializer's
/// error (types, enums, ranges) or the validation's, as text.
pub fn rust_errors(spec_yaml: &str) -> Vec<String> {
    let manifest = format!(
        "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: sample}}\nspec: {spec_yaml}\n"
    );
    rust_manifest_errors(&manifest)
}

/// What the Rust side says about a whole VirtualService manifest.
pub fn rust_manifest_errors(manifest: &str) -> Vec<String> {
    match lvs_crds::yaml::from_str::<VirtualService>(manifest) {
        Err(error) => vec![error.to_string()],
        Ok(service) => match validate(&service.spec) {
            Ok(()) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        },
    }
}

/// A VirtualService `spec` written in YAML, as JSON.
pub fn spec_json(spec_yaml: &str) -> Value {
    lvs_crds::yaml::from_str(spec_yaml).unwrap_or_else(|e| panic!("sample is not YAML: {e}\n{spec_yaml}"))
}
