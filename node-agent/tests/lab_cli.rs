//! The `lvs-agent` binary's ipvsadm-compatible commands against a real kernel,
//! with `ipvsadm` as the oracle. Ignored on the host; `tests/run` runs them in
//! the lab VM.

mod common;

use common::{Netns, sorted_lines};
use pretty_assertions::assert_eq;

/// Rules covering what ipvsadm can express: every scheduler of the kernel, every
/// forwarding method and tunnel type, persistence with netmasks, one-packet
/// scheduling, IPv6, UDP, SCTP, fwmarks, thresholds and weights up to 65535.
fn mixed_rules() -> String {
    let schedulers = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf"];
    let mut rules = String::new();
    let mut n = 0u32;
    for (s, scheduler) in schedulers.iter().enumerate() {
        for variant in 0..8u32 {
            n += 1;
            let (service, dest_host, v6): (String, Box<dyn Fn(u32) -> String>, bool) = match variant {
                0 => (format!("-t 10.10.{s}.{variant}:80"), Box::new(|d| format!("10.20.{n}.{d}")), false),
                1 => (format!("-u 10.10.{s}.{variant}:53"), Box::new(|d| format!("10.20.{n}.{d}")), false),
                2 => (
                    format!("--sctp-service 10.10.{s}.{variant}:3868"),
                    Box::new(|d| format!("10.20.{n}.{d}")),
                    false,
                ),
                3 => (
                    format!("-t [2001:db8:{s}::{variant}]:443"),
                    Box::new(|d| format!("[2001:db8:ff:{n}::{d}]")),
                    true,
                ),
                4 => (
                    format!("-u [2001:db8:{s}::{variant}]:53"),
                    Box::new(|d| format!("[2001:db8:ff:{n}::{d}]")),
                    true,
                ),
                5 => (format!("-f {}", 1000 + n), Box::new(|d| format!("10.20.{n}.{d}")), false),
                6 => (format!("-f {} -6", 1000 + n), Box::new(|d| format!("[2001:db8:ff:{n}::{d}]")), true),
                _ => (format!("-t 10.10.{s}.{variant}:0"), Box::new(|d| format!("10.20.{n}.{d}")), false),
            };
            let mut options = format!("-s {scheduler}");
            if variant == 7 || n.is_multiple_of(3) {
                options += &format!(" -p {}", 60 + n);
                if n.is_multiple_of(2) {
                    options += if v6 { " -M 96" } else { " -M 255.255.255.0" };
                }
            }
            if (variant == 1 || variant == 4 || variant == 5) && n % 2 == 1 {
                options += " -o";
            }
            match (*scheduler, n % 4) {
                ("sh", 1) => options += " -b sh-fallback",
                ("sh", 2) => options += " -b sh-fallback,sh-port",
                ("mh", 1) => options += " -b mh-port",
                ("mh", 2) => options += " -b mh-fallback,mh-port",
                _ => {}
            }
            rules += &format!("-A {service} {options}\n");
            for d in 1..=4u32 {
                let weight = [0, 1, 100, 65535][((n + d) % 4) as usize];
                let port = if variant >= 5 { 0 } else { 8000 + d };
                let host = dest_host(d);
                let (method, extra) = match (n + d) % 6 {
                    0 => ("-m", String::new()),
                    1 => ("-g", String::new()),
                    2 => ("-i", String::new()),
                    3 => ("-i", " --tun-type gue --tun-port 6080 --tun-csum".to_string()),
                    4 => ("-i", " --tun-type gre --tun-nocsum".to_string()),
                    _ => ("-m", format!(" -x {} -y {}", 100 * d, 10 * d)),
                };
                rules += &format!("-a {service} -r {host}:{port} {method} -w {weight}{extra}\n");
            }
        }
    }
    rules
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn save_equals_ipvsadm_save_on_a_large_mixed_set() {
    let ns = Netns::new("save");
    let rules = mixed_rules();
    std::fs::write(format!("/tmp/{}.rules", ns.name), &rules).unwrap();
    ns.sh(&format!("ipvsadm -R < /tmp/{}.rules", ns.name));
    let oracle = ns.saved_rules();
    assert_eq!(oracle.len(), rules.lines().count(), "ipvsadm accepted every rule");
    // The binary, exactly as an operator runs it.
    let ours = ns.sh(concat!(env!("CARGO_BIN_EXE_lvs-agent"), " save"));
    assert_eq!(sorted_lines(&ours), oracle);
    let ours = ns.sh(concat!(env!("CARGO_BIN_EXE_lvs-agent"), " list"));
    assert_eq!(sorted_lines(&ours), sorted_lines(&ns.ipvsadm("-Ln")));
    let ours = ns.sh(concat!(env!("CARGO_BIN_EXE_lvs-agent"), " list --stats"));
    assert_eq!(sorted_lines(&ours), sorted_lines(&ns.ipvsadm("-Ln --stats")));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn restore_programs_what_ipvsadm_restore_programs() {
    let ours = Netns::new("rest-a");
    let theirs = Netns::new("rest-b");
    let rules = mixed_rules();
    let path = format!("/tmp/{}.rules", ours.name);
    std::fs::write(&path, &rules).unwrap();
    ours.sh(&format!("{} restore {path}", env!("CARGO_BIN_EXE_lvs-agent")));
    theirs.sh(&format!("ipvsadm -R < {path}"));
    assert_eq!(ours.saved_rules(), theirs.saved_rules());
    // Thresholds are not part of -S; compare them too.
    assert_eq!(
        sorted_lines(&ours.ipvsadm("-Ln --thresholds")),
        sorted_lines(&theirs.ipvsadm("-Ln --thresholds"))
    );
    assert_eq!(
        sorted_lines(&ours.ipvsadm("-Ln --tun-info")),
        sorted_lines(&theirs.ipvsadm("-Ln --tun-info"))
    );
}

/// `list --output json` holds every service and real server of the table, as
/// ipvsadm lists them; `yaml` the same document.
#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn list_as_json_and_yaml_names_every_service_and_real_server() {
    let ns = Netns::new("listjson");
    let rules = mixed_rules();
    std::fs::write(format!("/tmp/{}.rules", ns.name), &rules).unwrap();
    ns.sh(&format!("ipvsadm -R < /tmp/{}.rules", ns.name));
    let json = ns.sh(concat!(env!("CARGO_BIN_EXE_lvs-agent"), " list --output json"));
    let listing: serde_json::Value = serde_json::from_str(&json).unwrap();
    let services = listing["services"].as_array().unwrap();
    let oracle = ns.saved_rules();
    let added_services = oracle.iter().filter(|line| line.starts_with("-A ")).count();
    let added_servers = oracle.iter().filter(|line| line.starts_with("-a ")).count();
    assert_eq!(services.len(), added_services);
    let servers: usize = services.iter().map(|s| s["destinations"].as_array().unwrap().len()).sum();
    assert_eq!(servers, added_servers);
    // Every real server's address:port appears in ipvsadm's own listing.
    let listed = ns.ipvsadm("-Ln");
    for service in services {
        for server in service["destinations"].as_array().unwrap() {
            let address = server["address"].as_str().unwrap();
            let shown = if address.contains(':') { format!("[{address}]") } else { address.to_owned() };
            assert!(listed.contains(&format!("{shown}:{}", server["port"])), "{server} not in\n{listed}");
        }
    }
    let yaml = ns.sh(concat!(env!("CARGO_BIN_EXE_lvs-agent"), " list -o yaml"));
    let from_yaml: serde_json::Value = lvs_crds::yaml::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, listing);
}

/// A restore of which some rules fail exits 3 (applied in part), naming each
/// failure; one of which every rule fails exits 1.
#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_partly_failed_restore_exits_3_and_a_wholly_failed_one_1() {
    let ns = Netns::new("exitcode");
    let path = format!("/tmp/{}.rules", ns.name);
    std::fs::write(&path, "-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.9:80 -r 10.0.0.1:80 -g\n").unwrap();
    let run = |rules: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_lvs-agent"), "restore", rules])
            .output()
            .unwrap()
    };
    let partly = run(&path);
    let stderr = String::from_utf8_lossy(&partly.stderr);
    assert_eq!(partly.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("1 of 2 rules failed"), "{stderr}");
    assert_eq!(ns.saved_rules(), ["-A -t 192.0.2.1:80 -s rr"]);

    std::fs::write(&path, "-a -t 192.0.2.9:80 -r 10.0.0.1:80 -g\n").unwrap();
    let wholly = run(&path);
    assert_eq!(wholly.status.code(), Some(1), "{}", String::from_utf8_lossy(&wholly.stderr));
}
