//! deploy/debian/build's package, built from this build's binary and read with
//! Debian's own tools: its control fields, its files, its unit, its maintainer
//! scripts. The lab runs the packaged unit's command (lab_agent.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_debian_package_carries_the_agent_its_unit_and_its_documentation() {
    let dir = std::env::temp_dir().join(format!("lvs-agent-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let deb = run(Command::new(repo().join("deploy/debian/build"))
        .args(["--binary", env!("CARGO_BIN_EXE_lvs-agent"), "--compression", "none", "--out"])
        .arg(&dir));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.ends_with(format!("lvs-agent_{}_{}.deb", env!("CARGO_PKG_VERSION"), architecture())));

    let field =
        |name: &str| run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name)).trim().to_owned();
    assert_eq!(field("Package"), "lvs-agent");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert!(field("Depends").starts_with("libc6 (>= 2."), "{}", field("Depends"));
    assert!(field("Description").contains("/etc/lvs/"));

    // Owned by root, whoever built it.
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(listing.lines().all(|line| line.contains(" root/root ")), "{listing}");
    let files: Vec<&str> = listing.lines().filter_map(|line| line.split_whitespace().nth(5)).collect();
    for path in [
        "./usr/bin/lvs-agent",
        "./usr/lib/systemd/system/lvs-agent.service",
        "./etc/lvs/",
        "./usr/share/man/man1/lvs-agent.1.gz",
        "./usr/share/man/man1/lvs-agent-apply.1.gz",
        "./usr/share/bash-completion/completions/lvs-agent",
        "./usr/share/zsh/vendor-completions/_lvs-agent",
        "./usr/share/fish/vendor_completions.d/lvs-agent.fish",
        "./usr/share/doc/lvs-agent/copyright",
        "./usr/share/doc/lvs-agent/examples/dr.yaml",
    ] {
        assert!(files.contains(&path), "{path} is not in the package:\n{listing}");
    }
    assert!(
        listing.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/lvs-agent")),
        "{listing}"
    );
    let directories = listing.lines().filter(|l| l.starts_with('d'));
    assert!(directories.clone().all(|l| l.starts_with("drwxr-xr-x")), "{listing}");

    let root = dir.join("root");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&root));
    // The unit the README documents and the lab runs, unchanged; its paths are the package's.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/lvs-agent.service")).unwrap();
    assert_eq!(unit, std::fs::read_to_string(repo().join("deploy/systemd/lvs-agent.service")).unwrap());
    let exec_start = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    assert!(exec_start.starts_with("/usr/bin/lvs-agent apply -f /etc/lvs/ "), "{exec_start}");
    // The packaged binary is this build's and runs.
    let version = run(Command::new(root.join("usr/bin/lvs-agent")).arg("--version"));
    assert_eq!(version.trim(), format!("lvs-agent {}", env!("CARGO_PKG_VERSION")));
    for page in std::fs::read_dir(root.join("usr/share/man/man1")).unwrap() {
        run(Command::new("gzip").arg("--test").arg(page.unwrap().path()));
    }
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/lvs-agent")).unwrap();
    assert!(bash.contains("-o default lvs-agent"), "{bash}");

    // The maintainer scripts parse, and a purge removes the state directory only.
    let control = dir.join("control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("rm -rf /var/lib/lvs-agent /var/lib/private/lvs-agent"), "{postrm}");
    assert!(!postrm.contains("/etc/lvs"), "a purge keeps the operator's manifests");
    let _ = std::fs::remove_dir_all(&dir);
}

fn architecture() -> String {
    run(Command::new("dpkg").arg("--print-architecture")).trim().to_owned()
}
