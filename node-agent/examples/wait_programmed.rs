//! Waits until the kernel holds a TCP service with a given number of destinations,
//! polling every 1 ms, and prints `PROGRAMMED seconds` since this program started
//! (tests/bench/agent-apply starts it just before the agent, and polls the service
//! the agent's batch programs last).
//!
//!   wait_programmed VIP:PORT DESTINATIONS [TIMEOUT_S]
use std::time::{Duration, Instant};

use lvs_ipvs::{IpvsHandle, ServiceKey};

fn main() {
    let t0 = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [service, count, rest @ ..] = &args[..] else {
        panic!("usage: wait_programmed VIP:PORT DESTINATIONS [TIMEOUT_S]")
    };
    let key = ServiceKey::tcp(service.parse().expect("VIP:PORT"));
    let count: usize = count.parse().expect("DESTINATIONS");
    let timeout = Duration::from_secs(rest.first().map_or(600, |t| t.parse().expect("timeout")));
    let handle = IpvsHandle::connect().expect("IPVS");
    while t0.elapsed() < timeout {
        if handle.destinations(&key).is_ok_and(|d| d.len() >= count) {
            println!("PROGRAMMED {:.4}", t0.elapsed().as_secs_f64());
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("TIMEOUT {:.4}", t0.elapsed().as_secs_f64());
    std::process::exit(1);
}
