//! Host configuration against a real kernel: each test in its own network
//! namespace, with `ip`, `sysctl` and `nft` as the oracles.
//! Ignored on the host; run them in the lab VM.

mod common;

use std::net::IpAddr;

use common::Netns;
use lvs_agent::host::{
    HostChanges, Sysctls, address,
    address::VIP_DEVICE,
    announce, nat,
    tunnel::{self, TUNNEL_DEVICE},
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
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
        address::configure_real_server(changes, sysctls, ip("192.168.16.100")).unwrap();
        address::add_address(changes, VIP_DEVICE, ip("2001:db8::100")).unwrap();
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
        address::configure_real_server(changes, sysctls, ip("192.168.16.100")).unwrap();
        address::configure_real_server(changes, sysctls, ip("192.168.16.101")).unwrap();
        // Not the agent's: never removed.
        address::remove_address(changes, VIP_DEVICE, ip("10.9.9.9")).unwrap();
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
        tunnel::configure_real_server(changes, sysctls, ip("192.168.16.100")).unwrap();
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
fn masquerade_table_is_replaced_and_removed() {
    let ns = Netns::new("nft");
    ns.sh("nft add table ip other");

    let changes = with_changes(&ns, HostChanges::default(), |changes, _| {
        let nets = ["10.0.2.0/24".parse().unwrap(), "2001:db8:2::/64".parse().unwrap()];
        nat::set_masquerade(changes, &nets).unwrap();
        nat::set_masquerade(changes, &["10.0.3.7/32".parse().unwrap()]).unwrap();
        assert_eq!(nat::tables().unwrap(), ["ip other", "inet lvs_agent"]);
    });
    assert!(changes.nft_table);
    let table = ns.sh("nft list table inet lvs_agent");
    assert!(table.contains("hook postrouting") && table.contains("ip daddr 10.0.3.7 masquerade"), "{table}");
    assert!(!table.contains("10.0.2.0") && !table.contains("ip6"), "replaced: {table}");

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
        address::take_vip(&mut changes, "va", ip("10.0.0.100")).unwrap();
        announce::announce("va", ip("2001:db8::100")).unwrap();
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
        address::release_vip(&mut changes, "va", ip("10.0.0.100")).unwrap();
        changes
    });
    assert!(changes.is_empty(), "{changes:?}");
    assert!(!director.sh("ip -br addr show dev va").contains("10.0.0.100"));
}
