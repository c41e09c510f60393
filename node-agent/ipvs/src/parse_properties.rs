//! Parsers never panic (issue 12): generic-netlink replies of the IPVS family
//! (whole messages, the nests dumps are decoded from in place, the datagram
//! splitter) and ipvsadm rules, on arbitrary input and on valid input broken
//! on purpose: captured replies with bytes flipped, cut, inserted or removed,
//! attribute lengths lied about at every nesting level; rule lines with their
//! words shuffled, dropped and mixed with hostile ones. What does parse must
//! read the same when emitted again, and every model survives emit then parse.
//!
//! Here rather than under tests/ because the wire layer is the crate's own.
//! Cases per property: proptest's default (256), or PROPTEST_CASES (tests/fuzz
//! runs them long).
#![cfg(target_endian = "little")] // the captures are little-endian

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::GenlHeader;
use proptest::{collection::vec, prelude::*, sample::Index};

use crate::{
    handle::{Reply, parse_message, replies},
    ipvsadm::{op_rule, parse_rule, parse_rules},
    message::{GENL_HDRLEN, IPVS_GENL_VERSION, IpvsAttr, IpvsMessage, Nest, nests},
    nla::AF_INET6,
    stats::{IpvsStatsAttr, Width, emit_stats, stats_buffer_len},
    *,
};

const CAPTURES: [&str; 4] = [
    include_str!("../tests/captures/save.hex"),
    include_str!("../tests/captures/timeouts.hex"),
    include_str!("../tests/captures/daemons.hex"),
    include_str!("../tests/captures/info.hex"),
];

/// Every captured generic-netlink payload (header + attributes).
fn captures() -> Vec<Vec<u8>> {
    CAPTURES
        .iter()
        .flat_map(|text| text.lines())
        .map(|line| {
            (0..line.len()).step_by(2).map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap()).collect()
        })
        .collect()
}

/// Offsets of the length field of every attribute header in `bytes`, nested
/// ones included: where a lie about a length is worth telling.
fn attribute_offsets(bytes: &[u8], base: usize, offsets: &mut Vec<usize>) {
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let length = usize::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]]));
        if length < 4 || at + length > bytes.len() {
            return;
        }
        offsets.push(base + at);
        // Not every value is a nest; a false one only adds harmless targets.
        attribute_offsets(&bytes[at + 4..at + length], base + at + 4, offsets);
        at += length.next_multiple_of(4);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    /// The length of the n-th attribute header (of the unmutated message).
    Length(Index, u16),
    Insert(Index, Vec<u8>),
    Remove(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Lengths near the truth and far from it: one more or less, 0..3 (less
    // than a header), the largest a u16 can say.
    let length = prop_oneof![0u16..8, 4u16..200, Just(u16::MAX), any::<u16>()];
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), length).prop_map(|(i, l)| Mutation::Length(i, l)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..12)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1u8..12).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

/// `payload` (a genl payload) broken by `mutations`, in order; the header stays.
fn mutate(payload: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut offsets = Vec::new();
    attribute_offsets(&payload[GENL_HDRLEN..], GENL_HDRLEN, &mut offsets);
    let mut bytes = payload.to_vec();
    for mutation in mutations {
        let body = bytes.len() - GENL_HDRLEN;
        match mutation {
            Mutation::Flip(i, x) if body > 0 => bytes[GENL_HDRLEN + i.index(body)] ^= x,
            Mutation::Truncate(i) => bytes.truncate(GENL_HDRLEN + i.index(body + 1)),
            Mutation::Length(i, length) if !offsets.is_empty() => {
                let at = offsets[i.index(offsets.len())];
                if at + 2 <= bytes.len() {
                    bytes[at..at + 2].copy_from_slice(&length.to_ne_bytes());
                }
            }
            Mutation::Insert(i, extra) => {
                let at = GENL_HDRLEN + i.index(body + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Remove(i, n) if body > 0 => {
                let at = GENL_HDRLEN + i.index(body);
                let end = (at + usize::from(*n)).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {}
        }
    }
    bytes
}

fn emit(message: &IpvsMessage) -> Vec<u8> {
    let mut bytes = vec![u8::from(message.cmd), IPVS_GENL_VERSION, 0, 0];
    bytes.resize(GENL_HDRLEN + message.buffer_len(), 0);
    message.emit(&mut bytes[GENL_HDRLEN..]);
    bytes
}

/// Everything the handle does with a reply payload, checked: decoding must
/// not panic, and a message that parses reads the same once emitted again.
fn decode_every_way(payload: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = parse_message(payload) {
        // Emitted, parsed and emitted again: the same bytes. (Not the same
        // message: the library's DefaultNla, which keeps unknown attributes,
        // drops their byte-order flag when emitting; the agent ignores them.)
        let bytes = emit(&message);
        let again = parse_message(&bytes).map(|m| emit(&m)).map_err(|e| e.to_string());
        prop_assert_eq!(again, Ok(bytes), "{:?}", message);
        for attr in &message.attrs {
            if let IpvsAttr::Service(attrs) = attr {
                let _ = ServiceEntry::from_attrs(attrs);
            }
            if let IpvsAttr::Daemon(attrs) = attr {
                let _ = SyncDaemon::from_attrs(attrs);
            }
        }
    }
    for nest in nests(payload, Nest::Service).flatten() {
        let _ = ServiceEntry::decode(nest);
    }
    for nest in nests(payload, Nest::Destination).flatten() {
        let _ = DestinationEntry::decode(nest, 2);
        let _ = DestinationEntry::decode(nest, AF_INET6);
        let _ = DestinationEntry::decode(nest, 0);
    }
    Ok(())
}

/// `payload` as the kernel frames it: a netlink header (type 0x20, a family
/// id) and padding to 4 bytes.
fn datagram(payloads: &[Vec<u8>], lie: Option<u32>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for payload in payloads {
        let length = lie.unwrap_or(16 + payload.len() as u32);
        bytes.extend_from_slice(&length.to_ne_bytes());
        bytes.extend_from_slice(&0x20u16.to_ne_bytes());
        bytes.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        bytes.extend_from_slice(&7u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
    }
    bytes
}

fn split_datagram(bytes: &[u8]) -> Result<(), TestCaseError> {
    for reply in replies(bytes) {
        if let Ok((_, _, Reply::Data { payload, .. })) = reply {
            decode_every_way(payload)?;
        }
    }
    Ok(())
}

// The models, within what the kernel and ipvsadm accept.

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<Ipv4Addr>().prop_map(IpAddr::V4), any::<Ipv6Addr>().prop_map(IpAddr::V6)]
}

fn key() -> impl Strategy<Value = ServiceKey> {
    let protocol = prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)];
    let family = prop_oneof![Just(AddressFamily::Ipv4), Just(AddressFamily::Ipv6)];
    prop_oneof![
        3 => (protocol, ip(), any::<u16>())
            .prop_map(|(protocol, ip, port)| ServiceKey::Address { protocol, address: SocketAddr::new(ip, port) }),
        1 => (family, 1u32..).prop_map(|(family, mark)| ServiceKey::Fwmark { family, mark }),
    ]
}

/// A service ipvsadm can say: persistence with a timeout ipvsadm takes, the
/// netmask only with it, flags its scheduler has names for.
fn service() -> impl Strategy<Value = Service> {
    let scheduler =
        prop::sample::select(vec!["rr", "wrr", "lc", "wlc", "sh", "mh", "sed", "nq", "fo", "twos"]);
    let persistence = prop::option::of((1u32..=86400 * 31, any::<u32>(), 1u32..=128));
    (key(), scheduler, persistence, any::<bool>(), 0u32..8, prop::option::of(Just("sip"))).prop_map(
        |(key, scheduler, persistence, one_packet, sched_flags, pe)| {
            let mut service = Service::new(key, scheduler);
            // Port 0 (every port) needs persistence.
            let port_zero = matches!(key, ServiceKey::Address { address, .. } if address.port() == 0);
            let persistence = persistence.or(port_zero.then_some((360, u32::MAX, 128)));
            if let Some((timeout, mask, prefix)) = persistence {
                let netmask = match key.family() {
                    AddressFamily::Ipv4 => Netmask::Ipv4(Ipv4Addr::from(mask)),
                    AddressFamily::Ipv6 => Netmask::Ipv6Prefix(prefix),
                };
                service = service.persistent(timeout, netmask);
            }
            let udp_or_fwmark = matches!(
                key,
                ServiceKey::Fwmark { .. } | ServiceKey::Address { protocol: Protocol::Udp, .. }
            );
            service.flags = service.flags.with(ServiceFlags::ONE_PACKET, one_packet && udp_or_fwmark);
            let named = if matches!(scheduler, "sh" | "mh") { 0b011 } else { 0b111 };
            service.flags = ServiceFlags(service.flags.0 | ((sched_flags & named) << 3));
            service.persistence_engine = pe.map(str::to_string);
            service
        },
    )
}

/// A destination of `key` ipvsadm can say: DR and tunnel servers take the
/// service's port, tunnel settings only with the tunnel method.
fn destination(key: ServiceKey) -> impl Strategy<Value = Destination> {
    let forward = prop_oneof![
        Just(ForwardMethod::DirectRoute),
        Just(ForwardMethod::Masquerade),
        Just(ForwardMethod::Tunnel)
    ];
    let tunnel = prop_oneof![
        Just(Tunnel::default()),
        (1u16.., 0u16..3).prop_map(|(port, c)| Tunnel {
            kind: TunnelType::Gue,
            port,
            checksum: TunnelChecksum::from_number(c)
        }),
        (0u16..2).prop_map(|c| Tunnel {
            kind: TunnelType::Gre,
            port: 0,
            checksum: TunnelChecksum::from_number(c)
        }),
    ];
    let family = key.family();
    (ip(), any::<u16>(), forward, 0u32..=65535, any::<u32>(), any::<u32>(), tunnel).prop_map(
        move |(ip, port, forward, weight, upper, lower, tunnel)| {
            let ip = match (family, ip) {
                (AddressFamily::Ipv4, IpAddr::V6(v6)) => IpAddr::V4(Ipv4Addr::from(v6.to_bits() as u32)),
                (AddressFamily::Ipv6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
                (_, ip) => ip,
            };
            let port = match key {
                ServiceKey::Address { address, .. } if forward != ForwardMethod::Masquerade => address.port(),
                _ => port,
            };
            let mut dest = Destination::new(SocketAddr::new(ip, port), forward, weight);
            dest.upper_threshold = upper;
            dest.lower_threshold = lower;
            if forward == ForwardMethod::Tunnel {
                dest.tunnel = tunnel;
            }
            dest
        },
    )
}

fn daemon() -> impl Strategy<Value = SyncDaemon> {
    let state = prop_oneof![Just(SyncState::Master), Just(SyncState::Backup)];
    // An unspecified group means none (the kernel's default); mapped rather
    // than filtered, since filtering runs out of rejects in long runs.
    let group =
        ip().prop_map(|ip| if ip.is_unspecified() { IpAddr::V4(Ipv4Addr::new(224, 0, 0, 81)) } else { ip });
    (
        state,
        prop::sample::select(vec!["eth0", "dummy0", "bond0.100"]),
        any::<u32>(),
        any::<Option<u16>>(),
        prop::option::of(group),
        any::<Option<u16>>(),
        any::<Option<u8>>(),
    )
        .prop_map(|(state, interface, sync_id, max_length, group, port, ttl)| SyncDaemon {
            state,
            interface: interface.into(),
            sync_id,
            max_length,
            group,
            port,
            ttl,
        })
}

/// Every operation, valid for ipvsadm.
fn op() -> impl Strategy<Value = IpvsOp> {
    let timeouts = any::<(u32, u32, u32)>().prop_map(|(tcp, tcp_fin, udp)| Timeouts { tcp, tcp_fin, udp });
    let with_destination =
        key().prop_flat_map(|key| (Just(key), destination(key), 0u8..3)).prop_map(|(key, dest, command)| {
            match command {
                0 => IpvsOp::AddDestination(key, dest),
                1 => IpvsOp::EditDestination(key, dest),
                _ => IpvsOp::DeleteDestination(key, dest.address),
            }
        });
    prop_oneof![
        service().prop_map(IpvsOp::AddService),
        service().prop_map(IpvsOp::EditService),
        key().prop_map(IpvsOp::DeleteService),
        with_destination,
        prop::option::of(key()).prop_map(IpvsOp::Zero),
        Just(IpvsOp::Flush),
        timeouts.prop_map(IpvsOp::SetTimeouts),
        daemon().prop_map(IpvsOp::StartSyncDaemon),
        prop_oneof![Just(SyncState::Master), Just(SyncState::Backup)].prop_map(IpvsOp::StopSyncDaemon),
    ]
}

fn counter_attrs(c: [u64; 10]) -> Vec<IpvsStatsAttr> {
    use IpvsStatsAttr::*;
    vec![
        Conns(c[0]),
        InPkts(c[1]),
        OutPkts(c[2]),
        InBytes(c[3]),
        OutBytes(c[4]),
        Cps(c[5]),
        InPps(c[6]),
        OutPps(c[7]),
        InBps(c[8]),
        OutBps(c[9]),
    ]
}

/// Words a hostile or careless rule file may hold.
fn hostile_word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "-A",
            "-E",
            "-D",
            "-a",
            "-e",
            "-d",
            "-C",
            "-Z",
            "--set",
            "--start-daemon",
            "--stop-daemon",
            "-t",
            "-u",
            "--sctp-service",
            "-f",
            "-6",
            "-s",
            "-p",
            "-M",
            "-b",
            "-o",
            "--pe",
            "-r",
            "-g",
            "-i",
            "-m",
            "-w",
            "-x",
            "-y",
            "--tun-type",
            "--tun-port",
            "--tun-csum",
            "--tun-remcsum",
            "--tun-nocsum",
            "--mcast-interface",
            "--syncid",
            "--sync-maxlen",
            "--mcast-group",
            "--mcast-port",
            "--mcast-ttl",
            "-n",
            "ipvsadm",
            "master",
            "backup",
            "gue",
            "gre",
            "ipip",
            "sh-port,mh-fallback,flag-3",
            "--weight=",
            "--tun-port=",
            "=",
            "--=",
            "-",
            "--",
            "0",
            "-1",
            "4294967296",
            "99999999999999999999999",
            "65536",
            "2678401",
            "[::1]",
            "[::1]:",
            "[::1]:99999",
            "1.2.3.4:65536",
            "1.2.3.4:-1",
            "[1.2.3.4]:80",
            "::ffff:1.2.3.4",
            "255.255.255.255",
            "ﬀ",
            "ß",
            "١٢٣",
            "٣:80",
            "\u{202e}-A",
            "-\u{0}",
        ])
        .prop_map(str::to_string),
        "\\PC{1,12}",
        any::<u64>().prop_map(|n| n.to_string()),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_netlink_decoders(
        cmd in prop_oneof![1u8..=17, any::<u8>()],
        body in vec(any::<u8>(), 0..600),
    ) {
        let mut payload = vec![cmd, IPVS_GENL_VERSION, 0, 0];
        payload.extend_from_slice(&body);
        decode_every_way(&payload)?;
        decode_every_way(&body)?; // and as if it had no genl header
        let _ = IpvsMessage::parse_with_param(&body, GenlHeader { cmd, version: 1 });
        split_datagram(&body)?;
    }

    #[test]
    fn broken_captured_replies_are_refused_or_read_as_they_say(
        choice in any::<Index>(),
        mutations in vec(mutation(), 1..4),
    ) {
        let captures = captures();
        let payload = mutate(&captures[choice.index(captures.len())], &mutations);
        decode_every_way(&payload)?;
        split_datagram(&datagram(std::slice::from_ref(&payload), None))?;
    }

    #[test]
    fn datagrams_with_lying_headers_never_panic_the_splitter(
        count in 1usize..4,
        lie in prop_oneof![Just(None), (0u32..64).prop_map(Some), any::<u32>().prop_map(Some)],
        cut in any::<Index>(),
    ) {
        let bytes = datagram(&captures()[..count], lie);
        split_datagram(&bytes)?;
        split_datagram(&bytes[..cut.index(bytes.len() + 1)])?;
    }

    #[test]
    fn services_and_destinations_survive_the_wire(service in service(), dest in key().prop_flat_map(destination)) {
        let message = IpvsOp::AddService(service.clone()).to_message();
        let bytes = emit(&message);
        prop_assert_eq!(&parse_message(&bytes).unwrap(), &message);
        let nest = nests(&bytes, Nest::Service).next().unwrap().unwrap();
        prop_assert_eq!(&ServiceEntry::decode(nest).unwrap().service, &service);

        let message = IpvsOp::AddDestination(service.key, dest).to_message();
        let bytes = emit(&message);
        prop_assert_eq!(&parse_message(&bytes).unwrap(), &message);
        let nest = nests(&bytes, Nest::Destination).next().unwrap().unwrap();
        prop_assert_eq!(DestinationEntry::decode(nest, 0).unwrap().destination, dest);
    }

    #[test]
    fn daemons_and_counters_survive_the_wire(daemon in daemon(), c in any::<[u64; 10]>(), wide in any::<bool>()) {
        let message = IpvsOp::StartSyncDaemon(daemon.clone()).to_message();
        let parsed = parse_message(&emit(&message)).unwrap();
        prop_assert_eq!(&parsed, &message);
        let [IpvsAttr::Daemon(attrs)] = &parsed.attrs[..] else { panic!("one daemon nest") };
        prop_assert_eq!(SyncDaemon::from_attrs(attrs), Some(daemon));

        let width = if wide { Width::Wide } else { Width::Legacy };
        let counters = counter_attrs(c);
        let mut bytes = vec![0; stats_buffer_len(&counters, width)];
        emit_stats(&counters, width, &mut bytes);
        let s = Stats::decode(&bytes).unwrap();
        // The legacy container holds all but the byte counts in 32 bits, as the kernel sends them.
        let mut expected = c;
        if !wide {
            for (i, v) in expected.iter_mut().enumerate() {
                if i != 3 && i != 4 {
                    *v = u64::from(*v as u32);
                }
            }
        }
        prop_assert_eq!(
            [s.connections, s.packets_in, s.packets_out, s.bytes_in, s.bytes_out, s.connections_rate,
             s.packets_in_rate, s.packets_out_rate, s.bytes_in_rate, s.bytes_out_rate],
            expected
        );
    }

    #[test]
    fn arbitrary_text_never_panics_the_rule_parser(text in "\\PC{0,200}", words in vec(hostile_word(), 0..16)) {
        let _ = parse_rule(&text);
        let _ = parse_rules(&text);
        let line = words.join(" ");
        let _ = parse_rule(&line);
        let _ = parse_rules(&format!("{line}\n{text}\n# {line}\n\n{line}"));
    }

    #[test]
    fn valid_rules_round_trip(op in op()) {
        let line = op_rule(&op);
        prop_assert_eq!(parse_rule(&line), Ok(op.clone()), "{}", line);
        prop_assert_eq!(parse_rule(&format!("ipvsadm {line}")), Ok(op), "{}", line);
    }

    #[test]
    fn shuffled_and_salted_rules_never_panic(op in op(), edits in vec(edit(), 0..5), inline in any::<bool>()) {
        let text = edited(&op_rule(&op), &edits, inline);
        if let Ok(parsed) = parse_rule(&text) {
            // Whatever parses is an operation that can be said as a rule again.
            let _ = parse_rule(&op_rule(&parsed));
        }
    }
}

/// One change to the words of a rule line.
#[derive(Debug, Clone)]
enum Edit {
    Swap(Index, Index),
    Drop(Index),
    Double(Index),
    Replace(Index, String),
    Insert(Index, String),
    /// The words picked again in any order, some twice, some never.
    Shuffle(Vec<Index>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        2 => any::<Index>().prop_map(Edit::Drop),
        2 => any::<Index>().prop_map(Edit::Double),
        2 => (any::<Index>(), hostile_word()).prop_map(|(i, w)| Edit::Replace(i, w)),
        2 => (any::<Index>(), hostile_word()).prop_map(|(i, w)| Edit::Insert(i, w)),
        1 => vec(any::<Index>(), 0..24).prop_map(Edit::Shuffle),
    ]
}

/// `line` with `edits` made to its words, joined by spaces (or by `=`).
fn edited(line: &str, edits: &[Edit], inline: bool) -> String {
    let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    for edit in edits {
        let n = words.len();
        match edit {
            Edit::Swap(a, b) if n > 0 => words.swap(a.index(n), b.index(n)),
            Edit::Drop(i) if n > 0 => drop(words.remove(i.index(n))),
            Edit::Double(i) if n > 0 => words.insert(i.index(n), words[i.index(n)].clone()),
            Edit::Replace(i, word) if n > 0 => words[i.index(n)] = word.clone(),
            Edit::Insert(i, word) => words.insert(i.index(n + 1), word.clone()),
            Edit::Shuffle(order) if n > 0 => {
                words = order.iter().map(|i| words[i.index(n)].clone()).collect()
            }
            _ => {}
        }
    }
    words.join(if inline { "=" } else { " " })
}

/// Guards the generators: "never panics" says little if every broken input
/// is refused at its first byte. Broken replies must parse sometimes
/// (some whole, some not), and broken rule lines sometimes.
#[test]
fn broken_inputs_are_sometimes_read_and_sometimes_refused() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let captures = captures();
    const SAMPLES: usize = 1000;
    let (mut messages, mut services, mut rules) = (0, 0, 0);
    for _ in 0..SAMPLES {
        let (choice, mutations) =
            (any::<Index>(), vec(mutation(), 1..4)).new_tree(&mut runner).unwrap().current();
        let payload = mutate(&captures[choice.index(captures.len())], &mutations);
        messages += usize::from(parse_message(&payload).is_ok());
        services +=
            usize::from(nests(&payload, Nest::Service).flatten().any(|n| ServiceEntry::decode(n).is_ok()));
        let (op, edits) = (op(), vec(edit(), 0..5)).new_tree(&mut runner).unwrap().current();
        rules += usize::from(parse_rule(&edited(&op_rule(&op), &edits, false)).is_ok());
    }
    let counts = [("messages parsed", messages), ("services decoded", services), ("rules parsed", rules)];
    println!("of {SAMPLES} broken inputs: {counts:?}");
    for (what, count) in counts {
        assert!((SAMPLES / 20..=SAMPLES * 19 / 20).contains(&count), "{what}: {count} of {SAMPLES}");
    }
}
