//! The committed CRDs in deploy/crds/ are what the types generate.

use std::{fs, path::Path};

#[test]
fn committed_crds_are_up_to_date() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (file, generated) in lvs_crds::crd_files() {
        let path = deploy.join(file);
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale or missing: run `cargo run -p lvs-crds --bin crdgen -- --write` and commit it",
            path.display()
        );
    }
}
