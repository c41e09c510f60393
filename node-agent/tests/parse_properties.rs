//! The agent's own parsers never panic (issue 12), on arbitrary input and on
//! valid input broken on purpose:
//! - route-netlink replies: the decoding every dump reply goes through
//!   (`NetlinkMessage::<RouteNetlinkMessage>::deserialize`, what host/rtnl.rs
//!   calls per message) of address, route and link replies like the kernel's,
//!   with bytes flipped, cut, inserted and lengths lied about at every level;
//! - `lvs-agent import`: keepalived.conf with its words shuffled, numbers out
//!   of range, unicode, braces nested deep or left open; ipvsadm rules;
//! - standalone manifests (strict YAML of VirtualServices): arbitrary text,
//!   a valid manifest broken by line, nested deep, aliases that multiply.
//!
//! What parses must mean what it says: what the quick YAML reader reads, the
//! full one reads the same; a decoded reply encodes to bytes that
//! decode to it again, and whatever `import` accepts loads back from its YAML
//! as the same VirtualServices (the manifests' emitter is `Imported::to_yaml`).
//! Cases per property: proptest's default (256), or PROPTEST_CASES (tests/fuzz
//! runs them long).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use lvs_agent::{import::import, standalone::load_manifests};
use lvs_crds::VirtualService;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};
use proptest::{collection::vec, prelude::*, sample::Index};
use serde::Deserialize;

// Route netlink.

/// A reply message as the kernel frames it, in a dump (NLM_F_MULTI).
fn framed(message: RouteNetlinkMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = 0x2;
    header.sequence_number = 7;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Replies of the three dumps the agent reads, with what it reads from them.
fn route_replies() -> Vec<Vec<u8>> {
    let mut replies = Vec::new();
    for (index, address, prefix) in [
        (2, IpAddr::V4(Ipv4Addr::new(192, 168, 16, 11)), 24),
        (3, IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100)), 128),
    ] {
        let mut message = AddressMessage::default();
        message.header.family = if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        message.header.prefix_len = prefix;
        message.header.index = index;
        message.attributes.push(AddressAttribute::Address(address));
        message.attributes.push(AddressAttribute::Local(address));
        message.attributes.push(AddressAttribute::Label("eth0".into()));
        replies.push(framed(RouteNetlinkMessage::NewAddress(message)));
    }
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: AddressFamily::Inet,
        destination_prefix_length: 24,
        table: 255,
        protocol: RouteProtocol::Kernel,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    route.attributes.push(RouteAttribute::Table(255));
    route.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 0))));
    route.attributes.push(RouteAttribute::Oif(2));
    route.attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 1))));
    replies.push(framed(RouteNetlinkMessage::NewRoute(route)));
    let mut link = LinkMessage::default();
    link.header.index = 2;
    link.header.flags = LinkFlags::Up | LinkFlags::Broadcast | LinkFlags::Multicast;
    link.attributes.push(LinkAttribute::IfName("eth0".into()));
    link.attributes.push(LinkAttribute::Mtu(1500));
    link.attributes.push(LinkAttribute::Address(vec![0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    link.attributes.push(LinkAttribute::TxQueueLen(1000));
    replies.push(framed(RouteNetlinkMessage::NewLink(link)));
    replies
}

/// Offsets of the length fields of the attribute headers in `bytes` (nested
/// ones included), from `start`: where a lie about a length is worth telling.
fn attribute_offsets(bytes: &[u8], start: usize, offsets: &mut Vec<usize>) {
    let mut at = start;
    while at + 4 <= bytes.len() {
        let length = usize::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]]));
        if length < 4 || at + length > bytes.len() {
            return;
        }
        offsets.push(at);
        // Not every value is a nest; a false one only adds harmless targets.
        attribute_offsets(&bytes[..at + length], at + 4, offsets);
        at += length.next_multiple_of(4);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    /// The n-th attribute length (of the unbroken message), or the message's.
    Length(Option<Index>, u32),
    Insert(Index, Vec<u8>),
    Remove(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let length = prop_oneof![0u32..8, 4u32..200, Just(u32::from(u16::MAX)), any::<u32>()];
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (prop::option::weighted(0.8, any::<Index>()), length).prop_map(|(i, l)| Mutation::Length(i, l)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..12)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1u8..12).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

/// The route messages' fixed headers: ifaddrmsg and rtmsg are 8 and 12 bytes,
/// ifinfomsg 16; attributes start after the largest that fits, a few false
/// starts only add targets.
const FIXED_HEADERS: [usize; 3] = [8, 12, 16];

fn mutate(message: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut offsets = Vec::new();
    for fixed in FIXED_HEADERS {
        attribute_offsets(message, 16 + fixed, &mut offsets);
    }
    let mut bytes = message.to_vec();
    for mutation in mutations {
        let length = bytes.len();
        match mutation {
            Mutation::Flip(i, x) if length > 0 => bytes[i.index(length)] ^= x,
            Mutation::Truncate(i) => bytes.truncate(i.index(length + 1)),
            Mutation::Length(Some(i), lie) if !offsets.is_empty() => {
                let at = offsets[i.index(offsets.len())];
                if at + 2 <= length {
                    bytes[at..at + 2].copy_from_slice(&(*lie as u16).to_ne_bytes());
                }
            }
            Mutation::Length(None, lie) if length >= 4 => bytes[..4].copy_from_slice(&lie.to_ne_bytes()),
            Mutation::Insert(i, extra) => {
                let at = i.index(length + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Remove(i, n) if length > 0 => {
                let at = i.index(length);
                bytes.drain(at..(at + usize::from(*n)).min(length));
            }
            _ => {}
        }
    }
    bytes
}

/// Decodes `bytes` as the agent does; what decodes encodes to bytes that
/// decode and encode to the same bytes again. (Not always to the same message:
/// the library keeps unknown attributes with their flag bits, and drops the
/// byte-order flag when encoding them; the agent reads no unknown attribute.)
fn decode_route_reply(bytes: &[u8]) -> Result<(), TestCaseError> {
    let encode = |mut message: NetlinkMessage<RouteNetlinkMessage>| {
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    };
    let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else { return Ok(()) };
    let once = encode(message.clone());
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&once) {
        Ok(again) => prop_assert_eq!(encode(again), once, "{:?}", message),
        Err(e) => prop_assert!(false, "{:?} encoded does not decode: {}", message, e),
    }
    Ok(())
}

// import (keepalived.conf and ipvsadm rules).

const KEEPALIVED_SEED: &str = "\
global_defs {
   router_id LVS_DEVEL
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    virtual_ipaddress {
        192.168.16.100
    }
}
virtual_server 192.168.16.100 80 {
    delay_loop 6
    lb_algo wrr
    lb_kind DR
    persistence_timeout 50
    persistence_granularity 255.255.255.0
    protocol TCP
    sorry_server 192.168.16.200 80
    real_server 192.168.16.21 80 {
        weight 2
        uthreshold 1000
        lthreshold 800
        HTTP_GET {
            url { path /healthz
                  status_code 200 }
            connect_timeout 3
        }
    }
}
virtual_server 192.168.16.100 53 {
    lb_algo sh
    sh-port
    lb_kind TUN type gue port 6080 csum
    protocol UDP
    ops
    real_server 192.168.18.21 53 {
        UDP_CHECK { connect_timeout 90 }
    }
}
virtual_server fwmark 5 {
    lb_kind NAT
    lb_algo lc
    persistence_timeout
    real_server 192.168.18.22 0 {
        weight 4
        MISC_CHECK { misc_path /bin/true }
    }
}
virtual_server_group web { 192.168.16.101 80 }
";

const IPVSADM_SEED: &str = "\
-A -t 10.0.0.100:443 -s wlc -p 600 -M 255.255.255.0
-a -t 10.0.0.100:443 -r 172.16.0.1:8443 -m -w 5
-A -u [2001:db8::1]:53 -s sh -b sh-fallback,sh-port -o
-a -u [2001:db8::1]:53 -r [2001:db8::10]:53 -i -w 1 --tun-type gue --tun-port 6080 --tun-remcsum
-A -f 7 -6 -s mh -p 120 -M 64
-a -f 7 -6 -r [2001:db8::20]:0 -g -w 3 -x 100 -y 50
--start-daemon master --mcast-interface eth0 --syncid 3
--set 900 120 300
";

/// Words worth finding where another was: keywords, braces, numbers out of
/// range, unicode, comment starts.
fn hostile_word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "{}",
            "}{",
            "virtual_server",
            "real_server",
            "fwmark",
            "group",
            "lb_kind",
            "lb_algo",
            "DR",
            "NAT",
            "TUN",
            "type",
            "gue",
            "gre",
            "port",
            "csum",
            "protocol",
            "TCP",
            "UDP",
            "SCTP",
            "weight",
            "persistence_timeout",
            "persistence_granularity",
            "sorry_server",
            "uthreshold",
            "lthreshold",
            "HTTP_GET",
            "TCP_CHECK",
            "connect_port",
            "0",
            "-1",
            "65536",
            "4294967296",
            "99999999999999999999999",
            "1e9",
            "0x10",
            "255.255.255.256",
            "::1",
            "[::1]",
            "ﬀ",
            "ß",
            "١٢٣",
            "\u{202e}",
            "#",
            "!",
            "\"",
            "-A",
            "-a",
            "-t",
            "-r",
            "ipvsadm",
        ])
        .prop_map(str::to_string),
        "\\PC{1,10}",
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// `seed`'s words, some moved, dropped or doubled, hostile ones put in; line
/// breaks kept where the words are (keepalived statements are lines).
fn salted(seed: &'static str) -> impl Strategy<Value = String> {
    let words: Vec<(usize, &str)> = seed
        .lines()
        .enumerate()
        .flat_map(|(line, text)| text.split_whitespace().map(move |word| (line, word)))
        .collect();
    let count = words.len();
    (
        // Few edits at a time: one bad word makes the whole text an error,
        // and the agreement of import and manifests needs texts that import.
        vec((any::<Index>(), any::<Index>()), 0..3),
        vec(any::<Index>(), 0..2),
        vec((any::<Index>(), hostile_word()), 0..3),
    )
        .prop_map(move |(moves, drops, salt)| {
            let mut words: Vec<(usize, String)> = words.iter().map(|(l, w)| (*l, w.to_string())).collect();
            for (from, to) in moves {
                let word = words[from.index(count)].1.clone();
                words[to.index(count)].1 = word;
            }
            for drop in drops {
                if !words.is_empty() {
                    words.remove(drop.index(words.len()));
                }
            }
            for (at, word) in salt {
                let at = at.index(words.len() + 1);
                let line = words.get(at).or(words.last()).map_or(0, |(l, _)| *l);
                words.insert(at, (line, word));
            }
            let mut text = String::new();
            let mut current = 0;
            for (line, word) in words {
                text.push(if line == current { ' ' } else { '\n' });
                current = line;
                text.push_str(&word);
            }
            text
        })
}

/// Braces nested `depth` deep, closed or not, with or without statements.
fn nested(depth: usize, closed: bool, words: bool) -> String {
    let open = if words { "virtual_server 10.0.0.1 80 {\n" } else { "{" };
    let mut text = open.repeat(depth);
    if closed {
        text.push_str(&"}\n".repeat(depth));
    }
    text
}

// Manifests.

const MANIFEST_SEED: &str = "\
apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata:
  name: web
  namespace: default
spec:
  vip: 192.168.16.100
  port: 80
  protocol: TCP
  scheduler: wrr
  forwarding: DirectRouting
  persistence: {timeoutSeconds: 300}
  failover:
    vrrp: {virtualRouterId: 51, advertIntervalMs: 1000, preempt: true}
  realServers:
    - {address: 192.168.16.21, weight: 2}
    - {address: 192.168.16.22, weight: 1}
";

/// Lines of `seed` moved, dropped, doubled, indented otherwise, values replaced.
fn broken_manifest() -> impl Strategy<Value = String> {
    let lines: Vec<&str> = MANIFEST_SEED.lines().collect();
    let count = lines.len();
    let value = prop_oneof![
        hostile_word(),
        prop::sample::select(vec![
            "null",
            "~",
            "[]",
            "{}",
            "\"\"",
            "'",
            "*a",
            "&a x",
            "!!binary AAAA",
            "!Tag x",
            "? complex",
            "0o17",
            ".inf",
            "-.nan",
            "2026-01-01T00:00:00Z",
            "- - -",
            "|",
            ">-",
            "{a: [b, {c: d}]}",
            "010",
            "0x1F",
            "1e3",
            "-0",
            "+80",
            "True",
            "NULL",
            "yes",
            "'80'",
            "<<: {weight: 1}",
        ])
        .prop_map(str::to_string),
    ];
    (
        vec((any::<Index>(), any::<Index>()), 0..2),
        vec((any::<Index>(), value), 0..3),
        vec((any::<Index>(), 0usize..6), 0..2),
    )
        .prop_map(move |(moves, values, indents)| {
            let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            for (from, to) in moves {
                let line = lines[from.index(count)].clone();
                lines.insert(to.index(count + 1), line);
            }
            for (at, value) in values {
                let at = at.index(lines.len());
                let key = lines[at].split_once(':').map_or(String::new(), |(k, _)| format!("{k}: "));
                lines[at] = format!("{key}{value}");
            }
            for (at, indent) in indents {
                let at = at.index(lines.len());
                lines[at] = format!("{}{}", " ".repeat(indent), lines[at].trim_start());
            }
            lines.join("\n")
        })
}

/// Loads `text` as a manifest file; errors are expected, panics not.
fn load(text: &str) -> Result<Vec<VirtualService>, Vec<String>> {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let path: PathBuf = std::env::temp_dir().join(format!(
        "lvs-parse-properties-{}-{}.yaml",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    let loaded = load_manifests(&path);
    std::fs::remove_file(&path).unwrap();
    loaded.map_err(|errors| errors.into_iter().map(|e| e.to_string()).collect())
}

/// Whatever imports is what its YAML loads as: the two parsers agree.
fn import_and_load(text: &str) -> Result<(), TestCaseError> {
    if let Ok(imported) = import(text)
        && !imported.services.is_empty()
    {
        let loaded = load(&imported.to_yaml());
        prop_assert_eq!(loaded, Ok(imported.services), "imported from:\n{}", text);
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_route_reply_decoder(
        bytes in vec(any::<u8>(), 0..400),
        message_type in prop_oneof![16u16..=30, any::<u16>()],
        honest_length in any::<bool>(),
    ) {
        decode_route_reply(&bytes)?;
        // With a header that passes the first checks, to reach the payloads.
        let mut framed = bytes.clone();
        if framed.len() >= 16 {
            if honest_length {
                let length = framed.len() as u32;
                framed[..4].copy_from_slice(&length.to_ne_bytes());
            }
            framed[4..6].copy_from_slice(&message_type.to_ne_bytes());
            decode_route_reply(&framed)?;
        }
    }

    #[test]
    fn broken_route_replies_are_refused_or_read_as_they_say(
        choice in any::<Index>(),
        mutations in vec(mutation(), 1..4),
    ) {
        let replies = route_replies();
        let bytes = mutate(&replies[choice.index(replies.len())], &mutations);
        decode_route_reply(&bytes)?;
    }

    #[test]
    fn arbitrary_text_never_panics_import(text in "\\PC{0,300}", words in vec(hostile_word(), 0..24)) {
        let _ = import(&text);
        let _ = import(&format!("virtual_server {text}"));
        let line = words.join(" ");
        let _ = import(&format!("virtual_server {line}"));
        let _ = import(&format!("-A {line}"));
    }

    #[test]
    fn salted_keepalived_conf_imports_or_is_refused(text in salted(KEEPALIVED_SEED)) {
        import_and_load(&text)?;
    }

    #[test]
    fn salted_ipvsadm_rules_import_or_are_refused(text in salted(IPVSADM_SEED)) {
        import_and_load(&text)?;
    }

    #[test]
    fn deep_braces_are_refused_not_a_crash(
        // Past the limit (32) is enough here; the 100,000 deep file is the regression test below.
        depth in prop_oneof![3 => 1usize..64, 1 => 64usize..5000],
        closed in any::<bool>(),
        words in any::<bool>(),
    ) {
        let _ = import(&format!("virtual_server 10.0.0.1 80 {{\n{}", nested(depth, closed, words)));
    }

    #[test]
    fn arbitrary_text_never_panics_the_manifest_loader(text in "\\PC{0,300}") {
        let _ = load(&text);
        let _ = load(&format!("apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\n{text}"));
    }

    #[test]
    fn broken_manifests_load_or_are_refused(text in broken_manifest()) {
        if let Ok(services) = load(&text) {
            // What loads is valid: loading it again (from its YAML) gives the same.
            let yaml = services.iter().map(|s| lvs_crds::yaml::to_string(s).unwrap()).collect::<Vec<_>>().join("---\n");
            prop_assert_eq!(load(&yaml), Ok(services));
        }
    }

    /// The agent reads manifests with the quick reader and falls back to the
    /// full one: whatever the quick one reads, the full one reads the same.
    #[test]
    fn the_quick_yaml_reader_agrees_with_the_full_one(text in broken_manifest()) {
        let quick = lvs_crds::yaml::quick::read(&text, |reader| VirtualService::deserialize(reader));
        if let Ok(quick) = quick {
            prop_assert_eq!(lvs_crds::yaml::from_str::<VirtualService>(&text).ok(), Some(quick), "{}", text);
        }
    }

    #[test]
    fn deep_yaml_is_refused_not_a_crash(depth in prop_oneof![3 => 1usize..130, 1 => 130usize..1000], flow in any::<bool>()) {
        // Past the YAML reader's limit (64, lvs_crds::yaml) is enough; deeper only costs time
        // (block style indents one more column a level: at most 200 deep).
        let nested = if flow {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            (0..depth.min(200)).map(|i| format!("{}a:\n", " ".repeat(i))).collect()
        };
        let _ = load(&format!("{MANIFEST_SEED}  extra: {nested}\n"));
        let _ = load(&nested);
    }
}

#[test]
fn the_seeds_are_valid() {
    for reply in route_replies() {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).unwrap();
        assert!(matches!(message.payload, NetlinkPayload::InnerMessage(_)));
    }
    assert_eq!(import(KEEPALIVED_SEED).unwrap().services.len(), 3);
    assert_eq!(import(IPVSADM_SEED).unwrap().services.len(), 3);
    assert_eq!(load(MANIFEST_SEED).unwrap().len(), 1);
}

/// Aliases that multiply (a "billion laughs"): refused, without building the
/// value they describe.
#[test]
fn multiplying_aliases_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let bomb = format!("{text}{MANIFEST_SEED}  extra: *a9\n");
    let started = std::time::Instant::now();
    assert!(load(&bomb).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

/// Found by deep_braces_are_refused_not_a_crash: 100,000 nested blocks
/// overflowed the stack of the keepalived.conf reader (an abort, not even a
/// panic). Now a line error past 32 levels.
#[test]
fn deeply_nested_blocks_are_a_line_error() {
    let text = format!("virtual_server 10.0.0.1 80 {{\n{}", nested(100_000, true, true));
    let error = import(&text).unwrap_err().to_string();
    assert_eq!(error, "line 33: blocks nested deeper than 32");
    // Four levels, as keepalived.conf has them, still read.
    assert!(import(KEEPALIVED_SEED).is_ok());
}

/// Guards the generators: "never panics" says little if every broken input
/// is refused at once, and the agreement of import and manifests needs
/// imports that succeed. Each kind of broken input must be read sometimes and
/// refused sometimes.
#[test]
fn broken_inputs_are_sometimes_read_and_sometimes_refused() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let replies = route_replies();
    const SAMPLES: usize = 200;
    let (mut routes, mut keepalived, mut ipvsadm, mut manifests) = (0, 0, 0, 0);
    for _ in 0..SAMPLES {
        let (choice, mutations) =
            (any::<Index>(), vec(mutation(), 1..4)).new_tree(&mut runner).unwrap().current();
        let bytes = mutate(&replies[choice.index(replies.len())], &mutations);
        routes += usize::from(NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).is_ok());
        let text = salted(KEEPALIVED_SEED).new_tree(&mut runner).unwrap().current();
        keepalived += usize::from(import(&text).is_ok_and(|i| !i.services.is_empty()));
        let text = salted(IPVSADM_SEED).new_tree(&mut runner).unwrap().current();
        ipvsadm += usize::from(import(&text).is_ok_and(|i| !i.services.is_empty()));
        let text = broken_manifest().new_tree(&mut runner).unwrap().current();
        manifests += usize::from(load(&text).is_ok());
    }
    let counts = [
        ("route replies decoded", routes),
        ("keepalived.conf imported", keepalived),
        ("ipvsadm rules imported", ipvsadm),
        ("manifests loaded", manifests),
    ];
    println!("of {SAMPLES} broken inputs: {counts:?}");
    for (what, count) in counts {
        assert!((SAMPLES / 20..=SAMPLES * 19 / 20).contains(&count), "{what}: {count} of {SAMPLES}");
    }
}
