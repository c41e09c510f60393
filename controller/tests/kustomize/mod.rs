//! `kubectl kustomize`, for the tests of deploy/. kubectl is required
//! (tests/lab/install provides it): a missing one fails, so that these checks
//! never pass unseen.

use std::{path::Path, process::Command};

use serde_json::Value;

/// The objects `kubectl kustomize dir` renders.
pub(crate) fn render(dir: &Path) -> Vec<Value> {
    let output = Command::new("kubectl").arg("kustomize").arg(dir).output().unwrap_or_else(|error| {
        panic!("kubectl not runnable ({error}): run tests/lab/install (Debian's kubernetes-client)")
    });
    assert!(
        output.status.success(),
        "kubectl kustomize failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    lvs_crds::yaml::from_str_multiple(&text).unwrap()
}

/// The rendered object of `kind` named `name`.
pub(crate) fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
}
