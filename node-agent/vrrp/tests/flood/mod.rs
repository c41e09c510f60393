//! A forged VRRP flood for the lab's chaos tests (lab_vrrp, and lab_failover
//! through `#[path]`): a thread in a namespace sends adverts to 224.0.0.18 on
//! its eth0 as fast as asked, with a mix of what a broken or hostile host
//! sends. Raw IPv4 sockets (protocol 112), one per TTL.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lvs_vrrp::Advertisement;
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The kinds of forged packets, sent in turn. Only the first reaches a state
/// machine (valid, lower priority); the higher priorities are all invalid in
/// one way, since a valid higher-priority advert is a legitimate master to
/// VRRPv3 (it has no authentication).
pub(crate) const MIX: &str = "valid priority 50 (TTL 255), priority 254 TTL 64, priority 50 TTL 64, \
                       wrong VRID priority 254, garbage, bad checksum priority 254";

/// A running flood; [`Flood::stop`] ends it and says what it sent.
pub(crate) struct Flood {
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<FloodReport>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FloodReport {
    pub(crate) sent: u64,
    /// sendto failures (a full queue under the emulated CPU).
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
}

impl FloodReport {
    pub(crate) fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// The packets of one round of the mix: (TTL 255?, bytes).
fn mix(vrid: u8, source: Ipv4Addr, vip: IpAddr, round: u32) -> Vec<(bool, Vec<u8>)> {
    let group = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));
    let source = IpAddr::V4(source);
    let advert = |vrid: u8, priority: u8| {
        Advertisement { virtual_router_id: vrid, priority, max_advert_interval: 20, addresses: vec![vip] }
            .emit(source, group)
    };
    let mut bad_checksum = advert(vrid, 254);
    bad_checksum[7] ^= 0x5a;
    // Garbage of varying length and content (xorshift, seeded by the round).
    let mut state = 0x9e37_79b9_u32 ^ round.wrapping_mul(0x85eb_ca6b);
    let length = 1 + (round as usize * 7) % 60;
    let garbage = (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    vec![
        (true, advert(vrid, 50)),
        (false, advert(vrid, 254)),
        (false, advert(vrid, 50)),
        (true, advert(vrid.wrapping_add(1), 254)),
        (true, garbage),
        (true, bad_checksum),
    ]
}

impl Flood {
    /// Starts sending `rate` packets a second (paced every millisecond) from
    /// `source` on eth0 of namespace `ns`, forging adverts for `vrid` and `vip`.
    pub(crate) fn start(ns: &str, source: Ipv4Addr, vrid: u8, vip: IpAddr, rate: u32) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        // More senders than one starve the routers of the emulated CPUs and
        // send no more (one pays for the delivery path of each packet).
        let senders = (0..SENDERS)
            .map(|n| {
                let (path, stopping) = (format!("/var/run/netns/{ns}"), stop.clone());
                std::thread::spawn(move || send(&path, &stopping, source, vrid, vip, rate / SENDERS, n))
            })
            .collect();
        Flood { stop, senders }
    }

    pub(crate) fn stop(mut self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        let reports: Vec<FloodReport> = self.senders.drain(..).map(|s| s.join().unwrap()).collect();
        FloodReport {
            sent: reports.iter().map(|r| r.sent).sum(),
            errors: reports.iter().map(|r| r.errors).sum(),
            elapsed: reports.iter().map(|r| r.elapsed).max().unwrap_or_default(),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const SENDERS: u32 = 1;

/// One sender: `rate` packets a second, paced every millisecond, round `first`
/// of the mix first.
fn send(
    path: &str,
    stopping: &AtomicBool,
    source: Ipv4Addr,
    vrid: u8,
    vip: IpAddr,
    rate: u32,
    first: u32,
) -> FloodReport {
    setns(File::open(path).unwrap(), CloneFlags::CLONE_NEWNET).expect("setns");
    let socket = |ttl: u32| {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).unwrap();
        socket.bind_device(Some(b"eth0")).unwrap();
        socket.set_multicast_if_v4(&source).unwrap();
        socket.set_multicast_ttl_v4(ttl).unwrap();
        socket.set_multicast_loop_v4(false).unwrap();
        socket
    };
    let (ttl_255, ttl_64) = (socket(255), socket(64));
    let group: SockAddr = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 18), 0).into();
    let packets: Vec<(bool, Vec<u8>)> =
        (first..first + 16).flat_map(|round| mix(vrid, source, vip, round)).collect();
    let (mut sent, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    while !stopping.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        if sent + errors >= due {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        for _ in 0..(due - sent - errors).min(1_000) {
            let (valid_ttl, bytes) = &packets[((sent + errors) % packets.len() as u64) as usize];
            let socket = if *valid_ttl { &ttl_255 } else { &ttl_64 };
            match socket.send_to(bytes, &group) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
    }
    FloodReport { sent, errors, elapsed: start.elapsed() }
}

/// VmRSS and VmHWM of process `pid` ("self" for this one), in KiB.
pub(crate) fn memory_kib(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
