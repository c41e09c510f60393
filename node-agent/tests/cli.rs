//! The `lvs-agent` command line's conventions, on the host (no kernel needed):
//! shell completions, manual pages, documented exit codes.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lvs-agent")).args(args).output().unwrap()
}

#[test]
fn completions_cover_every_command_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = agent(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        let script = String::from_utf8(output.stdout).unwrap();
        for command in ["run", "apply", "save", "list", "restore", "import", "completions", "man"] {
            assert!(script.contains(command), "{shell} completion lacks {command}");
        }
    }
    // bash: a function bound to the program's name.
    let bash = String::from_utf8(agent(&["completions", "bash"]).stdout).unwrap();
    assert!(bash.contains("-o default lvs-agent"), "{bash}");
    assert!(!agent(&["completions", "tcsh"]).status.success());
}

#[test]
fn manual_pages_are_written_for_the_program_and_each_command() {
    let dir = std::env::temp_dir().join(format!("lvs-agent-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = agent(&["man", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for page in ["lvs-agent", "lvs-agent-apply", "lvs-agent-run", "lvs-agent-list", "lvs-agent-completions"] {
        let roff = std::fs::read_to_string(dir.join(format!("{page}.1"))).unwrap();
        assert!(roff.contains(".TH"), "{page}: no title header");
        assert!(roff.contains(".SH NAME") || roff.contains(".SH \"NAME\""), "{page}: no NAME section");
    }
    let main = std::fs::read_to_string(dir.join("lvs-agent.1")).unwrap();
    assert!(main.contains("Exit codes"), "the exit codes are in the manual");
    let apply = std::fs::read_to_string(dir.join("lvs-agent-apply.1")).unwrap();
    assert!(apply.contains("dry\\-run") || apply.contains("dry-run"), "{apply}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_codes_tell_failure_usage_and_success_apart() {
    let help = String::from_utf8(agent(&["--help"]).stdout).unwrap();
    assert!(help.contains("Exit codes: 0 success; 1 failed"), "{help}");
    // The roles are described in the long help.
    let apply_help = String::from_utf8(agent(&["apply", "--help"]).stdout).unwrap();
    assert!(apply_help.contains("A director of every service"), "{apply_help}");

    // A wrong command line: 2.
    assert_eq!(agent(&["apply", "--no-such-flag"]).status.code(), Some(2));
    // Manifests that do not load: 1, nothing changed (a dry run needs no privileges).
    let dir = std::env::temp_dir().join(format!("lvs-agent-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: x}\nspec: {vip: 192.0.2.1, port: 70000}\n").unwrap();
    let output = agent(&["apply", "--dry-run", "--role", "director", "-f", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The error names the file, the field and its value; nothing is planned.
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("spec.port") && stderr.contains("70000"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
    // Good ones: 0.
    let good = dir.join("good.yaml");
    std::fs::write(&good, "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: x}\nspec: {vip: 192.0.2.1, port: 80, realServers: [{address: 10.0.0.1}]}\n").unwrap();
    let output = agent(&["apply", "--dry-run", "--role", "director", "-f", good.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's shell examples stay true: each `lvs-agent` command line in a
/// ```sh block parses (its command and flags exist: clap reads them before
/// `--help`), and each file of this repository it names exists.
#[test]
fn the_readmes_command_lines_parse_and_its_paths_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut in_sh = false;
    let mut checked = 0;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            _ if in_sh => {
                let command = line.split(" #").next().unwrap().trim();
                // The command inside `kubectl exec ... --`, and no placeholders.
                let command = command.rsplit(" -- ").next().unwrap();
                if let Some(args) = command.strip_prefix("lvs-agent ")
                    && !args.contains(['[', '|', '<'])
                {
                    let mut args: Vec<&str> = args.split_whitespace().collect();
                    args.push("--help");
                    let output = agent(&args);
                    assert!(
                        output.status.success(),
                        "README: {line}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    checked += 1;
                }
            }
            _ => {}
        }
    }
    assert!(checked >= 5, "only {checked} lvs-agent lines found in the README");
    for word in readme.split(|c: char| c.is_whitespace() || "`()[],:;".contains(c)) {
        let path = word.trim_end_matches('.');
        if ["deploy/", "docs/", "tests/", "node-agent/", "controller/", "crds/"]
            .iter()
            .any(|p| path.starts_with(p))
            && !path.contains('*')
        {
            let path = path.split('#').next().unwrap();
            assert!(root.join(path).exists(), "README names {path}, which does not exist");
        }
    }
}
