//! Byte-level tests of the IPVS message layer: kernel replies captured in the lab
//! (see `tests/captures/README.md` for how), and emit/parse round trips of every
//! command. The captures are little-endian, like the machines that made them.
#![cfg(target_endian = "little")]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{DefaultNla, Emitable, ParseableParametrized};
use netlink_packet_generic::GenlHeader;
use pretty_assertions::assert_eq;

use super::*;
use crate::{
    daemon::IpvsDaemonAttr,
    destination::IpvsDestAttr,
    message::{GENL_HDRLEN, IPVS_GENL_VERSION, IpvsAttr, IpvsCmd, IpvsMessage, Nest, nests},
    service::IpvsServiceAttr,
    stats::IpvsStatsAttr,
};

fn captured(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(|line| {
            (0..line.len()).step_by(2).map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap()).collect()
        })
        .collect()
}

/// Parses a generic-netlink payload (header + attributes).
fn parse(payload: &[u8]) -> IpvsMessage {
    let header = GenlHeader { cmd: payload[0], version: payload[1] };
    IpvsMessage::parse_with_param(&payload[GENL_HDRLEN..], header).unwrap()
}

/// Emits a message's generic-netlink payload, as the kernel would lay it out.
fn emit(message: &IpvsMessage) -> Vec<u8> {
    let mut bytes = vec![u8::from(message.cmd), IPVS_GENL_VERSION, 0, 0];
    let start = bytes.len();
    bytes.resize(start + message.buffer_len(), 0);
    message.emit(&mut bytes[start..]);
    bytes
}

fn round_trip(message: &IpvsMessage) {
    let bytes = emit(message);
    assert_eq!(&parse(&bytes), message);
}

fn service_entries(payloads: &[Vec<u8>]) -> Vec<ServiceEntry> {
    payloads
        .iter()
        .filter(|p| p[0] == u8::from(IpvsCmd::NewService))
        .flat_map(|p| {
            nests(p, Nest::Service).map(|n| ServiceEntry::decode(n.unwrap()).unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn captured_replies_re_emit_byte_for_byte() {
    let files = [
        include_str!("../tests/captures/save.hex"),
        include_str!("../tests/captures/timeouts.hex"),
        include_str!("../tests/captures/daemons.hex"),
        include_str!("../tests/captures/info.hex"),
    ];
    for payload in files.iter().flat_map(|f| captured(f)) {
        let message = parse(&payload);
        assert_eq!(emit(&message), payload, "{message:?}");
    }
}

#[test]
fn captured_service_dump_decodes() {
    let services = service_entries(&captured(include_str!("../tests/captures/save.hex")));
    let tcp = Service::new(ServiceKey::tcp("192.168.16.100:80".parse().unwrap()), "wrr")
        .persistent(300, Netmask::Ipv4(Ipv4Addr::new(255, 255, 255, 0)));
    let mut udp6 = Service::new(ServiceKey::udp("[2001:db8::100]:53".parse().unwrap()), "sh");
    udp6.flags = ServiceFlags(ServiceFlags::SCHED2);
    let mut fwmark = Service::new(ServiceKey::Fwmark { family: AddressFamily::Ipv4, mark: 42 }, "mh");
    fwmark.flags = ServiceFlags(ServiceFlags::SCHED1);
    let mut found: Vec<Service> = services.into_iter().map(|e| e.service).collect();
    found.sort_by_key(|s| s.key);
    let mut expected = vec![tcp, udp6, fwmark];
    expected.sort_by_key(|s| s.key);
    // ipvsadm leaves the timeout of non-persistent services at 0 and netmask at /32 (/128).
    assert_eq!(found, expected);
}

#[test]
fn captured_destination_dumps_decode() {
    let payloads = captured(include_str!("../tests/captures/save.hex"));
    let destinations: Vec<Destination> = payloads
        .iter()
        .filter(|p| p[0] == u8::from(IpvsCmd::NewDest))
        .flat_map(|p| nests(p, Nest::Destination).map(|n| n.unwrap()).collect::<Vec<_>>())
        .map(|nest| {
            let family = if nest.len() > 20 && nest[4..8] == [0x20, 0x01, 0x0d, 0xb8] { 10 } else { 2 };
            DestinationEntry::decode(nest, family).unwrap().destination
        })
        .collect();
    let route = Destination::new("192.168.16.21:80".parse().unwrap(), ForwardMethod::DirectRoute, 2);
    let masq = Destination::new("[2001:db8::21]:5353".parse().unwrap(), ForwardMethod::Masquerade, 1);
    let mut gue = Destination::new("10.0.7.9:0".parse().unwrap(), ForwardMethod::Tunnel, 3);
    gue.tunnel = Tunnel { kind: TunnelType::Gue, port: 6080, checksum: TunnelChecksum::RemoteChecksum };
    for expected in [route, masq, gue] {
        assert!(destinations.contains(&expected), "{expected:?} not in {destinations:?}");
    }
    assert_eq!(destinations.len(), 3);
}

#[test]
fn captured_destination_reply_keeps_every_attribute() {
    let payloads = captured(include_str!("../tests/captures/save.hex"));
    let dest_reply = payloads.iter().find(|p| p[0] == u8::from(IpvsCmd::NewDest)).unwrap();
    let IpvsAttr::Destination(attrs) = &parse(dest_reply).attrs[0] else { panic!("no destination nest") };
    // The kernel reports tunnel fields, address family and both stats containers.
    assert!(attrs.iter().any(|a| matches!(a, IpvsDestAttr::AddressFamily(_))));
    assert!(attrs.iter().any(|a| matches!(a, IpvsDestAttr::TunnelType(_))));
    assert!(attrs.iter().any(|a| matches!(a, IpvsDestAttr::Stats(s) if s.len() == 10)));
    assert!(attrs.iter().any(|a| matches!(a, IpvsDestAttr::Stats64(s) if s.len() == 10)));
}

#[test]
fn captured_config_info_and_daemons_decode() {
    let timeouts = parse(&captured(include_str!("../tests/captures/timeouts.hex"))[0]);
    assert_eq!(timeouts.cmd, IpvsCmd::SetConfig);
    assert_eq!(
        timeouts.attrs,
        vec![IpvsAttr::TimeoutTcp(901), IpvsAttr::TimeoutTcpFin(121), IpvsAttr::TimeoutUdp(301)]
    );

    let info = parse(&captured(include_str!("../tests/captures/info.hex"))[0]);
    assert_eq!(info.cmd, IpvsCmd::SetInfo);
    assert_eq!(info.attrs, vec![IpvsAttr::Version(0x010201), IpvsAttr::ConnectionTableSize(4096)]);

    let daemons: Vec<SyncDaemon> = captured(include_str!("../tests/captures/daemons.hex"))
        .iter()
        .flat_map(|p| parse(p).attrs)
        .filter_map(|a| match a {
            IpvsAttr::Daemon(attrs) => SyncDaemon::from_attrs(&attrs),
            _ => None,
        })
        .collect();
    let expected = |state| SyncDaemon {
        state,
        interface: "dummy0".into(),
        sync_id: 7,
        max_length: Some(1472),
        group: Some(Ipv4Addr::new(224, 0, 0, 81).into()),
        port: Some(8848),
        ttl: Some(1),
    };
    assert_eq!(daemons, vec![expected(SyncState::Master), expected(SyncState::Backup)]);
}

fn sample_services() -> Vec<Service> {
    let mut sctp = Service::new(
        ServiceKey::Address { protocol: Protocol::Sctp, address: "10.0.0.1:3868".parse().unwrap() },
        "lc",
    );
    sctp.persistence_engine = Some("sip".into());
    let mut udp6 = Service::new(ServiceKey::udp("[2001:db8::1]:53".parse().unwrap()), "mh")
        .persistent(60, Netmask::Ipv6Prefix(64));
    udp6.flags = udp6.flags.with(ServiceFlags::ONE_PACKET, true).with(ServiceFlags::SCHED2, true);
    vec![
        Service::new(ServiceKey::tcp("10.0.0.1:80".parse().unwrap()), "wrr"),
        sctp,
        udp6,
        Service::new(ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark: 7 }, "sh"),
    ]
}

fn sample_destinations() -> Vec<Destination> {
    let mut gre = Destination::new("10.1.0.2:80".parse().unwrap(), ForwardMethod::Tunnel, 65535);
    gre.tunnel = Tunnel { kind: TunnelType::Gre, port: 0, checksum: TunnelChecksum::Checksum };
    let mut masq = Destination::new("[2001:db8::2]:8080".parse().unwrap(), ForwardMethod::Masquerade, 0);
    masq.upper_threshold = 1000;
    masq.lower_threshold = 10;
    vec![Destination::new("10.1.0.1:80".parse().unwrap(), ForwardMethod::DirectRoute, 1), gre, masq]
}

#[test]
fn every_request_round_trips() {
    let key = ServiceKey::tcp("10.0.0.1:80".parse().unwrap());
    let mut daemon = SyncDaemon::new(SyncState::Master, "eth0", 51);
    daemon.max_length = Some(1400);
    daemon.group = Some(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x81).into());
    daemon.port = Some(8849);
    daemon.ttl = Some(2);
    let mut ops = vec![
        IpvsOp::DeleteService(key),
        IpvsOp::DeleteDestination(key, "10.1.0.1:80".parse().unwrap()),
        IpvsOp::Zero(Some(key)),
        IpvsOp::Zero(None),
        IpvsOp::Flush,
        IpvsOp::SetTimeouts(Timeouts { tcp: 900, tcp_fin: 120, udp: 300 }),
        IpvsOp::StartSyncDaemon(daemon),
        IpvsOp::StartSyncDaemon(SyncDaemon::new(SyncState::Backup, "eth1", 0)),
        IpvsOp::StopSyncDaemon(SyncState::Backup),
    ];
    for service in sample_services() {
        ops.push(IpvsOp::AddService(service.clone()));
        ops.push(IpvsOp::EditService(service));
    }
    for dest in sample_destinations() {
        ops.push(IpvsOp::AddDestination(key, dest));
        ops.push(IpvsOp::EditDestination(key, dest));
    }
    for op in &ops {
        round_trip(&op.to_message());
    }
    // The GET commands, as requests and as replies.
    for cmd in
        [IpvsCmd::GetService, IpvsCmd::GetDest, IpvsCmd::GetDaemon, IpvsCmd::GetConfig, IpvsCmd::GetInfo]
    {
        round_trip(&IpvsMessage::new(cmd, vec![]));
    }
    round_trip(&IpvsMessage::new(IpvsCmd::GetDest, vec![IpvsAttr::Service(key.to_attrs())]));
    round_trip(&IpvsMessage::new(
        IpvsCmd::SetInfo,
        vec![IpvsAttr::Version(0x010201), IpvsAttr::ConnectionTableSize(4096)],
    ));
}

#[test]
fn models_survive_their_attributes() {
    for service in sample_services() {
        assert_eq!(ServiceEntry::from_attrs(&service.to_attrs()).unwrap().service, service);
    }
    for dest in sample_destinations() {
        let family = if dest.address.is_ipv4() { 2 } else { 10 };
        assert_eq!(DestinationEntry::from_attrs(&dest.to_attrs(), family).unwrap().destination, dest);
    }
}

#[test]
fn wire_encodings_follow_the_kernel_header() {
    let service = sample_services().remove(2); // UDP [2001:db8::1]:53, persistent /64
    let bytes = emit(&IpvsOp::AddService(service).to_message());
    let nest = nests(&bytes, Nest::Service).next().unwrap().unwrap();
    // attr (len, type) headers then values, in the order Service::to_attrs emits.
    assert_eq!(&nest[..8], &[6, 0, 1, 0, 10, 0, 0, 0], "AF_INET6 as host u16");
    assert_eq!(&nest[8..16], &[6, 0, 2, 0, 17, 0, 0, 0], "IPPROTO_UDP as host u16");
    assert_eq!(&nest[36..44], &[6, 0, 4, 0, 0, 53, 0, 0], "port big-endian");
    let flags_at = 44 + 8; // after SCHED_NAME "mh\0" (4 + 3, padded to 8)
    assert_eq!(&nest[flags_at..flags_at + 12], &[12, 0, 7, 0, 0x15, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        &nest[flags_at + 20..flags_at + 28],
        &[8, 0, 9, 0, 64, 0, 0, 0],
        "IPv6 netmask: prefix as host u32"
    );

    let v4 = Service::new(ServiceKey::tcp("10.0.0.1:80".parse().unwrap()), "rr")
        .persistent(300, Netmask::Ipv4(Ipv4Addr::new(255, 255, 255, 0)));
    let attrs = v4.to_attrs();
    let netmask = attrs.iter().find(|a| matches!(a, IpvsServiceAttr::Netmask(_))).unwrap();
    let mut buffer = vec![0; netmask.buffer_len()];
    netmask.emit(&mut buffer);
    assert_eq!(buffer, [8, 0, 9, 0, 255, 255, 255, 0], "IPv4 netmask: mask bytes in network order");

    let mut gue = Destination::new("10.1.0.1:80".parse().unwrap(), ForwardMethod::Tunnel, 1);
    gue.tunnel = Tunnel { kind: TunnelType::Gue, port: 6080, checksum: TunnelChecksum::None };
    let port = gue.to_attrs().into_iter().find(|a| matches!(a, IpvsDestAttr::TunnelPort(_))).unwrap();
    let mut buffer = vec![0; port.buffer_len()];
    port.emit(&mut buffer);
    assert_eq!(buffer, [6, 0, 14, 0, 0x17, 0xc0, 0, 0], "TUN_PORT big-endian");

    let daemon_port = IpvsDaemonAttr::Port(8848);
    let mut buffer = vec![0; daemon_port.buffer_len()];
    daemon_port.emit(&mut buffer);
    assert_eq!(buffer, [6, 0, 7, 0, 0x90, 0x22, 0, 0], "MCAST_PORT in host order");
}

#[test]
fn unknown_attributes_are_kept_raw() {
    let unknown = |kind| DefaultNla::new(kind, vec![1, 2, 3, 4]);
    let mut service = sample_services()[0].to_attrs();
    service.push(IpvsServiceAttr::Other(unknown(99)));
    let mut dest = sample_destinations()[0].to_attrs();
    dest.push(IpvsDestAttr::Stats64(vec![IpvsStatsAttr::Conns(5), IpvsStatsAttr::Other(unknown(42))]));
    dest.push(IpvsDestAttr::Other(unknown(77)));
    let message = IpvsMessage::new(
        IpvsCmd::NewDest,
        vec![
            IpvsAttr::Service(service.clone()),
            IpvsAttr::Destination(dest.clone()),
            IpvsAttr::Other(unknown(55)),
        ],
    );
    round_trip(&message);
    // The models ignore what they do not know.
    assert_eq!(ServiceEntry::from_attrs(&service).unwrap().service, sample_services()[0]);
    let entry = DestinationEntry::from_attrs(&dest, 2).unwrap();
    assert_eq!(entry.stats.connections, 5);
}

#[test]
fn truncated_or_corrupt_replies_are_errors_not_panics() {
    // What parses is exactly what the bytes say: emitted again, the same bytes.
    let faithful = |message: &IpvsMessage, bytes: &[u8]| {
        let mut emitted = vec![0; message.buffer_len()];
        message.emit(&mut emitted);
        emitted == bytes
    };
    let mut refused = 0;
    for payload in captured(include_str!("../tests/captures/save.hex")) {
        let header = GenlHeader { cmd: payload[0], version: payload[1] };
        let whole = IpvsMessage::parse_with_param(&payload[GENL_HDRLEN..], header).expect("a captured reply");
        assert!(faithful(&whole, &payload[GENL_HDRLEN..]));
        for nest in nests(&payload, Nest::Service).flatten() {
            ServiceEntry::decode(nest).expect("a captured service");
        }
        for nest in nests(&payload, Nest::Destination).flatten() {
            DestinationEntry::decode(nest, 2).expect("a captured destination");
        }
        for cut in GENL_HDRLEN..payload.len() {
            let bytes = &payload[..cut];
            // Cut inside an attribute: an error; between two: the attributes before the cut.
            match IpvsMessage::parse_with_param(&bytes[GENL_HDRLEN..], header) {
                Ok(message) => assert!(faithful(&message, &bytes[GENL_HDRLEN..]), "cut at {cut}"),
                Err(_) => refused += 1,
            }
            for nest in nests(bytes, Nest::Service).chain(nests(bytes, Nest::Destination)).flatten() {
                let _ = ServiceEntry::decode(nest);
                let _ = DestinationEntry::decode(nest, 2);
            }
        }
        let mut corrupt = payload.clone();
        for i in (GENL_HDRLEN..corrupt.len()).step_by(7) {
            corrupt[i] ^= 0x5a;
            let header = GenlHeader { cmd: corrupt[0], version: corrupt[1] };
            match IpvsMessage::parse_with_param(&corrupt[GENL_HDRLEN..], header) {
                Ok(message) => assert!(faithful(&message, &corrupt[GENL_HDRLEN..]), "corrupt at {i}"),
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > 0, "no truncated or corrupt reply was refused");
}

#[test]
fn errors_name_the_operation_and_object() {
    let key = ServiceKey::tcp("10.0.0.100:80".parse().unwrap());
    let dest = Destination::new(SocketAddr::from(([10, 0, 0, 11], 80)), ForwardMethod::DirectRoute, 1);
    let op = IpvsOp::AddDestination(key, dest);
    let error = IpvsError::Kernel { op: op.to_string(), error: KernelError::from_errno(17, op.subject()) };
    assert_eq!(error.to_string(), "add destination 10.0.0.11:80 to TCP 10.0.0.100:80: already exists");
    let op = IpvsOp::AddService(Service::new(key, "nosuch"));
    assert_eq!(KernelError::from_errno(2, op.subject()), KernelError::UnknownScheduler("nosuch".into()));
    let op = IpvsOp::DeleteDestination(key, dest.address);
    assert_eq!(KernelError::from_errno(2, op.subject()), KernelError::NoSuchDestination);
    assert_eq!(KernelError::from_errno(3, op.subject()), KernelError::NoSuchService);
}

/// Found by parse_properties' round trip: `-d` read a NAT server's port as the
/// service's, so a plan's deletion shown by `--dry-run` named another server
/// when read back. ipvsadm forces the service's port when adding or editing only.
#[test]
fn deleting_a_server_deletes_the_port_given() {
    let key = ServiceKey::tcp("0.0.0.0:412".parse().unwrap());
    let op = IpvsOp::DeleteDestination(key, "0.0.0.0:31".parse().unwrap());
    assert_eq!(ipvsadm::op_rule(&op), "-d -t 0.0.0.0:412 -r 0.0.0.0:31");
    assert_eq!(ipvsadm::parse_rule("-d -t 0.0.0.0:412 -r 0.0.0.0:31"), Ok(op));
    let default_port = IpvsOp::DeleteDestination(key, "10.0.0.1:412".parse().unwrap());
    assert_eq!(ipvsadm::parse_rule("-d -t 0.0.0.0:412 -r 10.0.0.1"), Ok(default_port));
}
