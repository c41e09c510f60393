//! The manifests in deploy/examples/ are valid on both sides, and keep the
//! lab addressing their header comments promise.

mod common;

use std::{fs, path::Path};

use common::server_errors;
use lvs_crds::{VirtualService, virtual_service::Forwarding};

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            (path.file_name().unwrap().to_string_lossy().into_owned(), fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn examples_pass_both_sides() {
    let examples = examples();
    assert!(examples.len() >= 4, "expected the NAT, DR, TUN and FullNAT labs");
    for (file, text) in examples {
        let service: VirtualService =
            lvs_crds::yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        if let Err(errors) = service.spec.validate() {
            let errors: Vec<_> = errors.iter().map(ToString::to_string).collect();
            panic!("{file}:\n{}", errors.join("\n"));
        }
        let spec = serde_json::to_value(&service.spec).unwrap();
        let server = server_errors(&spec);
        assert!(
            server.is_empty(),
            "{file}: {}",
            server.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn examples_use_the_lab_addressing() {
    let mut modes = Vec::new();
    for (file, text) in examples() {
        let service: VirtualService = lvs_crds::yaml::from_str(&text).unwrap();
        let spec = &service.spec;
        assert_eq!(spec.vip.as_deref(), Some("192.168.16.100"), "{file}");
        assert_eq!(spec.port, Some(80), "{file}");
        let subnet = match spec.forwarding {
            Forwarding::DirectRouting => "192.168.16.",
            _ => "192.168.17.",
        };
        let addresses: Vec<_> = spec.real_servers.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addresses, [format!("{subnet}21"), format!("{subnet}22")], "{file}");
        for address in addresses.iter().chain(["192.168.16.100", "192.168.16.2"].iter()) {
            assert!(
                text.lines().take_while(|l| l.starts_with('#')).any(|l| l.contains(address)),
                "{file}: header lacks {address}"
            );
        }
        modes.push(spec.forwarding);
    }
    modes.sort();
    assert_eq!(modes, [Forwarding::Nat, Forwarding::DirectRouting, Forwarding::Tunnel, Forwarding::FullNat]);
}
