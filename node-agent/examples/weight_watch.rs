//! Times one weight change from the manifest write until the kernel has it, for
//! tests/bench/agent-apply.
//!
//!   weight_watch FILE VIP:PORT REAL_SERVER WEIGHT [TIMEOUT_S]
//!
//! Reads FILE, replaces `{address: REAL_SERVER, weight: N}` by WEIGHT, then writes
//! it (a temporary file renamed over FILE, as editors and config management do)
//! and polls the kernel's destinations of the TCP service VIP:PORT every 1 ms
//! until REAL_SERVER has WEIGHT. Prints `CHANGE seconds` (from just before the
//! write) and `POLLS n`; exits 1 on timeout (default 120 s).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lvs_ipvs::{IpvsHandle, ServiceKey};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, service, real_server, weight, rest @ ..] = &args[..] else {
        panic!("usage: weight_watch FILE VIP:PORT REAL_SERVER WEIGHT [TIMEOUT_S]")
    };
    let timeout = Duration::from_secs(rest.first().map_or(120, |t| t.parse().expect("timeout")));
    let service: SocketAddr = service.parse().expect("VIP:PORT");
    let key = ServiceKey::tcp(service);
    let target: SocketAddr = format!("{real_server}:{}", service.port()).parse().expect("REAL_SERVER");
    let weight: u32 = weight.parse().expect("WEIGHT");

    let text = std::fs::read_to_string(file).expect("FILE");
    let prefix = format!("{{address: {real_server}, weight: ");
    let start = text.find(&prefix).expect("the real server is in FILE") + prefix.len();
    let end = start + text[start..].find('}').expect("closing brace");
    let new = format!("{}{weight}{}", &text[..start], &text[end..]);
    assert_ne!(new, text, "the weight is already {weight}");
    let partial = format!("{file}.partial");

    let handle = IpvsHandle::connect().expect("IPVS");
    let kernel_weight = || {
        handle
            .destinations(&key)
            .expect("destinations")
            .iter()
            .find(|d| d.destination.address == target)
            .map(|d| d.destination.weight)
    };
    assert!(kernel_weight().is_some_and(|w| w != weight), "the kernel must have the old weight first");

    let t0 = Instant::now();
    std::fs::write(&partial, &new).expect("write");
    std::fs::rename(&partial, file).expect("rename");
    let mut polls = 0u64;
    loop {
        polls += 1;
        if kernel_weight() == Some(weight) {
            println!("CHANGE {:.4}", t0.elapsed().as_secs_f64());
            println!("POLLS {polls}");
            return;
        }
        if t0.elapsed() > timeout {
            println!("TIMEOUT {:.4}", t0.elapsed().as_secs_f64());
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
