//! Renders the CRDs: `crdgen` prints them, `crdgen --write` writes them to
//! `deploy/crds/` (where the crate's tests expect them up to date).

use std::{env, fs, path::Path, process::ExitCode};

fn main() -> ExitCode {
    let write = match env::args().nth(1).as_deref() {
        None => false,
        Some("--write") => true,
        Some(_) => {
            eprintln!("usage: crdgen [--write]   (print the CRDs, or write them to deploy/crds/)");
            return ExitCode::from(2);
        }
    };
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (file, yaml) in lvs_crds::crd_files() {
        if write {
            let path = deploy.join(file);
            if let Err(error) = fs::write(&path, yaml) {
                eprintln!("crdgen: writing {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", path.display());
        } else {
            print!("---\n{yaml}");
        }
    }
    ExitCode::SUCCESS
}
