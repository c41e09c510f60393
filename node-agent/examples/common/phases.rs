//! Timing and memory of a benchmark's phases, shared by the examples that print them.
use std::time::Instant;

/// Runs `f`, printing `PHASE name seconds` and `MEMORY name rss MiB hwm MiB`.
pub(crate) fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let value = f();
    println!("PHASE {name} {:.4}", t.elapsed().as_secs_f64());
    println!("MEMORY {name} {}", memory());
    value
}

/// VmRSS and VmHWM of this process, in MiB.
pub(crate) fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> f64 {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_default();
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    format!("rss {:.1} hwm {:.1}", kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}
