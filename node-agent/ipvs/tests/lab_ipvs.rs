//! The IPVS layer against a real kernel, with `ipvsadm` as the oracle.
//! Ignored on the host; `tests/run` runs them in the lab VM.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use common::{Netns, sorted_lines};
use lvs_ipvs::{
    AddressFamily, Destination, ForwardMethod, IpvsHandle, IpvsOp, KernelError, Netmask, Protocol, Service,
    ServiceFlags, ServiceKey, SyncDaemon, SyncState, Timeouts, Tunnel, TunnelChecksum, TunnelType,
    ipvsadm::{self, ListView},
};
use pretty_assertions::assert_eq;

fn connect() -> IpvsHandle {
    IpvsHandle::connect().expect("IPVS handle")
}

fn saved(handle: &IpvsHandle) -> Vec<String> {
    sorted_lines(&ipvsadm::save(&handle.table().unwrap()))
}

fn key(text: &str) -> ServiceKey {
    ServiceKey::tcp(text.parse().unwrap())
}

fn services() -> Vec<Service> {
    let mut udp6 = Service::new(ServiceKey::udp("[2001:db8::100]:53".parse().unwrap()), "sh");
    udp6.flags = ServiceFlags(ServiceFlags::SCHED1 | ServiceFlags::SCHED2 | ServiceFlags::ONE_PACKET);
    let sctp = Service::new(
        ServiceKey::Address { protocol: Protocol::Sctp, address: "10.0.0.100:3868".parse().unwrap() },
        "lc",
    )
    .persistent(120, Netmask::Ipv4(Ipv4Addr::new(255, 255, 0, 0)));
    let fwmark6 = Service::new(ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark: 9 }, "mh")
        .persistent(600, Netmask::Ipv6Prefix(64));
    let mut sip = Service::new(ServiceKey::udp("10.0.0.100:5060".parse().unwrap()), "rr")
        .persistent(30, Netmask::host(AddressFamily::Ipv4));
    sip.persistence_engine = Some("sip".into());
    vec![
        Service::new(key("10.0.0.100:80"), "wrr"),
        udp6,
        sctp,
        Service::new(ServiceKey::Fwmark { family: AddressFamily::Ipv4, mark: 7 }, "dh"),
        fwmark6,
        sip,
    ]
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn services_are_added_read_edited_and_deleted() {
    let ns = Netns::new("svc");
    let (ours, services_seen) = ns.run(move || {
        let handle = connect();
        for service in services() {
            handle.apply(&IpvsOp::AddService(service)).unwrap();
        }
        let mut seen: Vec<Service> = handle.services().unwrap().into_iter().map(|e| e.service).collect();
        seen.sort_by_key(|s| s.key);
        (saved(&handle), seen)
    });
    let mut expected = services();
    expected.sort_by_key(|s| s.key);
    assert_eq!(services_seen, expected);
    assert_eq!(ours, ns.saved_rules());
    assert_eq!(
        ns.saved_rules(),
        sorted_lines(
            "-A -t 10.0.0.100:80 -s wrr\n\
             -A -u [2001:db8::100]:53 -s sh -o -b sh-fallback,sh-port\n\
             -A --sctp-service 10.0.0.100:3868 -s lc -p 120 -M 255.255.0.0\n\
             -A -f 7 -s dh\n\
             -A -f 9 -6 -s mh -p 600 -M 64\n\
             -A -u 10.0.0.100:5060 -s rr -p 30 --pe sip\n"
        )
    );

    // Get one, edit it, delete another.
    let oracle = ns.run(move || {
        let handle = connect();
        let entry = handle.service(&key("10.0.0.100:80")).unwrap();
        assert_eq!(entry.service, services()[0]);
        let mut edited =
            entry.service.clone().persistent(900, Netmask::Ipv4(Ipv4Addr::new(255, 255, 255, 0)));
        edited.scheduler = "lblcr".into();
        handle.apply(&IpvsOp::EditService(edited.clone())).unwrap();
        assert_eq!(handle.service(&edited.key).unwrap().service, edited);
        handle.apply(&IpvsOp::DeleteService(services()[3].key)).unwrap();
        saved(&handle)
    });
    let rules = ns.saved_rules();
    assert_eq!(oracle, rules);
    assert!(rules.contains(&"-A -t 10.0.0.100:80 -s lblcr -p 900 -M 255.255.255.0".to_string()), "{rules:?}");
    assert!(!rules.iter().any(|r| r.starts_with("-A -f 7 ")), "{rules:?}");
}

fn destinations() -> Vec<Destination> {
    let mut gue = Destination::new("10.1.0.3:80".parse().unwrap(), ForwardMethod::Tunnel, 3);
    gue.tunnel = Tunnel { kind: TunnelType::Gue, port: 6080, checksum: TunnelChecksum::Checksum };
    let mut gre = Destination::new("10.1.0.4:80".parse().unwrap(), ForwardMethod::Tunnel, 4);
    gre.tunnel = Tunnel { kind: TunnelType::Gre, port: 0, checksum: TunnelChecksum::None };
    let mut masq = Destination::new("10.1.0.5:8080".parse().unwrap(), ForwardMethod::Masquerade, 65535);
    masq.upper_threshold = 1000;
    masq.lower_threshold = 100;
    vec![
        Destination::new("10.1.0.1:80".parse().unwrap(), ForwardMethod::DirectRoute, 1),
        Destination::new("10.1.0.2:80".parse().unwrap(), ForwardMethod::Tunnel, 2),
        gue,
        gre,
        masq,
        Destination::new("10.1.0.6:80".parse().unwrap(), ForwardMethod::DirectRoute, 0),
    ]
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn destinations_of_every_forwarding_method_are_added_edited_and_deleted() {
    let ns = Netns::new("dest");
    let found = ns.run(|| {
        let handle = connect();
        let service = key("10.0.0.100:80");
        handle.apply(&IpvsOp::AddService(Service::new(service, "wlc"))).unwrap();
        let ops: Vec<IpvsOp> =
            destinations().into_iter().map(|d| IpvsOp::AddDestination(service, d)).collect();
        assert!(handle.apply_batch(&ops).is_success());
        handle.destinations(&service).unwrap()
    });
    let mut expected = destinations();
    let mut found: Vec<Destination> = found.into_iter().map(|e| e.destination).collect();
    found.sort_by_key(|d| d.address);
    expected.sort_by_key(|d| d.address);
    assert_eq!(found, expected);
    let tun_info = ns.ipvsadm("-Ln --tun-info");
    for line in [
        "10.1.0.2:80                  Tunnel  ipip",
        "10.1.0.3:80                  Tunnel  gue:6080:+c",
        "10.1.0.4:80                  Tunnel  gre:-c",
    ] {
        assert!(tun_info.contains(line), "{line:?} not in\n{tun_info}");
    }
    assert!(ns.ipvsadm("-Ln --thresholds").contains("10.1.0.5:8080                1000       100"));

    // Edit a weight and thresholds, delete two, and compare with the oracle.
    let ours = ns.run(|| {
        let handle = connect();
        let service = key("10.0.0.100:80");
        let mut masq = destinations()[4];
        masq.weight = 7;
        masq.upper_threshold = 0;
        masq.lower_threshold = 0;
        let ops = [
            IpvsOp::EditDestination(service, masq),
            IpvsOp::DeleteDestination(service, "10.1.0.1:80".parse().unwrap()),
            IpvsOp::DeleteDestination(service, "10.1.0.6:80".parse().unwrap()),
        ];
        assert!(handle.apply_batch(&ops).is_success());
        saved(&handle)
    });
    let rules = ns.saved_rules();
    assert_eq!(ours, rules);
    assert!(rules.contains(&"-a -t 10.0.0.100:80 -r 10.1.0.5:8080 -m -w 7".to_string()), "{rules:?}");
    assert!(!rules.iter().any(|r| r.contains("10.1.0.1:80") || r.contains("10.1.0.6:80")), "{rules:?}");
    assert!(ns.ipvsadm("-Ln --thresholds").contains("10.1.0.5:8080                0          0"));
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn info_timeouts_flush_and_listing_match_ipvsadm() {
    let ns = Netns::new("misc");
    let (info_text, timeouts_text, listing) = ns.run(|| {
        let handle = connect();
        let ops: Vec<IpvsOp> = services().into_iter().map(IpvsOp::AddService).collect();
        assert!(handle.apply_batch(&ops).is_success());
        handle.apply(&IpvsOp::SetTimeouts(Timeouts { tcp: 901, tcp_fin: 0, udp: 303 })).unwrap();
        let timeouts = handle.timeouts().unwrap();
        assert_eq!(timeouts, Timeouts { tcp: 901, tcp_fin: 120, udp: 303 }, "0 keeps the current value");
        let info = handle.info().unwrap();
        let table = handle.table().unwrap();
        (
            ipvsadm::list(&info, &table, ListView::Connections),
            ipvsadm::timeouts(&timeouts),
            ipvsadm::list(&info, &table, ListView::Stats),
        )
    });
    assert_eq!(sorted_lines(&info_text), sorted_lines(&ns.ipvsadm("-Ln")));
    assert_eq!(timeouts_text, ns.ipvsadm("-L --timeout"));
    assert_eq!(sorted_lines(&listing), sorted_lines(&ns.ipvsadm("-Ln --stats")));
    ns.run(|| connect().apply(&IpvsOp::Flush).unwrap());
    assert_eq!(ns.ipvsadm("-S -n"), "");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn counters_are_read_and_zeroed() {
    // director <-veth-> client; the director's service has one direct-routing
    // destination that never answers, which is enough for SYNs to be counted.
    let director = Netns::new("ctr-d");
    let client = Netns::new("ctr-c");
    let (d_if, c_if) = (format!("vd{}", std::process::id()), format!("vc{}", std::process::id()));
    common::sh(&format!(
        "ip link add {d_if} netns {} type veth peer name {c_if} netns {}",
        director.name, client.name
    ));
    director.sh(&format!(
        "ip addr add 10.2.0.1/24 dev {d_if} && ip link set {d_if} up && ip addr add 10.2.0.100/32 dev lo"
    ));
    director.sh(&format!("ip neigh add 10.2.0.50 lladdr 02:00:00:00:00:50 dev {d_if}"));
    client.sh(&format!("ip addr add 10.2.0.2/24 dev {c_if} && ip link set {c_if} up && ip route add 10.2.0.100/32 via 10.2.0.1"));
    director.run(|| {
        let handle = connect();
        let service = key("10.2.0.100:80");
        handle.apply(&IpvsOp::AddService(Service::new(service, "rr"))).unwrap();
        let dest = Destination::new("10.2.0.50:80".parse().unwrap(), ForwardMethod::DirectRoute, 1);
        handle.apply(&IpvsOp::AddDestination(service, dest)).unwrap();
    });
    for _ in 0..3 {
        let _ = client.sh("curl -s -m 1 http://10.2.0.100/ || true");
    }
    std::thread::sleep(Duration::from_secs(3)); // the estimator publishes every 2 s
    let (before, after) = director.run(|| {
        let handle = connect();
        let before = handle.table().unwrap();
        handle.apply(&IpvsOp::Zero(Some(key("10.2.0.100:80")))).unwrap();
        (before, handle.table().unwrap())
    });
    let (service, dests) = &before[0];
    assert!(service.stats.connections >= 3 && service.stats.packets_in >= 3, "{:?}", service.stats);
    assert_eq!(dests[0].stats.connections, service.stats.connections);
    let (service, dests) = &after[0];
    assert_eq!((service.stats.connections, dests[0].stats.packets_in), (0, 0));
    assert_eq!(
        sorted_lines(&ipvsadm::list(
            &lvs_ipvs::Info { version: 0x010201, connection_table_size: 4096 },
            &after,
            ListView::Stats
        )),
        sorted_lines(&director.ipvsadm("-Ln --stats"))
    );
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn sync_daemons_start_list_and_stop() {
    let ns = Netns::new("sync");
    ns.sh("ip link add sync0 type dummy && ip link set sync0 multicast on up && ip addr add 10.3.0.1/24 dev sync0");
    let listed = ns.run(|| {
        let handle = connect();
        let mut master = SyncDaemon::new(SyncState::Master, "sync0", 51);
        master.port = Some(8850);
        master.ttl = Some(2);
        master.max_length = Some(1400);
        let backup = SyncDaemon::new(SyncState::Backup, "sync0", 51);
        handle.apply(&IpvsOp::StartSyncDaemon(master)).unwrap();
        handle.apply(&IpvsOp::StartSyncDaemon(backup)).unwrap();
        let daemons = handle.sync_daemons().unwrap();
        assert_eq!(daemons.len(), 2);
        ipvsadm::daemons(&daemons)
    });
    assert_eq!(listed, ns.ipvsadm("-L --daemon"));
    assert!(
        listed.contains(
            "master sync daemon (mcast=sync0, syncid=51, maxlen=1400, group=224.0.0.81, port=8850, ttl=2)"
        ),
        "{listed}"
    );
    let remaining = ns.run(|| {
        let handle = connect();
        handle.apply(&IpvsOp::StopSyncDaemon(SyncState::Backup)).unwrap();
        let remaining = handle.sync_daemons().unwrap();
        handle.apply(&IpvsOp::StopSyncDaemon(SyncState::Master)).unwrap();
        remaining
    });
    assert_eq!(remaining.iter().map(|d| d.state).collect::<Vec<_>>(), vec![SyncState::Master]);
    assert_eq!(ns.ipvsadm("-L --daemon"), "");
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn kernel_errors_are_typed_and_name_the_object() {
    let ns = Netns::new("err");
    ns.run(|| {
        let handle = connect();
        let service = key("10.0.0.100:80");
        let dest = Destination::new("10.0.0.11:80".parse().unwrap(), ForwardMethod::DirectRoute, 1);
        handle.apply(&IpvsOp::AddService(Service::new(service, "rr"))).unwrap();
        handle.apply(&IpvsOp::AddDestination(service, dest)).unwrap();

        let error = handle.apply(&IpvsOp::AddService(Service::new(service, "rr"))).unwrap_err();
        assert_eq!(error.kernel_error(), Some(&KernelError::AlreadyExists));
        assert_eq!(error.to_string(), "add service TCP 10.0.0.100:80: already exists");

        let error = handle.apply(&IpvsOp::AddDestination(service, dest)).unwrap_err();
        assert_eq!(error.to_string(), "add destination 10.0.0.11:80 to TCP 10.0.0.100:80: already exists");

        let missing = key("10.0.0.200:80");
        let error = handle.apply(&IpvsOp::DeleteService(missing)).unwrap_err();
        assert_eq!(error.to_string(), "delete service TCP 10.0.0.200:80: no such service");
        let error = handle.service(&missing).unwrap_err();
        assert_eq!(error.kernel_error(), Some(&KernelError::NoSuchService));

        let error =
            handle.apply(&IpvsOp::DeleteDestination(service, "10.0.0.99:80".parse().unwrap())).unwrap_err();
        assert_eq!(
            error.to_string(),
            "delete destination 10.0.0.99:80 from TCP 10.0.0.100:80: no such destination"
        );

        let error = handle.apply(&IpvsOp::AddService(Service::new(missing, "nosuch"))).unwrap_err();
        assert_eq!(error.kernel_error(), Some(&KernelError::UnknownScheduler("nosuch".into())));
        assert_eq!(
            error.to_string(),
            "add service TCP 10.0.0.200:80: unknown scheduler or persistence engine \"nosuch\""
        );

        let mut bad = dest;
        bad.lower_threshold = 10;
        let error = handle.apply(&IpvsOp::EditDestination(service, bad)).unwrap_err();
        assert_eq!(error.kernel_error(), Some(&KernelError::OutOfRange));
    });
}

#[test]
#[ignore = "needs the lab kernel with IPVS: run tests/run (or tests/lab/vm)"]
fn a_batch_reports_each_failure_and_applies_the_rest() {
    let ns = Netns::new("batch");
    let report = ns.run(|| {
        let handle = connect();
        let mut ops = Vec::new();
        for i in 0..300u16 {
            let service = key(&format!("10.0.1.{}:{}", i % 250 + 1, 80 + i / 250));
            ops.push(IpvsOp::AddService(Service::new(service, "rr")));
            ops.push(IpvsOp::AddDestination(
                service,
                Destination::new(
                    format!("10.0.2.{}:80", i % 250 + 1).parse().unwrap(),
                    ForwardMethod::DirectRoute,
                    1,
                ),
            ));
        }
        // Two failures in the middle, in different chunks: a duplicate and a bad scheduler.
        ops.insert(100, ops[0].clone());
        ops.insert(400, IpvsOp::AddService(Service::new(key("10.9.9.9:80"), "nosuch")));
        handle.apply_batch(&ops)
    });
    let failed: Vec<(usize, String)> = report.failures.iter().map(|(i, e)| (*i, e.to_string())).collect();
    assert_eq!(
        failed,
        vec![
            (100, "add service TCP 10.0.1.1:80: already exists".to_string()),
            (
                400,
                "add service TCP 10.9.9.9:80: unknown scheduler or persistence engine \"nosuch\"".to_string()
            ),
        ]
    );
    assert_eq!(report.requests, 602);
    assert_eq!(ns.saved_rules().len(), 600, "every other request was applied");
}
