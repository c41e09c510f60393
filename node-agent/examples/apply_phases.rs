//! Times the phases of one `lvs-agent apply` round on a manifest directory, for
//! tests/bench/agent-apply (where does the time go?).
//!
//!   apply_phases DIR            manifests -> plan against an empty table (host, no kernel)
//!   apply_phases DIR --kernel   also dumps the kernel table, plans against it and applies
//!                               the plan in one batch (in the lab)
//!
//! Prints one `PHASE name seconds` and one `MEMORY name rss MiB hwm MiB` line per
//! phase (to stdout) and what it produced.
#[path = "common/phases.rs"]
mod phases;

use std::path::Path;

use phases::phase;

use lvs_agent::{
    desired::desired_services,
    reconcile::{Drains, Ownership, plan},
    standalone::{Role, load_manifests, local_state},
};
use lvs_ipvs::IpvsHandle;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = Path::new(args.first().expect("usage: apply_phases DIR [--kernel]"));
    let kernel = args.iter().any(|a| a == "--kernel");

    // The YAML parse alone, to a generic value.
    let documents = phase("yaml-parse-only", || {
        let mut files: Vec<_> =
            std::fs::read_dir(dir).expect("DIR").filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let mut n = 0;
        for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml")) {
            let text = std::fs::read_to_string(file).expect("read");
            let documents: Vec<serde_json::Value> = lvs_crds::yaml::from_str_multiple(&text).expect("yaml");
            n += documents.len();
        }
        n
    });
    let services = phase("load+validate", || load_manifests(dir)).expect("manifests load");
    assert_eq!(documents, services.len());
    let (spec, _) = phase("translate", || local_state(&services, "bench", &[], Role::Director));
    let director = spec.director.as_ref().expect("directs");
    let desired = phase("desired", || desired_services(director));
    let now = lvs_agent::engine::now();
    let (handle, observed) = if kernel {
        let handle = IpvsHandle::connect().expect("IPVS");
        let table = phase("kernel-dump", || handle.table()).expect("table");
        (Some(handle), table)
    } else {
        (None, vec![])
    };
    let planned =
        phase("plan", || plan(&desired, &observed, &Ownership::default(), &Drains::default(), now, false));
    if let Some(handle) = handle {
        let report = phase("kernel-batch", || handle.apply_batch(&planned.ops));
        assert!(report.is_success(), "batch failed: {:?}", report.failures.first());
    }
    println!(
        "COUNT manifests={} services={} director-vips={} ops={}",
        services.len(),
        desired.len(),
        director.vips.len(),
        planned.ops.len()
    );
}
