//! `lvs-agent import`, then `lvs-agent apply --dry-run` of what it wrote,
//! reproduces the imported rules (no kernel needed: the dry run plans against
//! an empty table when it cannot read the kernel's).

use std::{
    io::Write,
    process::{Command, Stdio},
};

const AGENT: &str = env!("CARGO_BIN_EXE_lvs-agent");

const RULES: &str = "\
-A -t 10.0.0.100:80 -s wrr
-a -t 10.0.0.100:80 -r 10.0.1.1:80 -g -w 2
-a -t 10.0.0.100:80 -r 10.0.1.2:80 -g -w 1
-A -t 10.0.0.100:443 -s sh -p 600 -M 255.255.255.0 -b sh-fallback,sh-port
-a -t 10.0.0.100:443 -r 10.0.1.1:8443 -m -w 1
-a -t 10.0.0.100:443 -r 10.0.1.2:8443 -m -w 0
-A -u 10.0.0.100:53 -s rr -o
-a -u 10.0.0.100:53 -r 10.0.1.3:53 -i -w 5 --tun-type gue --tun-port 6080 --tun-csum
-A -f 7 -s mh -b mh-port
-a -f 7 -r 10.0.1.4:0 -i -w 65535 --tun-type ipip
-A -t [2001:db8::100]:80 -s lc
-a -t [2001:db8::100]:80 -r [2001:db8::1]:80 -g -w 3
";

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn import_then_apply_dry_run_reproduces_the_rules() {
    let mut import =
        Command::new(AGENT).arg("import").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    import.stdin.take().unwrap().write_all(RULES.as_bytes()).unwrap();
    let imported = import.wait_with_output().unwrap();
    assert!(imported.status.success());

    let dir = std::env::temp_dir().join(format!("lvs-agent-import-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifests = dir.join("imported.yaml");
    std::fs::write(&manifests, &imported.stdout).unwrap();
    let planned = Command::new(AGENT)
        .args(["apply", "--dry-run", "--role", "director", "-f"])
        .arg(&manifests)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(planned.status.success(), "{}", String::from_utf8_lossy(&planned.stderr));
    assert_eq!(sorted_lines(&String::from_utf8(planned.stdout).unwrap()), sorted_lines(RULES));
}
