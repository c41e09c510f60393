//! Host configuration against a real kernel: each test in its own network
//! namespace, with `ip`, `sysctl` and `nft` as the oracles.
//! Ignored on the host; run them in the lab VM.

mod common;

use std::net::IpAddr;

use common::Netns;
use lvs_agent::host::{
    DeviceAddress, HostChanges, HostError, Sysctls, address, announce, nat,
    real_server::{self, VIP_DEVICE},
    tunnel::TUNNEL_DEVICE,
};
use lvs_crds::{
    lvs_node::{RealServerMode, RealServerVip, ServiceOwner},
    virtual_service::{Tunnel, TunnelEncapsulation},
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn on_va(vip: &str) -> DeviceAddress {
    DeviceAddress { device: "va".into(), address: ip(vip) }
}

fn no_failures(failures: Vec<(DeviceAddress, HostError)>) {
    assert!(failures.is_empty(), "{failures:?}");
}

/// A real server's VIP, as the translation gives it.
fn real_server_vip(
    address: &str,
    mode: RealServerMode,
    encapsulation: Option<TunnelEncapsulation>,
) -> RealServerVip {
    RealServerVip {
        address: ip(address),
        mode,
        tunnel: encapsulation.map(|encapsulation| Tunnel { encapsulation, ..Tunnel::default() }),
        owner: ServiceOwner::default(),
    }
}

/// What the engine calls for a real server's VIPs; panics on any failure.
fn configure_real_server(changes: &mut HostChanges, sysctls: &Sysctls, vips: &[RealServerVip]) {
    let failures = real_server::configure(changes, sysctls, vips);
    assert!(failures.is_empty(), "{failures:?}");
}

fn dr(address: &str) -> RealServerVip {
    real_server_vip(address, RealServerMode::DirectRouting, None)
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.sh(&format!("sysctl -n {key}")).trim().to_string()
}

/// Runs `body` in the namespace on the record, carried through its serialised
/// form as the agent's state file carries it across restarts.
fn with_changes(ns: &Netns, changes: HostChanges, body: fn(&mut HostChanges, &Sysctls)) -> HostChanges {
    let saved = serde_json::to_string(&changes).unwrap();
    ns.run(move || {
        let mut changes: HostChanges = serde_json::from_str(&saved).unwrap();
        body(&mut changes, &Sysctls::default());
        changes
    })
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn dr_real_server_is_configured_and_undone() {
    let ns = Netns::new("dr");
    ns.sh("sysctl -qw net.ipv4.conf.all.arp_announce=1");

    let changes = with_changes(&ns, HostChanges::default(), |changes, sysctls| {
        configure_real_server(changes, sysctls, &[dr("192.168.16.100"), dr("2001:db8::100")]);
        let addresses = address::addresses(VIP_DEVICE).unwrap();
        assert!(
            addresses.contains(&ip("192.168.16.100")) && addresses.contains(&ip("2001:db8::100")),
            "{addresses:?}"
        );
    });
    assert!(changes.created_devices.contains(VIP_DEVICE));
    let link = ns.sh("ip -br addr show dev lvs0");
    assert!(link.contains("192.168.16.100/32") && link.contains("2001:db8::100/128"), "{link}");
    assert!(ns.sh("ip link show lvs0").contains(",UP"));
    assert!(!link.contains("fe80"), "no link-local address on the VIP device: {link}");
    for device in ["all", "lvs0"] {
        assert_eq!(sysctl(&ns, &format!("net.ipv4.conf.{device}.arp_ignore")), "1");
        assert_eq!(sysctl(&ns, &format!("net.ipv4.conf.{device}.arp_announce")), "2");
    }
    let local = ns.run(|| address::local_addresses().unwrap());
    assert!(local.iter().any(|a| a.device == "lvs0" && a.address == ip("192.168.16.100")), "{local:?}");

    let changes = with_changes(&ns, changes, |changes, sysctls| changes.undo(sysctls).unwrap());
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(ns.sh("ip link show lvs0 2>/dev/null || echo absent").trim(), "absent");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.all.arp_ignore"), "0");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.all.arp_announce"), "1");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn undo_leaves_what_others_made() {
    let ns = Netns::new("foreign");
    ns.sh("ip link add lvs0 type dummy && ip addr add 10.9.9.9/32 dev lvs0 && ip addr add 192.168.16.100/32 dev lvs0");

    let changes = with_changes(&ns, HostChanges::default(), |changes, sysctls| {
        configure_real_server(changes, sysctls, &[dr("192.168.16.100")]);
        configure_real_server(changes, sysctls, &[dr("192.168.16.101")]);
        // Not the agent's: never removed.
        let foreign = DeviceAddress { device: VIP_DEVICE.into(), address: ip("10.9.9.9") };
        no_failures(address::remove_addresses(changes, &[foreign]));
    });
    assert!(changes.created_devices.is_empty());
    assert!(changes.raised_devices.contains(VIP_DEVICE), "{changes:?}");
    let owned: Vec<IpAddr> = changes.addresses.iter().map(|a| a.address).collect();
    assert_eq!(owned, [ip("192.168.16.101")]);

    with_changes(&ns, changes, |changes, sysctls| changes.undo(sysctls).unwrap());
    let link = ns.sh("ip -br addr show dev lvs0");
    assert!(link.contains("10.9.9.9/32") && link.contains("192.168.16.100/32"), "{link}");
    assert!(!link.contains("192.168.16.101"), "{link}");
    assert!(link.contains("DOWN"), "lvs0 was down before: {link}");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn tun_real_server_is_configured_and_undone() {
    let ns = Netns::new("tun");
    ns.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1");

    let changes = with_changes(&ns, HostChanges::default(), |changes, sysctls| {
        let vip = real_server_vip("192.168.16.100", RealServerMode::Tunnel, Some(TunnelEncapsulation::Ipip));
        configure_real_server(changes, sysctls, &[vip]);
    });
    assert!(ns.sh("ip link show tunl0").contains(",UP"));
    assert!(ns.sh("ip -br addr show dev tunl0").contains("192.168.16.100/32"));
    for device in ["all", TUNNEL_DEVICE] {
        assert_eq!(sysctl(&ns, &format!("net.ipv4.conf.{device}.rp_filter")), "0");
        assert_eq!(sysctl(&ns, &format!("net.ipv4.conf.{device}.arp_ignore")), "1");
    }

    let changes = with_changes(&ns, changes, |changes, sysctls| changes.undo(sysctls).unwrap());
    assert!(changes.is_empty(), "{changes:?}");
    let link = ns.sh("ip -br addr show dev tunl0");
    assert!(!link.contains("192.168.16.100") && link.contains("DOWN"), "{link}");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.all.rp_filter"), "1");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.tunl0.rp_filter"), "0");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn gre_and_ipv6_tunnels_end_on_their_fallback_devices() {
    let ns = Netns::new("tun-kinds");
    let changes = with_changes(&ns, HostChanges::default(), |changes, sysctls| {
        let gre = real_server_vip("192.168.16.101", RealServerMode::Tunnel, Some(TunnelEncapsulation::Gre));
        let ip6 = real_server_vip("2001:db8::100", RealServerMode::Tunnel, Some(TunnelEncapsulation::Ipip));
        configure_real_server(changes, sysctls, &[gre, ip6]);
    });
    assert!(ns.sh("ip -br addr show dev gre0").contains("192.168.16.101/32"));
    assert!(ns.sh("ip -br addr show dev ip6tnl0").contains("2001:db8::100/128"));
    assert_eq!(sysctl(&ns, "net.ipv4.conf.gre0.rp_filter"), "0");

    let changes = with_changes(&ns, changes, |changes, sysctls| changes.undo(sysctls).unwrap());
    assert!(changes.is_empty(), "{changes:?}");
    assert!(!ns.sh("ip -br addr show dev gre0").contains("192.168.16.101"));
    assert!(!ns.sh("ip -br addr show dev ip6tnl0").contains("2001:db8::100"));
}

/// A GUE VIP on `port`.
fn gue(address: &str, port: Option<u16>) -> RealServerVip {
    let mut vip = real_server_vip(address, RealServerMode::Tunnel, Some(TunnelEncapsulation::Gue));
    vip.tunnel.as_mut().unwrap().port = port;
    vip
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn gue_real_server_opens_its_port_and_closes_it() {
    let ns = Netns::new("gue");
    // The kernel does not load fou on request: without it, the VIP is refused
    // with the reason, and not taken.
    ns.sh("modprobe -r fou 2>/dev/null; true");
    let changes = with_changes(&ns, HostChanges::default(), |changes, sysctls| {
        let failures = real_server::configure(changes, sysctls, &[gue("192.168.16.100", Some(5555))]);
        let [(vip, e)] = &failures[..] else { panic!("{failures:?}") };
        assert_eq!(*vip, ip("192.168.16.100"));
        assert!(e.to_string().contains("fou module is not loaded"), "{e}");
        // No port given: the error names the field.
        let failures = real_server::configure(changes, sysctls, &[gue("192.168.16.101", None)]);
        assert!(failures[0].1.to_string().contains("tunnel.port"), "{failures:?}");
    });
    assert!(changes.gue_ports.is_empty(), "{changes:?}");
    assert!(!ns.sh("ip -br addr show dev tunl0 2>/dev/null; true").contains("192.168.16.10"));

    // Loaded as the host's configuration would load it. A port another program
    // holds would swallow the VIP's packets: refused.
    ns.sh("modprobe fou");
    let changes = ns.run(move || {
        let _holder = std::net::UdpSocket::bind("0.0.0.0:7777").unwrap();
        let mut changes = changes;
        let failures =
            real_server::configure(&mut changes, &Sysctls::default(), &[gue("192.168.16.103", Some(7777))]);
        assert!(failures[0].1.to_string().contains("taken by another socket"), "{failures:?}");
        changes
    });

    // A port someone else opened for fou serves, and stays theirs.
    ns.sh("ip fou add port 6666 gue");
    let changes = with_changes(&ns, changes, |changes, sysctls| {
        let vips = [
            gue("192.168.16.100", Some(5555)),
            gue("192.168.16.101", Some(5555)),
            gue("192.168.16.102", Some(6666)),
        ];
        configure_real_server(changes, sysctls, &vips);
    });
    let ports = ns.sh("ip fou show");
    assert!(ports.contains("port 5555 gue") && ports.contains("port 6666 gue"), "{ports}");
    let port_5555: Vec<String> = changes.gue_ports.iter().map(|p| p.to_string()).collect();
    assert_eq!(port_5555, ["5555/ipv4"]);
    let link = ns.sh("ip -br addr show dev tunl0");
    assert!(link.contains("192.168.16.100/32") && link.contains("192.168.16.102/32"), "{link}");

    // The GUE VIPs go: their port closes, the foreign one stays.
    let changes = with_changes(&ns, changes, |changes, sysctls| {
        configure_real_server(changes, sysctls, &[dr("192.168.16.110")]);
        let failures = real_server::close_unused_gue_ports(changes, &[dr("192.168.16.110")]);
        assert!(failures.is_empty(), "{failures:?}");
    });
    assert!(changes.gue_ports.is_empty(), "{changes:?}");
    let ports = ns.sh("ip fou show");
    assert!(!ports.contains("5555") && ports.contains("port 6666 gue"), "{ports}");

    // Undo closes what the agent opened and nothing else.
    let changes = with_changes(&ns, changes, |changes, sysctls| {
        configure_real_server(changes, sysctls, &[gue("192.168.16.100", Some(5555))]);
        changes.undo(sysctls).unwrap();
    });
    assert!(changes.is_empty(), "{changes:?}");
    let ports = ns.sh("ip fou show");
    assert!(!ports.contains("5555") && ports.contains("port 6666 gue"), "{ports}");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn masquerade_table_is_replaced_and_removed() {
    let ns = Netns::new("nft");
    ns.sh("nft add table ip other");

    let changes = with_changes(&ns, HostChanges::default(), |changes, _| {
        nat::set_masquerade(changes, &[ip("10.0.2.2"), ip("2001:db8:2::1"), ip("10.0.2.1")]).unwrap();
    });
    let table = ns.sh("nft list table inet lvs_agent");
    assert!(
        table.contains("ip daddr { 10.0.2.1, 10.0.2.2 } masquerade")
            && table.contains("ip6 daddr 2001:db8:2::1 masquerade"),
        "{table}"
    );
    let changes = with_changes(&ns, changes, |changes, _| {
        nat::set_masquerade(changes, &[ip("10.0.3.7")]).unwrap();
    });
    assert!(changes.nft_table);
    assert_eq!(ns.sh("nft list tables"), "table ip other\ntable inet lvs_agent\n");
    let table = ns.sh("nft list table inet lvs_agent");
    assert!(table.contains("hook postrouting") && table.contains("ip daddr 10.0.3.7 masquerade"), "{table}");
    assert!(!table.contains("10.0.2.") && !table.contains("ip6"), "replaced: {table}");

    with_changes(&ns, changes, |changes, sysctls| changes.undo(sysctls).unwrap());
    assert_eq!(ns.sh("nft list tables").trim(), "table ip other");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn announcements_update_a_neighbours_entry() {
    let director = Netns::new("garp-a");
    let neighbour = Netns::new("garp-b");
    director.sh(&format!(
        "ip link add va type veth peer name vb netns {} && ip addr add 10.0.0.1/24 dev va && ip link set va up",
        neighbour.name
    ));
    neighbour.sh("ip addr add 10.0.0.2/24 dev vb && ip link set vb up \
         && ip neigh replace 10.0.0.100 lladdr 02:00:00:00:00:99 dev vb nud stale \
         && ip -6 neigh replace 2001:db8::100 lladdr 02:00:00:00:00:99 dev vb nud stale");
    let mac = director.sh("cat /sys/class/net/va/address").trim().to_string();

    let changes = director.run(|| {
        let mut changes = HostChanges::default();
        no_failures(address::take_vips(&mut changes, &[on_va("10.0.0.100")]));
        no_failures(announce::announce_vips(&[on_va("2001:db8::100")]));
        changes
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(director.sh("ip -br addr show dev va").contains("10.0.0.100/32"));

    let v4 = neighbour.sh("ip neigh show 10.0.0.100 dev vb");
    assert!(v4.contains(&mac), "{v4} (director {mac})");
    let v6 = neighbour.sh("ip -6 neigh show 2001:db8::100 dev vb");
    assert!(v6.contains(&mac), "{v6} (director {mac})");

    let changes = director.run(move || {
        let mut changes = changes;
        no_failures(address::remove_addresses(&mut changes, &[on_va("10.0.0.100")]));
        changes
    });
    assert!(changes.is_empty(), "{changes:?}");
    assert!(!director.sh("ip -br addr show dev va").contains("10.0.0.100"));
}

/// A batch whose answers overrun the socket's receive buffer (`ENOBUFS`, with
/// `net.core.rmem_max` capping the agent's buffer at a few KiB): its outcome
/// is unknown, never a success or a refusal. Route lookups fail as such;
/// address adds are read back, so that the record holds exactly what the kernel
/// took (an address added but not recorded would never be removed).
#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn lost_answers_are_an_unknown_outcome_and_the_host_is_read_again() {
    const VIPS: usize = 1000;
    let ns = Netns::new("enobufs");
    ns.sh("ip link add va type dummy && ip link set va up");
    // Where the kernel keeps it per namespace, and where it does not.
    let rmem_max = common::sh("sysctl -n net.core.rmem_max").trim().to_string();
    let shrink = |value: &str| {
        common::sh(&format!("sysctl -qw net.core.rmem_max={value}"));
        ns.sh(&format!("sysctl -qw net.core.rmem_max={value} 2>/dev/null || true"));
    };
    shrink("4096");
    let vips: Vec<DeviceAddress> =
        (0..VIPS).map(|i| on_va(&format!("10.77.{}.{}", i / 250, i % 250 + 1))).collect();
    let (lookups, changes, failures) = ns.run(move || {
        let lookups = address::route_devices(&vips.iter().map(|v| v.address).collect::<Vec<_>>());
        let mut changes = HostChanges::default();
        let failures = address::add_addresses(&mut changes, &vips);
        (lookups, changes, failures)
    });
    shrink(&rmem_max);

    let unknown = lookups.iter().filter(|lookup| matches!(lookup, Err(e) if e.outcome_unknown())).count();
    assert_eq!(unknown, VIPS, "every lookup's answer lost: {:?}", lookups.first());
    assert!(failures.iter().all(|(_, e)| e.outcome_unknown()), "{:?}", failures.first());
    let present: std::collections::BTreeSet<DeviceAddress> = ns
        .run(|| address::local_addresses().unwrap())
        .into_iter()
        .filter(|a| a.address.is_ipv4() && a.device == "va")
        .collect();
    // (Compared by count first: a thousand addresses make a long message.)
    assert_eq!(changes.addresses.len(), present.len(), "the record is what the kernel took");
    assert_eq!(changes.addresses, present, "the record is what the kernel took");
    assert!(
        !present.is_empty() && !failures.is_empty(),
        "some taken before the answers were lost, some not sent"
    );
    assert_eq!(present.len() + failures.len(), VIPS);
    eprintln!("{} of {VIPS} addresses taken and recorded, {} unknown", present.len(), failures.len());
}
