//! Renders the CRDs of deploy/crds/.
//!
//! `crdgen` prints them, `crdgen --write` writes them, `crdgen --check` fails
//! when the files differ from what the types generate.

use std::{env, fs, path::Path, process::ExitCode};

const USAGE: &str =
    "usage: crdgen [--write | --check]   (print the CRDs, write them to deploy/crds/, or check those files)";

fn main() -> ExitCode {
    let mode = env::args().nth(1);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let mut stale = false;
    for (file, yaml) in lvs_crds::crd_files() {
        let path = deploy.join(file);
        match mode.as_deref() {
            None => print!("---\n{yaml}"),
            Some("--write") => match fs::write(&path, yaml) {
                Ok(()) => println!("wrote {}", path.display()),
                Err(error) => {
                    eprintln!("crdgen: writing {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            },
            Some("--check") => {
                if fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    eprintln!(
                        "{} is stale: run `cargo run -p lvs-crds --bin crdgen -- --write`",
                        path.display()
                    );
                    stale = true;
                }
            }
            Some(_) => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if stale { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
