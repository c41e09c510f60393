//! Reads ipvsadm rule lines (`ipvsadm -S` output, `ipvsadm -R` input) into [`IpvsOp`]s.
//!
//! Defaults follow ipvsadm: scheduler wlc, weight 1, direct routing, persistence
//! 360 s when `-p` has no value, and a direct-routing or tunnel destination takes
//! the service's port.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
};

use crate::{
    AddressFamily, Destination, ForwardMethod, IpvsOp, Netmask, Protocol, Service, ServiceFlags, ServiceKey,
    SyncDaemon, SyncState, Timeouts, TunnelChecksum, TunnelType,
};

/// ipvsadm's `IPVS_SVC_PERSISTENT_TIMEOUT`.
const DEFAULT_PERSISTENCE_SECONDS: u32 = 360;
const DEFAULT_SCHEDULER: &str = "wlc";

/// A rule that does not parse, with its line number (1-based) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}: {text}")]
pub struct RuleError {
    pub line: usize,
    pub message: String,
    pub text: String,
}

/// Parses every rule of a text; blank lines and `#` comments are skipped.
pub fn parse_rules(text: &str) -> Result<Vec<IpvsOp>, RuleError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(index, line)| {
            parse_rule(line).map_err(|message| RuleError { line: index + 1, message, text: line.to_string() })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    AddService,
    EditService,
    DeleteService,
    AddServer,
    EditServer,
    DeleteServer,
    Clear,
    Zero,
    Set,
    StartDaemon,
    StopDaemon,
}

/// Everything one line may say; [`parse_rule`] then checks what the command needs.
#[derive(Default)]
struct Line {
    command: Option<Command>,
    protocol: Option<Protocol>,
    service_address: Option<String>,
    fwmark: Option<u32>,
    ipv6: bool,
    scheduler: Option<String>,
    persistence: Option<u32>,
    netmask: Option<String>,
    scheduler_flags: Option<String>,
    one_packet: bool,
    persistence_engine: Option<String>,
    server: Option<String>,
    forward: Option<ForwardMethod>,
    weight: Option<u32>,
    upper_threshold: Option<u32>,
    lower_threshold: Option<u32>,
    tunnel_type: Option<TunnelType>,
    tunnel_port: Option<u16>,
    tunnel_checksum: Option<TunnelChecksum>,
    positional: Vec<String>,
    daemon_state: Option<SyncState>,
    mcast_interface: Option<String>,
    sync_id: Option<u32>,
    sync_maxlen: Option<u16>,
    mcast_group: Option<IpAddr>,
    mcast_port: Option<u16>,
    mcast_ttl: Option<u8>,
}

fn number<T: FromStr>(option: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("invalid value {value:?} for {option}"))
}

fn set_command(line: &mut Line, command: Command) -> Result<(), String> {
    if line.command.replace(command).is_some() {
        return Err("more than one command".into());
    }
    Ok(())
}

/// Parses one rule line (without the leading `ipvsadm`).
pub fn parse_rule(text: &str) -> Result<IpvsOp, String> {
    let mut words = text.split_whitespace().peekable();
    if words.peek() == Some(&"ipvsadm") {
        words.next();
    }
    let mut line = Line::default();
    while let Some(word) = words.next() {
        // `--opt=value` is accepted like `--opt value`.
        let (option, inline) = match word.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_string())),
            _ => (word, None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline.clone().or_else(|| words.next().map(str::to_string)).ok_or(format!("{what} needs a value"))
        };
        match option {
            "-A" | "--add-service" => set_command(&mut line, Command::AddService)?,
            "-E" | "--edit-service" => set_command(&mut line, Command::EditService)?,
            "-D" | "--delete-service" => set_command(&mut line, Command::DeleteService)?,
            "-a" | "--add-server" => set_command(&mut line, Command::AddServer)?,
            "-e" | "--edit-server" => set_command(&mut line, Command::EditServer)?,
            "-d" | "--delete-server" => set_command(&mut line, Command::DeleteServer)?,
            "-C" | "--clear" => set_command(&mut line, Command::Clear)?,
            "-Z" | "--zero" => set_command(&mut line, Command::Zero)?,
            "--set" => set_command(&mut line, Command::Set)?,
            "--start-daemon" => {
                set_command(&mut line, Command::StartDaemon)?;
                line.daemon_state = Some(daemon_state(&value("--start-daemon")?)?);
            }
            "--stop-daemon" => {
                set_command(&mut line, Command::StopDaemon)?;
                line.daemon_state = Some(daemon_state(&value("--stop-daemon")?)?);
            }
            "-t" | "--tcp-service" | "-u" | "--udp-service" | "--sctp-service" => {
                line.protocol = Some(match option {
                    "-t" | "--tcp-service" => Protocol::Tcp,
                    "-u" | "--udp-service" => Protocol::Udp,
                    _ => Protocol::Sctp,
                });
                line.service_address = Some(value(option)?);
            }
            "-f" | "--fwmark-service" => line.fwmark = Some(number(option, &value(option)?)?),
            "-6" | "--ipv6" => line.ipv6 = true,
            "-s" | "--scheduler" => line.scheduler = Some(value(option)?),
            "-p" | "--persistent" => {
                // The timeout is optional: take the next word only if it is a number.
                let timeout = match inline.clone() {
                    Some(v) => Some(v),
                    None => words.next_if(|w| w.chars().all(|c| c.is_ascii_digit())).map(str::to_string),
                };
                let timeout = timeout.map_or(Ok(DEFAULT_PERSISTENCE_SECONDS), |t| number(option, &t))?;
                if !(1..=86400 * 31).contains(&timeout) {
                    return Err(format!("persistence timeout {timeout} out of range 1..2678400"));
                }
                line.persistence = Some(timeout);
            }
            "-M" | "--netmask" => line.netmask = Some(value(option)?),
            "-b" | "--sched-flags" => line.scheduler_flags = Some(value(option)?),
            "-o" | "--ops" => line.one_packet = true,
            "--pe" => line.persistence_engine = Some(value(option)?),
            "-r" | "--real-server" => line.server = Some(value(option)?),
            "-g" | "--gatewaying" => line.forward = Some(ForwardMethod::DirectRoute),
            "-i" | "--ipip" => line.forward = Some(ForwardMethod::Tunnel),
            "-m" | "--masquerading" => line.forward = Some(ForwardMethod::Masquerade),
            "-w" | "--weight" => {
                let weight = number::<u32>(option, &value(option)?)?;
                if weight > 65535 {
                    return Err(format!("weight {weight} out of range 0..65535"));
                }
                line.weight = Some(weight);
            }
            "-x" | "--u-threshold" => line.upper_threshold = Some(number(option, &value(option)?)?),
            "-y" | "--l-threshold" => line.lower_threshold = Some(number(option, &value(option)?)?),
            "--tun-type" => {
                line.tunnel_type = Some(match value(option)?.as_str() {
                    "ipip" => TunnelType::Ipip,
                    "gue" => TunnelType::Gue,
                    "gre" => TunnelType::Gre,
                    other => return Err(format!("unknown tunnel type {other:?} (ipip, gue or gre)")),
                })
            }
            "--tun-port" => line.tunnel_port = Some(number(option, &value(option)?)?),
            "--tun-nocsum" => line.tunnel_checksum = Some(TunnelChecksum::None),
            "--tun-csum" => line.tunnel_checksum = Some(TunnelChecksum::Checksum),
            "--tun-remcsum" => line.tunnel_checksum = Some(TunnelChecksum::RemoteChecksum),
            "--mcast-interface" => line.mcast_interface = Some(value(option)?),
            "--syncid" => line.sync_id = Some(number(option, &value(option)?)?),
            "--sync-maxlen" => line.sync_maxlen = Some(number(option, &value(option)?)?),
            "--mcast-group" => line.mcast_group = Some(number(option, &value(option)?)?),
            "--mcast-port" => line.mcast_port = Some(number(option, &value(option)?)?),
            "--mcast-ttl" => line.mcast_ttl = Some(number(option, &value(option)?)?),
            "-n" | "--numeric" => {}
            other if !other.starts_with('-') => line.positional.push(other.to_string()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    build(line)
}

fn daemon_state(name: &str) -> Result<SyncState, String> {
    match name {
        "master" => Ok(SyncState::Master),
        "backup" => Ok(SyncState::Backup),
        other => Err(format!("unknown sync daemon state {other:?} (master or backup)")),
    }
}

fn build(line: Line) -> Result<IpvsOp, String> {
    let command = line
        .command
        .ok_or("no command (-A, -E, -D, -a, -e, -d, -C, -Z, --set, --start-daemon, --stop-daemon)")?;
    Ok(match command {
        Command::Clear => IpvsOp::Flush,
        Command::Zero => IpvsOp::Zero(optional_service_key(&line)?),
        Command::Set => {
            let [tcp, tcp_fin, udp] = line.positional.as_slice() else {
                return Err("--set needs three timeouts: tcp tcpfin udp".into());
            };
            IpvsOp::SetTimeouts(Timeouts {
                tcp: number("--set", tcp)?,
                tcp_fin: number("--set", tcp_fin)?,
                udp: number("--set", udp)?,
            })
        }
        Command::StartDaemon => {
            let state = line.daemon_state.expect("set with the command");
            let mut daemon = SyncDaemon::new(
                state,
                line.mcast_interface.clone().unwrap_or_else(|| "eth0".into()),
                line.sync_id.unwrap_or(0),
            );
            daemon.max_length = line.sync_maxlen;
            daemon.group = line.mcast_group;
            daemon.port = line.mcast_port;
            daemon.ttl = line.mcast_ttl;
            IpvsOp::StartSyncDaemon(daemon)
        }
        Command::StopDaemon => IpvsOp::StopSyncDaemon(line.daemon_state.expect("set with the command")),
        Command::AddService | Command::EditService => {
            let service = service(&line)?;
            if command == Command::AddService {
                IpvsOp::AddService(service)
            } else {
                IpvsOp::EditService(service)
            }
        }
        Command::DeleteService => IpvsOp::DeleteService(service_key(&line)?),
        Command::AddServer | Command::EditServer => {
            let key = service_key(&line)?;
            let dest = destination(&line, &key)?;
            if command == Command::AddServer {
                IpvsOp::AddDestination(key, dest)
            } else {
                IpvsOp::EditDestination(key, dest)
            }
        }
        Command::DeleteServer => {
            let key = service_key(&line)?;
            // As ipvsadm: the port given is the one deleted; only adding and
            // editing force the service's port (a NAT server's may differ).
            let server = line.server.as_deref().ok_or("no real server (-r)")?;
            IpvsOp::DeleteDestination(key, parse_address(server, Some(service_port(&key)))?)
        }
    })
}

fn optional_service_key(line: &Line) -> Result<Option<ServiceKey>, String> {
    if line.fwmark.is_none() && line.service_address.is_none() {
        return Ok(None);
    }
    service_key(line).map(Some)
}

fn service_key(line: &Line) -> Result<ServiceKey, String> {
    match (&line.fwmark, &line.service_address, line.protocol) {
        (Some(_), Some(_), _) => Err("a fwmark service has no address (-f excludes -t/-u)".into()),
        (Some(0), None, _) => Err("fwmark must be greater than 0".into()),
        (Some(mark), None, _) => Ok(ServiceKey::Fwmark {
            family: if line.ipv6 { AddressFamily::Ipv6 } else { AddressFamily::Ipv4 },
            mark: *mark,
        }),
        (None, Some(address), Some(protocol)) => {
            Ok(ServiceKey::Address { protocol, address: parse_address(address, None)? })
        }
        _ => Err("no service (-t, -u, --sctp-service or -f)".into()),
    }
}

/// `a.b.c.d[:port]` or `[v6][:port]`; `default_port` when the port is absent.
fn parse_address(text: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
    let invalid = || format!("invalid address {text:?}");
    if let Ok(address) = SocketAddr::from_str(text) {
        return Ok(address);
    }
    let ip = if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        IpAddr::from_str(inner).map_err(|_| invalid())?
    } else {
        IpAddr::from_str(text).map_err(|_| invalid())?
    };
    let port = default_port.ok_or_else(|| format!("address {text:?} needs a port"))?;
    Ok(SocketAddr::new(ip, port))
}

fn service(line: &Line) -> Result<Service, String> {
    let key = service_key(line)?;
    if let ServiceKey::Address { address, .. } = key
        && address.port() == 0
        && line.persistence.is_none()
    {
        return Err("port 0 needs persistence (-p)".into());
    }
    let mut service = Service::new(key, line.scheduler.clone().unwrap_or_else(|| DEFAULT_SCHEDULER.into()));
    if let Some(timeout) = line.persistence {
        service.flags = service.flags.with(ServiceFlags::PERSISTENT, true);
        service.timeout = timeout;
    }
    if let Some(mask) = &line.netmask {
        service.netmask = match key.family() {
            AddressFamily::Ipv4 => {
                Netmask::Ipv4(Ipv4Addr::from_str(mask).map_err(|_| format!("invalid netmask {mask:?}"))?)
            }
            AddressFamily::Ipv6 => {
                let prefix: u32 = number("-M", mask)?;
                if !(1..=128).contains(&prefix) {
                    return Err(format!("IPv6 netmask {prefix} out of range 1..128"));
                }
                Netmask::Ipv6Prefix(prefix)
            }
        };
    }
    if line.one_packet {
        let udp_or_fwmark =
            matches!(key, ServiceKey::Fwmark { .. } | ServiceKey::Address { protocol: Protocol::Udp, .. });
        if !udp_or_fwmark {
            return Err("one-packet scheduling (-o) is only for UDP and fwmark services".into());
        }
        service.flags = service.flags.with(ServiceFlags::ONE_PACKET, true);
    }
    if let Some(flags) = &line.scheduler_flags {
        for flag in flags.split(',') {
            let bit = match (service.scheduler.as_str(), flag) {
                ("sh", "sh-fallback") | ("mh", "mh-fallback") | (_, "flag-1") => ServiceFlags::SCHED1,
                ("sh", "sh-port") | ("mh", "mh-port") | (_, "flag-2") => ServiceFlags::SCHED2,
                (_, "flag-3") => ServiceFlags::SCHED3,
                (scheduler, flag) => {
                    return Err(format!("scheduler flag {flag:?} does not apply to scheduler {scheduler:?}"));
                }
            };
            service.flags = service.flags.with(bit, true);
        }
    }
    service.persistence_engine = line.persistence_engine.clone();
    Ok(service)
}

/// The port a server without one takes: the service's, none for fwmark services.
fn service_port(key: &ServiceKey) -> u16 {
    match key {
        ServiceKey::Address { address, .. } => address.port(),
        ServiceKey::Fwmark { .. } => 0,
    }
}

fn destination(line: &Line, key: &ServiceKey) -> Result<Destination, String> {
    let server = line.server.as_deref().ok_or("no real server (-r)")?;
    let forward = line.forward.unwrap_or(ForwardMethod::DirectRoute);
    let service_port = service_port(key);
    let mut address = parse_address(server, Some(service_port))?;
    // Only NAT maps ports; ipvsadm silently uses the service port otherwise.
    if forward != ForwardMethod::Masquerade && matches!(key, ServiceKey::Address { .. }) {
        address.set_port(service_port);
    }
    let mut dest = Destination::new(address, forward, line.weight.unwrap_or(1));
    dest.upper_threshold = line.upper_threshold.unwrap_or(0);
    dest.lower_threshold = line.lower_threshold.unwrap_or(0);
    if line.tunnel_type.is_some() || line.tunnel_port.is_some() || line.tunnel_checksum.is_some() {
        if forward != ForwardMethod::Tunnel {
            return Err("tunnel options need the tunnel forwarding method (-i)".into());
        }
        dest.tunnel.kind = line.tunnel_type.unwrap_or(TunnelType::Ipip);
        dest.tunnel.port = line.tunnel_port.unwrap_or(0);
        dest.tunnel.checksum = line.tunnel_checksum.unwrap_or_default();
        if dest.tunnel.kind == TunnelType::Gue && dest.tunnel.port == 0 {
            return Err("a GUE tunnel needs --tun-port".into());
        }
    }
    Ok(dest)
}
