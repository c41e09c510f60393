//! Support for tests that need the lab kernel (IPVS): each test gets its own
//! network namespace, so tests run in parallel and never see each other's tables.
//!
//! These tests are `#[ignore]`d on the host, whose kernel has no IPVS; `tests/run`
//! builds them and runs them inside the lab VM with `--ignored`.
#![allow(dead_code, unreachable_pub)]

use std::{
    fs::File,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use nix::sched::{CloneFlags, setns};

/// A network namespace that lives as long as the value.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(test: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t-{test}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        sh(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        Netns { name }
    }

    /// Runs `body` on a thread that has entered this namespace, so every socket it
    /// opens (the IPVS handle's included) belongs to it.
    pub fn run<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.name, body)
    }

    /// Runs a shell command inside the namespace and returns its standard output;
    /// panics with its output when it fails.
    pub fn sh(&self, command: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, command.replace('\'', r"'\''")))
    }

    /// `ipvsadm ARGS` inside the namespace: the independent oracle.
    pub fn ipvsadm(&self, args: &str) -> String {
        self.sh(&format!("ipvsadm {args}"))
    }

    /// `ipvsadm -S -n`, sorted, one line per rule.
    pub fn saved_rules(&self) -> Vec<String> {
        sorted_lines(&self.ipvsadm("-S -n"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `body` on a thread inside the named network namespace (`ip netns`):
/// far cheaper than a process per look, which matters when a test polls.
pub fn in_netns<T: Send + 'static>(name: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
        body()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

pub fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Runs a shell command on the (guest) host; panics with its output when it fails.
pub fn sh(command: &str) -> String {
    let output = Command::new("sh").args(["-c", command]).output().expect("run sh");
    assert!(
        output.status.success(),
        "`{command}` failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}
