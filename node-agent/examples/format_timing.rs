use lvs_agent::ipvs::*;
use std::time::Instant;
fn main() {
    let text = std::fs::read_to_string("/tmp/t/rules-10k").unwrap();
    let ops = lvs_agent::ipvsadm::parse_rules(&text).unwrap();
    let mut table: Vec<(ServiceEntry, Vec<DestinationEntry>)> = Vec::new();
    for op in ops {
        match op {
            IpvsOp::AddService(s) => {
                table.push((ServiceEntry { service: s, stats: Stats::default() }, vec![]))
            }
            IpvsOp::AddDestination(_, d) => table.last_mut().unwrap().1.push(DestinationEntry {
                destination: d,
                active_connections: 0,
                inactive_connections: 0,
                persistent_connections: 0,
                stats: Stats::default(),
            }),
            _ => {}
        }
    }
    let t = Instant::now();
    let out = lvs_agent::ipvsadm::save(&table);
    println!("save {} bytes {:?}", out.len(), t.elapsed());
}
