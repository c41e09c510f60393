//! Times the dumps that `lvs-agent save` makes (run in the lab after loading a table).
use std::time::Instant;

use lvs_ipvs::{IpvsHandle, ipvsadm};

fn main() {
    let handle = IpvsHandle::connect().expect("IPVS");
    let t = Instant::now();
    let services = handle.services().expect("services");
    eprintln!("services: {} in {:?}", services.len(), t.elapsed());
    let t = Instant::now();
    let n: usize = services.iter().map(|s| handle.destinations(&s.service.key).expect("dests").len()).sum();
    eprintln!("destinations, one socket: {n} in {:?}", t.elapsed());
    let t = Instant::now();
    let table = handle.table().expect("table");
    eprintln!("table (parallel): {} services in {:?}", table.len(), t.elapsed());
    let t = Instant::now();
    let text = ipvsadm::save(&table);
    eprintln!("format: {} bytes in {:?}", text.len(), t.elapsed());
}
