//! serde_yaml against serde-saphyr (the YAML library kube brings) on a
//! manifest directory, one thread: each document, split as `lvs-agent apply`
//! splits a file, parsed into the typed VirtualService; and granit-parser, the
//! parser under serde-saphyr, producing events only (no deserialization).
//!
//!   yaml_libraries DIR        (e.g. tests/bench/gen-manifests DIR 10000 10 100)
//!
//! Prints each one's median of 5 rounds. Why the agent still parses with
//! serde_yaml: docs/architecture.md, "The agent inside".
use std::time::{Duration, Instant};

use lvs_agent::standalone::split_documents;
use lvs_crds::VirtualService;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: yaml_libraries DIR");
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("DIR").map(|e| e.expect("DIR").path()).collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a manifest file");
        documents.extend(split_documents(&text).map(str::to_owned));
    }
    let serde_yaml = median(|| {
        for document in &documents {
            let _: VirtualService = serde_yaml::from_str(document).expect("serde_yaml parses it");
        }
    });
    let serde_saphyr = median(|| {
        for document in &documents {
            let _: VirtualService = serde_saphyr::from_str(document).expect("serde-saphyr parses it");
        }
    });
    let granit = median(|| {
        for document in &documents {
            for event in serde_saphyr::granit_parser::Parser::new_from_str(document) {
                event.expect("granit-parser parses it");
            }
        }
    });
    println!("{} documents, one thread, median of 5:", documents.len());
    for (what, time) in [
        ("serde_yaml 0.9, typed", serde_yaml),
        ("serde-saphyr 2, typed", serde_saphyr),
        ("granit-parser, events only", granit),
    ] {
        println!(
            "  {what:<28} {:>7.1} ms  {:.2}x",
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / serde_yaml.as_secs_f64()
        );
    }
}

fn median(run: impl Fn()) -> Duration {
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[2]
}
