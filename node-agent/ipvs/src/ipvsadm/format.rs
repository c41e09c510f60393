//! The kernel table in ipvsadm's text formats: `-S -n` rules and the `-L -n` views.
//!
//! Byte-for-byte compatibility is the point here (scripts parse these formats), so
//! the field widths and oddities follow ipvsadm 1.31.

use std::{cmp::Ordering, fmt::Write, net::SocketAddr};

use crate::{
    AddressFamily, Destination, DestinationEntry, ForwardMethod, Info, IpvsOp, Netmask, Protocol, Service,
    ServiceEntry, ServiceFlags, ServiceKey, Stats, SyncDaemon, SyncState, Timeouts, TunnelChecksum,
    TunnelType,
};

/// One service with its destinations, as dumped.
pub type TableEntry = (ServiceEntry, Vec<DestinationEntry>);

/// Which columns `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListView {
    /// Forwarding method, weight and connections (`ipvsadm -Ln`).
    #[default]
    Connections,
    /// Totals (`ipvsadm -Ln --stats`).
    Stats,
    /// Per-second rates (`ipvsadm -Ln --rate`).
    Rate,
}

/// `ipvsadm -S -n`: one `-A` line per service followed by its `-a` lines.
pub fn save(table: &[TableEntry]) -> String {
    let services = sorted(table);
    // Large tables are formatted in two halves in parallel; the text is the same.
    let half = services.len().div_ceil(2).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = services.chunks(half).map(|part| scope.spawn(|| save_part(part))).collect();
        parts.into_iter().map(|part| part.join().expect("formatting thread")).collect()
    })
}

fn save_part(services: &[(&ServiceEntry, Vec<&DestinationEntry>)]) -> String {
    let mut out = String::with_capacity(services.iter().map(|(_, d)| 48 * (d.len() + 1)).sum());
    for (service, destinations) in services {
        out.push_str(&service_rule("-A", &service.service));
        out.push('\n');
        let name = rule_service_name(&service.service.key);
        for dest in destinations {
            write_destination_rule(&mut out, "-a", &name, &dest.destination, false);
            out.push('\n');
        }
    }
    out
}

/// `ipvsadm -L -n` (with `--stats` or `--rate` for the other views).
pub fn list(info: &Info, table: &[TableEntry], view: ListView) -> String {
    let mut out = format!(
        "IP Virtual Server version {} (size={})\n",
        info.version_string(),
        info.connection_table_size
    );
    out.push_str(match view {
        ListView::Connections => {
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        }
        ListView::Stats => {
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n"
        }
        ListView::Rate => {
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\n"
        }
    });
    for (service, destinations) in sorted(table) {
        let name = list_service_name(&service.service.key);
        match view {
            ListView::Connections => {
                let _ = writeln!(
                    out,
                    "{name} {}{}",
                    service.service.scheduler,
                    list_service_options(&service.service)
                );
            }
            ListView::Stats => {
                let _ = writeln!(out, "{name:<33}{}", totals(&service.stats));
            }
            ListView::Rate => {
                let _ = writeln!(out, "{name:<33}{}", rates(&service.stats));
            }
        }
        for dest in destinations {
            let address = list_address(&dest.destination.address);
            let d = &dest.destination;
            let _ = match view {
                ListView::Connections => writeln!(
                    out,
                    "  -> {address:<28} {:<7} {:<6} {:<10} {:<10}",
                    forward_name(d.forward),
                    d.weight as i32,
                    dest.active_connections,
                    dest.inactive_connections
                ),
                ListView::Stats => writeln!(out, "  -> {address:<28}{}", totals(&dest.stats)),
                ListView::Rate => {
                    let s = &dest.stats;
                    writeln!(
                        out,
                        "  -> {address:<28} {:8} {:8} {:8}{}{}",
                        s.connections_rate,
                        s.packets_in_rate,
                        s.packets_out_rate,
                        large_number(s.bytes_in_rate),
                        large_number(s.bytes_out_rate)
                    )
                }
            };
        }
    }
    out
}

/// `ipvsadm -L --timeout`.
pub fn timeouts(t: &Timeouts) -> String {
    format!("Timeout (tcp tcpfin udp): {} {} {}\n", t.tcp, t.tcp_fin, t.udp)
}

/// `ipvsadm -L --daemon`.
pub fn daemons(daemons: &[SyncDaemon]) -> String {
    let mut out = String::new();
    // ipvsadm lists the master first.
    for state in [SyncState::Master, SyncState::Backup] {
        for d in daemons.iter().filter(|d| d.state == state) {
            let _ = write!(out, "{} sync daemon (mcast={}, syncid={}", state.name(), d.interface, d.sync_id);
            if let Some(len) = d.max_length.filter(|l| *l != 0) {
                let _ = write!(out, ", maxlen={len}");
            }
            if let Some(group) = d.group {
                let _ = write!(out, ", group={group}");
            }
            if let Some(port) = d.port.filter(|p| *p != 0) {
                let _ = write!(out, ", port={port}");
            }
            if let Some(ttl) = d.ttl.filter(|t| *t != 0) {
                let _ = write!(out, ", ttl={ttl}");
            }
            out.push_str(")\n");
        }
    }
    out
}

/// The ipvsadm command line (without `ipvsadm`) that performs `op`, as `--dry-run`
/// shows plans.
pub fn op_rule(op: &IpvsOp) -> String {
    match op {
        IpvsOp::AddService(service) => service_rule("-A", service),
        IpvsOp::EditService(service) => service_rule("-E", service),
        IpvsOp::DeleteService(key) => format!("-D {}", rule_service_name(key)),
        IpvsOp::AddDestination(key, dest) => destination_rule("-a", key, dest, true),
        IpvsOp::EditDestination(key, dest) => destination_rule("-e", key, dest, true),
        IpvsOp::DeleteDestination(key, address) => {
            format!("-d {} -r {}", rule_service_name(key), rule_address(address))
        }
        IpvsOp::Zero(Some(key)) => format!("-Z {}", rule_service_name(key)),
        IpvsOp::Zero(None) => "-Z".to_string(),
        IpvsOp::Flush => "-C".to_string(),
        IpvsOp::SetTimeouts(t) => format!("--set {} {} {}", t.tcp, t.tcp_fin, t.udp),
        IpvsOp::StartSyncDaemon(d) => {
            let mut line = format!(
                "--start-daemon {} --mcast-interface {} --syncid {}",
                d.state.name(),
                d.interface,
                d.sync_id
            );
            if let Some(len) = d.max_length {
                let _ = write!(line, " --sync-maxlen {len}");
            }
            if let Some(group) = d.group {
                let _ = write!(line, " --mcast-group {group}");
            }
            if let Some(port) = d.port {
                let _ = write!(line, " --mcast-port {port}");
            }
            if let Some(ttl) = d.ttl {
                let _ = write!(line, " --mcast-ttl {ttl}");
            }
            line
        }
        IpvsOp::StopSyncDaemon(state) => format!("--stop-daemon {}", state.name()),
    }
}

/// Services in ipvsadm's order (fwmark, protocol, address, port), destinations by address and port.
fn sorted(table: &[TableEntry]) -> Vec<(&ServiceEntry, Vec<&DestinationEntry>)> {
    let mut services: Vec<_> = table
        .iter()
        .map(|(service, dests)| {
            let mut dests: Vec<_> = dests.iter().collect();
            dests.sort_by_key(|d| d.destination.address);
            (service, dests)
        })
        .collect();
    services.sort_by(|(a, _), (b, _)| compare_keys(&a.service.key, &b.service.key));
    services
}

/// ipvsadm's order: fwmark, address family, protocol, address, port.
fn compare_keys(a: &ServiceKey, b: &ServiceKey) -> Ordering {
    let sort_key = |k: &ServiceKey| match k {
        ServiceKey::Address { protocol, address } => {
            (0, k.family(), protocol.number(), Some(address.ip()), address.port())
        }
        ServiceKey::Fwmark { family, mark } => (*mark, *family, 0, None, 0),
    };
    sort_key(a).cmp(&sort_key(b))
}

/// `a.b.c.d:port` or `[v6]:port`, as ipvsadm prints numeric addresses.
fn rule_address(address: &SocketAddr) -> String {
    let mut text = String::with_capacity(24);
    push_address(&mut text, address);
    text
}

fn push_address(out: &mut String, address: &SocketAddr) {
    match address {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_number(out, i64::from(octet));
            }
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "[{}]", a.ip());
        }
    }
    out.push(':');
    push_number(out, i64::from(address.port()));
}

/// Decimal digits without the formatting machinery.
fn push_number(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut rest = n.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
}

/// The `-L` views cut IPv4 addresses to their column (never reached in practice).
fn list_address(address: &SocketAddr) -> String {
    let mut text = rule_address(address);
    if address.is_ipv4() {
        text.truncate(28);
    }
    text
}

fn rule_service_name(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Fwmark { family: AddressFamily::Ipv4, mark } => format!("-f {mark}"),
        ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark } => format!("-f {mark} -6"),
        ServiceKey::Address { protocol, address } => {
            let option = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
                Protocol::Other(_) => "--xxx-service",
            };
            format!("{option} {}", rule_address(address))
        }
    }
}

fn list_service_name(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Fwmark { family: AddressFamily::Ipv4, mark } => format!("FWM  {mark}"),
        ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark } => format!("FWM  {mark} IPv6"),
        ServiceKey::Address { protocol, address } => {
            let name = match protocol {
                Protocol::Other(_) => "?".to_string(),
                p => p.to_string(),
            };
            let mut text = format!("{name:<4} {}", rule_address(address));
            if address.is_ipv4() {
                text.truncate(33);
            }
            text
        }
    }
}

/// Scheduler flags by name, as ipvsadm prints them (`sh-port`, `flag-1`, ...).
fn scheduler_flags(service: &Service) -> String {
    let flags = service.flags;
    let names: &[(u32, &str)] = match service.scheduler.as_str() {
        "sh" => &[(ServiceFlags::SCHED1, "sh-fallback"), (ServiceFlags::SCHED2, "sh-port")],
        "mh" => &[(ServiceFlags::SCHED1, "mh-fallback"), (ServiceFlags::SCHED2, "mh-port")],
        _ => &[
            (ServiceFlags::SCHED1, "flag-1"),
            (ServiceFlags::SCHED2, "flag-2"),
            (ServiceFlags::SCHED3, "flag-3"),
        ],
    };
    names.iter().filter(|(bit, _)| flags.contains(*bit)).map(|(_, name)| *name).collect::<Vec<_>>().join(",")
}

fn has_scheduler_flags(service: &Service) -> bool {
    service.flags.0 & (ServiceFlags::SCHED1 | ServiceFlags::SCHED2 | ServiceFlags::SCHED3) != 0
}

/// The netmask when it is not the per-host default.
fn netmask_text(service: &Service) -> Option<String> {
    match service.netmask {
        Netmask::Ipv4(mask) if service.key.family() == AddressFamily::Ipv4 && !mask.is_broadcast() => {
            Some(mask.to_string())
        }
        Netmask::Ipv6Prefix(prefix) if service.key.family() == AddressFamily::Ipv6 && prefix != 128 => {
            Some(prefix.to_string())
        }
        _ => None,
    }
}

fn service_rule(command: &str, service: &Service) -> String {
    let mut line = format!("{command} {} -s {}", rule_service_name(&service.key), service.scheduler);
    if service.is_persistent() {
        let _ = write!(line, " -p {}", service.timeout);
        if let Some(mask) = netmask_text(service) {
            let _ = write!(line, " -M {mask}");
        }
    }
    if let Some(pe) = &service.persistence_engine {
        let _ = write!(line, " --pe {pe}");
    }
    if service.flags.contains(ServiceFlags::ONE_PACKET) {
        line.push_str(" -o");
    }
    if has_scheduler_flags(service) {
        let _ = write!(line, " -b {}", scheduler_flags(service));
    }
    line
}

fn list_service_options(service: &Service) -> String {
    let mut text = String::new();
    if has_scheduler_flags(service) {
        let _ = write!(text, " ({})", scheduler_flags(service));
    }
    if service.is_persistent() {
        let _ = write!(text, " persistent {}", service.timeout);
        if let Some(mask) = netmask_text(service) {
            let _ = write!(text, " mask {mask}");
        }
        if let Some(pe) = &service.persistence_engine {
            let _ = write!(text, " pe {pe}");
        }
    }
    if service.flags.contains(ServiceFlags::ONE_PACKET) {
        text.push_str(" ops");
    }
    text
}

fn forward_switch(method: ForwardMethod) -> &'static str {
    match method {
        ForwardMethod::Masquerade => "-m",
        ForwardMethod::Tunnel => "-i",
        ForwardMethod::Local | ForwardMethod::DirectRoute => "-g",
        // ipvsadm prints a NULL string here; glibc renders it so.
        ForwardMethod::Bypass | ForwardMethod::Other(_) => "(null)",
    }
}

fn forward_name(method: ForwardMethod) -> &'static str {
    match method {
        ForwardMethod::Masquerade => "Masq",
        ForwardMethod::Local => "Local",
        ForwardMethod::Tunnel => "Tunnel",
        ForwardMethod::DirectRoute => "Route",
        ForwardMethod::Bypass | ForwardMethod::Other(_) => "(null)",
    }
}

fn checksum_option(checksum: TunnelChecksum) -> &'static str {
    match checksum {
        TunnelChecksum::None => "--tun-nocsum",
        TunnelChecksum::Checksum => "--tun-csum",
        TunnelChecksum::RemoteChecksum => "--tun-remcsum",
        TunnelChecksum::Other(_) => "",
    }
}

/// A `-a`/`-e` line. `-S` never prints thresholds; plans pass `with_thresholds`
/// so that what they show is what they do.
fn destination_rule(command: &str, key: &ServiceKey, dest: &Destination, with_thresholds: bool) -> String {
    let mut line = String::new();
    write_destination_rule(&mut line, command, &rule_service_name(key), dest, with_thresholds);
    line
}

fn write_destination_rule(
    out: &mut String,
    command: &str,
    service: &str,
    dest: &Destination,
    with_thresholds: bool,
) {
    // Plain pushes rather than `write!`: `save` prints one such line per destination.
    out.push_str(command);
    out.push(' ');
    out.push_str(service);
    out.push_str(" -r ");
    push_address(out, &dest.address);
    out.push(' ');
    out.push_str(forward_switch(dest.forward));
    out.push_str(" -w ");
    push_number(out, i64::from(dest.weight as i32));
    if with_thresholds && (dest.upper_threshold != 0 || dest.lower_threshold != 0 || command == "-e") {
        let _ = write!(out, " -x {} -y {}", dest.upper_threshold, dest.lower_threshold);
    }
    if dest.forward == ForwardMethod::Tunnel {
        let tunnel = dest.tunnel;
        let _ = match tunnel.kind {
            TunnelType::Ipip => write!(out, " --tun-type ipip"),
            TunnelType::Gue => {
                write!(out, " --tun-type gue --tun-port {} {}", tunnel.port, checksum_option(tunnel.checksum))
            }
            TunnelType::Gre => write!(out, " --tun-type gre {}", checksum_option(tunnel.checksum)),
            TunnelType::Other(_) => Ok(()),
        };
    }
}

/// ipvsadm's `print_largenum`: 9 columns, then K/M/G/T suffixes.
fn large_number(n: u64) -> String {
    match n {
        0..100_000_000 => format!("{n:9}"),
        100_000_000..1_000_000_000 => format!("{:8}K", n / 1_000),
        1_000_000_000..100_000_000_000 => format!("{:8}M", n / 1_000_000),
        100_000_000_000..100_000_000_000_000 => format!("{:8}G", n / 1_000_000_000),
        _ => format!("{:8}T", n / 1_000_000_000_000),
    }
}

fn totals(s: &Stats) -> String {
    [s.connections, s.packets_in, s.packets_out, s.bytes_in, s.bytes_out]
        .into_iter()
        .map(large_number)
        .collect()
}

fn rates(s: &Stats) -> String {
    [s.connections_rate, s.packets_in_rate, s.packets_out_rate, s.bytes_in_rate, s.bytes_out_rate]
        .into_iter()
        .map(large_number)
        .collect()
}
