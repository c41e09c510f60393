//! The change path of `lvs-agent apply` (standalone.rs `apply` + engine.rs
//! `reconcile` with `full = false`), up to the moment the kernel has the change,
//! rebuilt from the library's public functions and without the host
//! configuration step (VIPs, sysctls) that the binary runs after the IPVS batch.
//! For tests/bench/agent-apply, where the binary's per-VIP host configuration
//! (one `ip` process per VIP and round) makes a round with 10,000 services last
//! tens of minutes under TCG, so its change latency cannot be observed.
//!
//!   change_loop DIR
//!
//! First round: load, translate, dump the whole table, plan, apply; prints
//! `READY seconds`. Then polls the manifests' names, sizes and change times every
//! 20 ms (as the agent does) and on a change: load + validate, local addresses
//! (one `ip -json address show`, as the agent), translate, plan against the cached
//! table, apply in one batch, refresh the touched services; prints `ROUND` lines
//! with the phase times in milliseconds.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use lvs_agent::{
    desired::desired_services,
    host::address,
    ipvs::{IpvsHandle, IpvsOp, ServiceKey},
    reconcile::{Drains, Ownership, plan},
    standalone::{Role, load_manifests, local_state},
};

fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("DIR")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let (len, modified) = meta.map_or((0, None), |m| (m.len(), m.modified().ok()));
            (f, len, modified)
        })
        .collect()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let start = Instant::now();
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: change_loop DIR"));
    let handle = IpvsHandle::connect().expect("IPVS");
    let mut seen = fingerprint(&dir);
    let mut table = handle.table().expect("table");
    let mut owned = Ownership::default();
    let mut drains = Drains::default();
    let mut first = true;
    loop {
        if !first {
            std::thread::sleep(Duration::from_millis(20));
            let current = fingerprint(&dir);
            if current == seen {
                continue;
            }
            seen = current;
        }
        let t = Instant::now();
        let services = match load_manifests(&dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("change_loop: {} manifest errors, first: {}", e.len(), e[0]);
                continue;
            }
        };
        let load = ms(t);
        let t = Instant::now();
        let addresses: Vec<_> =
            address::local_addresses().expect("local addresses").into_iter().map(|a| a.address).collect();
        let addrs = ms(t);
        let t = Instant::now();
        let (spec, _) = local_state(&services, "bench", &addresses, Role::Director);
        let desired = spec.director.as_ref().map(desired_services).unwrap_or_default();
        let translate = ms(t);
        let t = Instant::now();
        let p = plan(&desired, &table, &owned, &drains, lvs_agent::engine::now(), false);
        let planning = ms(t);
        let t = Instant::now();
        let report = handle.apply_batch(&p.ops);
        let batch = ms(t);
        if !report.is_success() {
            eprintln!("change_loop: {} failed requests", report.failures.len());
        }
        owned = p.owned;
        drains = p.drains;
        let t = Instant::now();
        let touched: BTreeSet<ServiceKey> = p.ops.iter().filter_map(IpvsOp::service_key).collect();
        for key in touched {
            table.retain(|(service, _)| service.service.key != key);
            if let (Ok(service), Ok(d)) = (handle.service(&key), handle.destinations(&key)) {
                table.push((service, d));
            }
        }
        let refresh = ms(t);
        println!(
            "ROUND ops={} load+validate={load:.1} local-addresses={addrs:.1} translate={translate:.1} plan={planning:.1} batch={batch:.1} refresh={refresh:.1}",
            p.ops.len()
        );
        if first {
            println!("READY {:.3}", start.elapsed().as_secs_f64());
            first = false;
        }
    }
}
