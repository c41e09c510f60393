//! `lvs-agent import`: existing IPVS configurations as VirtualService manifests.
//!
//! Two inputs are understood: ipvsadm rules (`ipvsadm -S` output, `ipvsadm -R`
//! input) and keepalived.conf's `virtual_server` blocks. Each IPVS service
//! becomes one VirtualService in namespace `default`, named after its kernel key
//! so that importing the same table twice gives the same objects:
//!
//! - `<protocol>-<address>-<port>`, the address's dots and colons turned into
//!   dashes: `tcp-10-0-0-100-80`, `udp-2001-db8--1-53`, `sctp-10-0-0-1-0`;
//! - `fwmark-<mark>`, and `fwmark-<mark>-ipv6` for an IPv6 fwmark service.
//!
//! Both are DNS-1123 labels (at most 49 characters). Objects come out in kernel
//! key order, each checked with the API's validation. Nothing is dropped
//! silently: settings the API has no field for (sync daemons, timeouts, a
//! persistence engine, keepalived's quorum, ...) become warnings, and services
//! no VirtualService can describe (mixed forwarding methods, an unknown
//! scheduler or flag) are errors naming the line.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lvs_crds::{
    VirtualService, VirtualServiceSpec,
    virtual_service::{
        Forwarding, HealthCheck, HealthCheckType, OnFailure, Persistence, Protocol, RealServer, Scheduler,
        SchedulerFlag, SorryServer, Tunnel, TunnelChecksum, TunnelEncapsulation,
    },
};

use lvs_ipvs::{
    AddressFamily, Destination, ForwardMethod, IpvsOp, Netmask, Service, ServiceFlags, ServiceKey, ipvsadm,
};

/// Namespace of imported objects unless the caller picks another.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a text cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A line that does not parse or contradicts an earlier one.
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    /// A service that parses but breaks the API's rules.
    #[error("{name}: {}", errors.join("; "))]
    Invalid { name: String, errors: Vec<String> },
    #[error("neither ipvsadm rules (-A/-a lines) nor a keepalived.conf (virtual_server blocks)")]
    UnknownFormat,
}

fn at(line: usize, message: impl Into<String>) -> ImportError {
    ImportError::Line { line, message: message.into() }
}

/// The imported services, in kernel key order, and what could not be carried over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    pub services: Vec<VirtualService>,
    pub warnings: Vec<String>,
}

impl Imported {
    /// The same objects in namespace `namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        for service in &mut self.services {
            service.metadata.namespace = Some(namespace.to_string());
        }
        self
    }

    /// Multi-document YAML of the objects, `---` between them.
    pub fn to_yaml(&self) -> String {
        self.services
            .iter()
            .map(|service| lvs_crds::yaml::to_string(service).expect("a VirtualService serializes to YAML"))
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

/// Imports ipvsadm rules or a keepalived.conf, whichever `text` is: ipvsadm
/// when its first word is `ipvsadm` or an option such as `-A` (comments skipped),
/// keepalived when it has a `virtual_server` block.
pub fn import(text: &str) -> Result<Imported, ImportError> {
    let first_word = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .and_then(|line| line.split_whitespace().next());
    if first_word.is_some_and(|word| word == "ipvsadm" || word.starts_with('-')) {
        ipvsadm_rules(text)
    } else if text.contains("virtual_server") {
        keepalived_conf(text)
    } else {
        Err(ImportError::UnknownFormat)
    }
}

/// One VirtualService per service of ipvsadm rules; see [`import`] for the warnings too.
pub fn import_ipvsadm(text: &str) -> Result<Vec<VirtualService>, ImportError> {
    ipvsadm_rules(text).map(|imported| imported.services)
}

/// One VirtualService per `virtual_server` of a keepalived.conf; see [`import`] for the warnings too.
pub fn import_keepalived(text: &str) -> Result<Vec<VirtualService>, ImportError> {
    keepalived_conf(text).map(|imported| imported.services)
}

/// The name of the VirtualService of a kernel service (see the module docs).
pub fn service_name(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Address { protocol, address } => {
            let protocol = protocol.to_string().to_lowercase().replace(' ', "-");
            let ip = address.ip().to_string().replace(['.', ':'], "-");
            format!("{protocol}-{ip}-{}", address.port())
        }
        ServiceKey::Fwmark { family: AddressFamily::Ipv4, mark } => format!("fwmark-{mark}"),
        ServiceKey::Fwmark { family: AddressFamily::Ipv6, mark } => format!("fwmark-{mark}-ipv6"),
    }
}

/// Checks the specs and wraps them as objects, in key order.
fn finish(
    specs: BTreeMap<ServiceKey, VirtualServiceSpec>,
    warnings: Vec<String>,
) -> Result<Imported, ImportError> {
    let services = specs
        .into_iter()
        .map(|(key, spec)| {
            let name = service_name(&key);
            if let Err(errors) = lvs_crds::validate(&spec) {
                let errors = errors.iter().map(ToString::to_string).collect();
                return Err(ImportError::Invalid { name, errors });
            }
            let mut service = VirtualService::new(&name, spec);
            service.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
            Ok(service)
        })
        .collect::<Result<_, _>>()?;
    Ok(Imported { services, warnings })
}

fn scheduler(name: &str) -> Option<Scheduler> {
    lvs_crds::yaml::from_str(name).ok()
}

/// A spec's key fields for a kernel key: vip and port, or fwmark.
fn spec_for(key: &ServiceKey) -> VirtualServiceSpec {
    match *key {
        ServiceKey::Address { protocol, address } => VirtualServiceSpec {
            vip: Some(address.ip().to_string()),
            port: Some(address.port()),
            protocol: match protocol {
                lvs_ipvs::Protocol::Udp => Protocol::UDP,
                lvs_ipvs::Protocol::Sctp => Protocol::SCTP,
                _ => Protocol::TCP,
            },
            ..Default::default()
        },
        ServiceKey::Fwmark { mark, .. } => VirtualServiceSpec { fwmark: Some(mark), ..Default::default() },
    }
}

/// A real server's port as the spec writes it: absent when it is the service's.
fn server_port(key: &ServiceKey, port: u16) -> Option<u16> {
    let service_port = match key {
        ServiceKey::Address { address, .. } => address.port(),
        ServiceKey::Fwmark { .. } => 0,
    };
    // 0 is the service's port to the API too (manifests load it as unset).
    (port != service_port && port != 0).then_some(port)
}

fn nonzero(value: u32) -> Option<u32> {
    (value != 0).then_some(value)
}

// ---------------------------------------------------------------- ipvsadm

/// A service of the rules, with the line that added it.
struct RuleService {
    line: usize,
    spec: VirtualServiceSpec,
    /// The forwarding (and tunnel) of the first destination, which the others must share.
    forwarding: Option<(Forwarding, Option<Tunnel>)>,
}

fn ipvsadm_rules(text: &str) -> Result<Imported, ImportError> {
    let mut services: BTreeMap<ServiceKey, RuleService> = BTreeMap::new();
    let mut warnings = Vec::new();
    for (index, text) in text.lines().enumerate() {
        let line = index + 1;
        if text.trim().is_empty() || text.trim_start().starts_with('#') {
            continue;
        }
        let rule =
            ipvsadm::parse_rule(text).map_err(|message| at(line, format!("{message}: {}", text.trim())))?;
        match rule {
            IpvsOp::AddService(service) => {
                let key = service.key;
                if services.contains_key(&key) {
                    return Err(at(line, format!("service {key} added twice")));
                }
                let spec =
                    service_spec(&service, line, &mut warnings).map_err(|message| at(line, message))?;
                services.insert(key, RuleService { line, spec, forwarding: None });
            }
            IpvsOp::AddDestination(key, destination) => {
                let service = services.get_mut(&key).ok_or_else(|| {
                    at(line, format!("real server of service {key}, which no earlier -A line adds"))
                })?;
                add_destination(service, &key, &destination).map_err(|message| at(line, message))?;
            }
            IpvsOp::Flush => {} // `-C` heads many rule files: importing starts from nothing anyway.
            other => warnings.push(format!("line {line}: not imported ({other}): {}", text.trim())),
        }
    }
    let mut specs = BTreeMap::new();
    for (key, service) in services {
        if service.spec.real_servers.is_empty() {
            // The API needs at least one real server; an empty IPVS service balances nothing.
            warnings.push(format!("line {}: service {key} has no real servers: not imported", service.line));
        } else {
            specs.insert(key, service.spec);
        }
    }
    finish(specs, warnings)
}

fn service_spec(
    service: &Service,
    line: usize,
    warnings: &mut Vec<String>,
) -> Result<VirtualServiceSpec, String> {
    let key = service.key;
    let mut spec = spec_for(&key);
    spec.scheduler = scheduler(&service.scheduler)
        .ok_or_else(|| format!("scheduler {:?} is not one the API knows", service.scheduler))?;
    let chosen = spec.scheduler;
    let flag = |bit, sh, mh| match chosen {
        _ if !service.flags.contains(bit) => Ok(None),
        Scheduler::Sh => Ok(Some(sh)),
        Scheduler::Mh => Ok(Some(mh)),
        _ => Err(format!("scheduler flags of {:?} have no meaning the API knows", service.scheduler)),
    };
    spec.scheduler_flags = [
        flag(ServiceFlags::SCHED1, SchedulerFlag::ShFallback, SchedulerFlag::MhFallback)?,
        flag(ServiceFlags::SCHED2, SchedulerFlag::ShPort, SchedulerFlag::MhPort)?,
    ]
    .into_iter()
    .flatten()
    .collect();
    if service.flags.contains(ServiceFlags::SCHED3) {
        return Err("scheduler flag flag-3 has no meaning the API knows".into());
    }
    let netmask = match service.netmask {
        mask if mask == Netmask::host(key.family()) => None,
        Netmask::Ipv4(mask) => Some(mask.to_string()),
        Netmask::Ipv6Prefix(prefix) => Some(prefix.to_string()),
    };
    if service.flags.contains(ServiceFlags::PERSISTENT) {
        spec.persistence = Some(Persistence { timeout_seconds: service.timeout, netmask });
    } else if netmask.is_some() {
        warnings.push(format!("line {line}: service {key}: netmask without persistence (-p) ignored"));
    }
    if service.flags.contains(ServiceFlags::ONE_PACKET) {
        spec.one_packet = true;
        // The API allows onePacket with UDP only; a fwmark service's protocol
        // is not part of its kernel key, so UDP says the same.
        spec.protocol = Protocol::UDP;
    }
    if let Some(engine) = &service.persistence_engine {
        warnings.push(format!("line {line}: service {key}: persistence engine {engine:?} not imported"));
    }
    Ok(spec)
}

fn add_destination(
    service: &mut RuleService,
    key: &ServiceKey,
    destination: &Destination,
) -> Result<(), String> {
    let forwarding = match destination.forward {
        ForwardMethod::Masquerade => Forwarding::Nat,
        ForwardMethod::DirectRoute => Forwarding::DirectRouting,
        ForwardMethod::Tunnel => Forwarding::Tunnel,
        other => return Err(format!("forwarding method {other:?} has no equivalent in the API")),
    };
    let tunnel = (forwarding == Forwarding::Tunnel).then(|| tunnel_spec(&destination.tunnel)).transpose()?;
    let this = (forwarding, tunnel);
    match &service.forwarding {
        None => {
            service.spec.forwarding = this.0;
            service.spec.tunnel = this.1.clone();
            service.forwarding = Some(this);
        }
        Some(first) if *first != this => {
            return Err(format!(
                "service {key} ({}) mixes forwarding methods ({} and {}): a VirtualService has one",
                service_name(key),
                describe(first),
                describe(&this),
            ));
        }
        Some(_) => {}
    }
    let weight =
        u16::try_from(destination.weight).map_err(|_| format!("weight {} over 65535", destination.weight))?;
    service.spec.real_servers.push(RealServer {
        address: destination.address.ip().to_string(),
        port: server_port(key, destination.address.port()),
        weight,
        upper_threshold: nonzero(destination.upper_threshold),
        lower_threshold: nonzero(destination.lower_threshold),
    });
    Ok(())
}

/// `NAT`, `Tunnel GRE`: forwarding and encapsulation as manifests spell them.
fn describe((forwarding, tunnel): &(Forwarding, Option<Tunnel>)) -> String {
    let name = |value: Result<String, _>| value.expect("enums serialize").trim_end().to_string();
    match tunnel {
        Some(tunnel) => {
            format!(
                "{} {}",
                name(lvs_crds::yaml::to_string(forwarding)),
                name(lvs_crds::yaml::to_string(&tunnel.encapsulation))
            )
        }
        None => name(lvs_crds::yaml::to_string(forwarding)),
    }
}

fn tunnel_spec(tunnel: &lvs_ipvs::Tunnel) -> Result<Tunnel, String> {
    let encapsulation = match tunnel.kind {
        lvs_ipvs::TunnelType::Ipip => TunnelEncapsulation::Ipip,
        lvs_ipvs::TunnelType::Gue => TunnelEncapsulation::Gue,
        lvs_ipvs::TunnelType::Gre => TunnelEncapsulation::Gre,
        lvs_ipvs::TunnelType::Other(n) => {
            return Err(format!("tunnel type {n} has no equivalent in the API"));
        }
    };
    let checksum = match tunnel.checksum {
        lvs_ipvs::TunnelChecksum::None => TunnelChecksum::None,
        lvs_ipvs::TunnelChecksum::Checksum => TunnelChecksum::Checksum,
        lvs_ipvs::TunnelChecksum::RemoteChecksum => TunnelChecksum::RemoteChecksum,
        lvs_ipvs::TunnelChecksum::Other(n) => {
            return Err(format!("tunnel checksum {n} has no equivalent in the API"));
        }
    };
    Ok(Tunnel { encapsulation, port: (tunnel.port != 0).then_some(tunnel.port), checksum })
}

// ---------------------------------------------------------------- keepalived

/// One keepalived statement: its words, and the block that follows, if any.
#[derive(Debug)]
struct Statement {
    line: usize,
    words: Vec<String>,
    block: Option<Vec<Statement>>,
}

impl Statement {
    fn keyword(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    fn arg(&self, index: usize) -> Result<&str, ImportError> {
        self.words
            .get(index)
            .map(String::as_str)
            .ok_or_else(|| at(self.line, format!("{} needs {index} value(s)", self.keyword())))
    }

    fn number<T: std::str::FromStr>(&self, index: usize) -> Result<T, ImportError> {
        let text = self.arg(index)?;
        text.parse().map_err(|_| at(self.line, format!("{}: invalid number {text:?}", self.keyword())))
    }

    fn children(&self) -> &[Statement] {
        self.block.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Open,
    Close,
}

/// Words and braces with their line numbers; `#` and `!` start comments.
fn tokens(text: &str) -> Vec<(usize, Token<'_>)> {
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_text = line.split(['#', '!']).next().unwrap_or_default();
        for word in line_text.split_whitespace() {
            // Braces may touch words: `real_server 10.0.0.1 80{`.
            let mut rest = word;
            while !rest.is_empty() {
                let end = rest.find(['{', '}']).unwrap_or(rest.len());
                if end > 0 {
                    tokens.push((index + 1, Token::Word(&rest[..end])));
                }
                match rest[end..].chars().next() {
                    Some('{') => tokens.push((index + 1, Token::Open)),
                    Some('}') => tokens.push((index + 1, Token::Close)),
                    _ => {}
                }
                rest = &rest[(end + 1).min(rest.len())..];
            }
        }
    }
    tokens
}

/// How deep blocks may nest. keepalived.conf needs four (virtual_server,
/// real_server, a check, its url); a bound keeps a hostile file from
/// overflowing the stack of this recursive reader (and of the drop of its result).
const MAX_BLOCK_DEPTH: usize = 32;

/// The statements of one block (the whole file at depth 0): a statement is the
/// words of one line, with the `{ ... }` that follows it.
fn statements(
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<(usize, Token<'_>)>>,
    opened_at: Option<usize>,
    depth: usize,
) -> Result<Vec<Statement>, ImportError> {
    let mut block = Vec::new();
    loop {
        let Some((line, token)) = tokens.next() else {
            return match opened_at {
                Some(line) => Err(at(line, "block not closed (missing })")),
                None => Ok(block),
            };
        };
        let mut statement = Statement { line, words: Vec::new(), block: None };
        match token {
            Token::Close if opened_at.is_some() => return Ok(block),
            Token::Close => return Err(at(line, "} without a block to close")),
            Token::Open => {}
            Token::Word(word) => {
                statement.words.push(word.to_string());
                while let Some(&(next_line, Token::Word(word))) = tokens.peek()
                    && next_line == line
                {
                    statement.words.push(word.to_string());
                    tokens.next();
                }
                if tokens.peek().map(|(_, token)| *token) != Some(Token::Open) {
                    block.push(statement);
                    continue;
                }
                tokens.next();
            }
        }
        if depth == MAX_BLOCK_DEPTH {
            return Err(at(line, format!("blocks nested deeper than {MAX_BLOCK_DEPTH}")));
        }
        statement.block = Some(statements(tokens, Some(line), depth + 1)?);
        block.push(statement);
    }
}

fn keepalived_conf(text: &str) -> Result<Imported, ImportError> {
    let mut tokens = tokens(text).into_iter().peekable();
    let top = statements(&mut tokens, None, 0)?;
    let mut specs = BTreeMap::new();
    let mut warnings = Vec::new();
    for statement in &top {
        match statement.keyword() {
            "virtual_server" if statement.words.get(1).is_some_and(|w| w == "group") => {
                warnings.push(format!(
                    "line {}: virtual_server group not imported: write one virtual_server per address",
                    statement.line
                ))
            }
            "virtual_server" => {
                let (key, spec) = KeepalivedService::parse(statement, &mut warnings)?;
                if specs.insert(key, spec).is_some() {
                    return Err(at(statement.line, format!("service {key} defined twice")));
                }
            }
            // VRRP, global settings and static routes are no IPVS services.
            keyword
                if keyword == "global_defs"
                    || keyword.starts_with("vrrp_")
                    || keyword.starts_with("static_") => {}
            keyword => warnings.push(format!("line {}: {keyword} not imported", statement.line)),
        }
    }
    if specs.is_empty() && warnings.is_empty() {
        return Err(ImportError::UnknownFormat);
    }
    finish(specs, warnings)
}

/// keepalived's defaults: checks every 60 s, 5 s connect timeout.
const KEEPALIVED_DELAY_LOOP: u32 = 60;
const KEEPALIVED_CONNECT_TIMEOUT: u32 = 5;
/// keepalived's persistence timeout when `persistence_timeout` has no value.
const KEEPALIVED_PERSISTENCE_TIMEOUT: u32 = 360;

/// Check settings as keepalived inherits them: virtual server, then real
/// server, then checker; the innermost wins.
#[derive(Clone, Debug, Default)]
struct CheckSettings {
    delay_loop: Option<u32>,
    connect_timeout: Option<u32>,
    retry: Option<u32>,
    virtualhost: Option<String>,
}

impl CheckSettings {
    /// Takes a check setting; false when `statement` is none.
    fn take(&mut self, statement: &Statement, warnings: &mut Vec<String>) -> Result<bool, ImportError> {
        match statement.keyword() {
            "delay_loop" => self.delay_loop = Some(statement.number(1)?),
            "connect_timeout" => self.connect_timeout = Some(statement.number(1)?),
            "retry" | "nb_get_retry" => self.retry = Some(statement.number(1)?),
            "virtualhost" => self.virtualhost = Some(statement.arg(1)?.to_string()),
            // The API retries at the next interval.
            "delay_before_retry" => {
                warnings.push(format!("line {}: delay_before_retry not imported", statement.line))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// What one `virtual_server` block says, as it is read.
struct KeepalivedService<'a> {
    key: ServiceKey,
    spec: VirtualServiceSpec,
    check_settings: CheckSettings,
    quiesce: bool,
    /// Each real server's health check (None: it has none), to tell when they differ.
    checks: Vec<(usize, Option<HealthCheck>)>,
    /// Real server lines, for the forwarding and port checks after the block.
    servers: Vec<(&'a Statement, Option<Forwarding>)>,
    warnings: &'a mut Vec<String>,
}

impl<'a> KeepalivedService<'a> {
    fn parse(
        statement: &'a Statement,
        warnings: &'a mut Vec<String>,
    ) -> Result<(ServiceKey, VirtualServiceSpec), ImportError> {
        let line = statement.line;
        let mut protocol = lvs_ipvs::Protocol::Tcp;
        let mut family = AddressFamily::Ipv4;
        for child in statement.children() {
            match (child.keyword(), child.words.get(1).map(String::as_str)) {
                ("protocol", Some("TCP")) => protocol = lvs_ipvs::Protocol::Tcp,
                ("protocol", Some("UDP")) => protocol = lvs_ipvs::Protocol::Udp,
                ("protocol", Some("SCTP")) => protocol = lvs_ipvs::Protocol::Sctp,
                ("protocol", other) => {
                    return Err(at(child.line, format!("protocol {other:?}: TCP, UDP or SCTP")));
                }
                ("ip_family", Some("inet6")) => family = AddressFamily::Ipv6,
                _ => {}
            }
        }
        let key = match statement.arg(1)? {
            "fwmark" => ServiceKey::Fwmark { family, mark: statement.number(2)? },
            address => {
                let ip: IpAddr =
                    address.parse().map_err(|_| at(line, format!("invalid address {address:?}")))?;
                ServiceKey::Address { protocol, address: SocketAddr::new(ip, statement.number(2)?) }
            }
        };
        let mut service = KeepalivedService {
            key,
            spec: spec_for(&key),
            check_settings: CheckSettings::default(),
            quiesce: false,
            checks: Vec::new(),
            servers: Vec::new(),
            warnings,
        };
        // keepalived's default forwarding method.
        service.spec.forwarding = Forwarding::Nat;
        service.read(statement)?;
        service.finish()
    }

    fn warn(&mut self, statement: &Statement) {
        let what = if statement.block.is_some() { "block" } else { "keyword" };
        self.warnings.push(format!("line {}: {what} {} not imported", statement.line, statement.keyword()));
    }

    fn read(&mut self, statement: &'a Statement) -> Result<(), ImportError> {
        for child in statement.children() {
            if self.check_settings.take(child, self.warnings)? {
                continue;
            }
            match child.keyword() {
                "protocol" | "ip_family" => {} // read with the key
                "lb_algo" | "lvs_sched" => {
                    let name = child.arg(1)?;
                    self.spec.scheduler = scheduler(name)
                        .ok_or_else(|| at(child.line, format!("unknown scheduler {name:?}")))?;
                }
                "lb_kind" | "lvs_method" => {
                    let (forwarding, tunnel) = forwarding(child)?;
                    self.spec.forwarding = forwarding;
                    self.spec.tunnel = tunnel;
                }
                "persistence_timeout" => {
                    let timeout = match child.words.len() {
                        1 => KEEPALIVED_PERSISTENCE_TIMEOUT,
                        _ => child.number(1)?,
                    };
                    let netmask = self.spec.persistence.take().and_then(|p| p.netmask);
                    // keepalived reads 0 as no persistence.
                    if timeout > 0 {
                        self.spec.persistence = Some(Persistence { timeout_seconds: timeout, netmask });
                    }
                }
                "persistence_granularity" => {
                    let netmask = Some(child.arg(1)?.to_string());
                    match &mut self.spec.persistence {
                        Some(persistence) => persistence.netmask = netmask,
                        // Kept for a persistence_timeout further down.
                        None => self.spec.persistence = Some(Persistence { timeout_seconds: 0, netmask }),
                    }
                }
                "ops" => self.spec.one_packet = true,
                "sh-fallback" => self.spec.scheduler_flags.push(SchedulerFlag::ShFallback),
                "sh-port" => self.spec.scheduler_flags.push(SchedulerFlag::ShPort),
                "mh-fallback" => self.spec.scheduler_flags.push(SchedulerFlag::MhFallback),
                "mh-port" => self.spec.scheduler_flags.push(SchedulerFlag::MhPort),
                "inhibit_on_failure" => self.quiesce = true,
                "sorry_server" => {
                    let address: IpAddr = child
                        .arg(1)?
                        .parse()
                        .map_err(|_| at(child.line, format!("invalid address {:?}", child.words[1])))?;
                    let port = server_port(&self.key, child.number(2)?);
                    self.spec.sorry_server = Some(SorryServer { address: address.to_string(), port });
                }
                "real_server" => self.real_server(child)?,
                _ => self.warn(child),
            }
        }
        Ok(())
    }

    fn real_server(&mut self, statement: &'a Statement) -> Result<(), ImportError> {
        let line = statement.line;
        let address: IpAddr = statement
            .arg(1)?
            .parse()
            .map_err(|_| at(line, format!("invalid address {:?}", statement.words[1])))?;
        let port: u16 = statement.number(2)?;
        let mut server = RealServer {
            address: address.to_string(),
            port: server_port(&self.key, port),
            weight: 1,
            upper_threshold: None,
            lower_threshold: None,
        };
        let mut settings = self.check_settings.clone();
        let mut own_forwarding = None;
        let mut checkers = Vec::new();
        for child in statement.children() {
            if settings.take(child, self.warnings)? {
                continue;
            }
            match child.keyword() {
                "weight" => server.weight = child.number(1)?,
                "uthreshold" => server.upper_threshold = nonzero(child.number(1)?),
                "lthreshold" => server.lower_threshold = nonzero(child.number(1)?),
                "inhibit_on_failure" => self.quiesce = true,
                "lb_kind" | "lvs_method" => own_forwarding = Some(forwarding(child)?.0),
                "TCP_CHECK" | "HTTP_GET" | "SSL_GET" | "UDP_CHECK" => checkers.push(child),
                _ => self.warn(child),
            }
        }
        if checkers.len() > 1 {
            self.warnings
                .push(format!("line {line}: real server {address}: only the first checker imported"));
        }
        let check = checkers.first().map(|checker| self.health_check(checker, settings, port)).transpose()?;
        self.checks.push((line, check));
        self.servers.push((statement, own_forwarding));
        self.spec.real_servers.push(server);
        Ok(())
    }

    fn health_check(
        &mut self,
        checker: &Statement,
        mut settings: CheckSettings,
        port: u16,
    ) -> Result<HealthCheck, ImportError> {
        let kind = match checker.keyword() {
            "HTTP_GET" => HealthCheckType::HTTP,
            "SSL_GET" => HealthCheckType::HTTPS,
            "UDP_CHECK" => HealthCheckType::UDP,
            _ => HealthCheckType::TCP,
        };
        let http = matches!(kind, HealthCheckType::HTTP | HealthCheckType::HTTPS);
        let mut check = HealthCheck {
            kind,
            path: None,
            host: None,
            port: None,
            expected_status: None,
            body_contains: None,
            payload: None,
            interval_seconds: 0,
            timeout_seconds: 0,
            rise: 1, // keepalived brings a server back after one good check
            fall: 3,
            on_failure: OnFailure::Remove,
        };
        for child in checker.children() {
            if settings.take(child, self.warnings)? {
                continue;
            }
            match child.keyword() {
                "connect_port" => check.port = Some(child.number(1)?).filter(|&p| p != port),
                "url" if http && check.path.is_none() => {
                    for setting in child.children() {
                        match setting.keyword() {
                            "path" => check.path = Some(setting.arg(1)?.to_string()),
                            "status_code" => {
                                let mut codes = Vec::new();
                                for word in &setting.words[1..] {
                                    match word.parse() {
                                        Ok(code) => codes.push(code),
                                        // A range (200-299) is wider than the API's list of codes.
                                        Err(_) => self.warnings.push(format!(
                                            "line {}: status_code {word} not imported",
                                            setting.line
                                        )),
                                    }
                                }
                                check.expected_status = (!codes.is_empty()).then_some(codes);
                            }
                            _ => self.warn(setting),
                        }
                    }
                }
                _ => self.warn(child),
            }
        }
        check.interval_seconds = settings.delay_loop.unwrap_or(KEEPALIVED_DELAY_LOOP);
        let timeout = settings.connect_timeout.unwrap_or(KEEPALIVED_CONNECT_TIMEOUT);
        check.timeout_seconds = timeout.min(check.interval_seconds);
        if timeout > check.interval_seconds {
            self.warnings.push(format!(
                "line {}: connect_timeout {timeout} over delay_loop {}: timeoutSeconds lowered to it",
                checker.line, check.interval_seconds
            ));
        }
        // keepalived fails a server after the first failure plus `retry` more.
        if let Some(retry) = settings.retry {
            check.fall = retry.saturating_add(1).min(100);
        }
        check.host = settings.virtualhost.filter(|_| http);
        Ok(check)
    }

    fn finish(mut self) -> Result<(ServiceKey, VirtualServiceSpec), ImportError> {
        let name = service_name(&self.key);
        for (statement, own) in &self.servers {
            if own.is_some_and(|own| own != self.spec.forwarding) {
                return Err(at(
                    statement.line,
                    format!("service {name} mixes forwarding methods: a VirtualService has one"),
                ));
            }
        }
        if matches!(self.spec.forwarding, Forwarding::DirectRouting | Forwarding::Tunnel) {
            // These cannot map ports: IPVS sends to the service's port whatever the real server says.
            for (server, (statement, _)) in self.spec.real_servers.iter_mut().zip(&self.servers) {
                if server.port.take().is_some() {
                    self.warnings.push(format!(
                        "line {}: {:?} cannot map ports: real server {} uses the service's port",
                        statement.line, self.spec.forwarding, server.address
                    ));
                }
            }
        }
        if self.spec.persistence.as_ref().is_some_and(|p| p.timeout_seconds == 0) {
            self.spec.persistence = None; // a granularity without a timeout
        }
        let mut checks = std::mem::take(&mut self.checks).into_iter();
        if let Some((_, first)) = checks.next() {
            for (line, check) in checks {
                if check != first {
                    self.warnings.push(format!(
                        "line {line}: service {name}: real servers have different checks; the first real server's is used"
                    ));
                }
            }
            self.spec.health_check = first.map(|check| HealthCheck {
                on_failure: if self.quiesce { OnFailure::Quiesce } else { OnFailure::Remove },
                ..check
            });
        }
        Ok((self.key, self.spec))
    }
}

/// `lb_kind NAT|DR|TUN` (`lvs_method`), for TUN with keepalived's optional
/// `type ipip|gue|gre`, `port N` and `nocsum|csum|remcsum`.
fn forwarding(statement: &Statement) -> Result<(Forwarding, Option<Tunnel>), ImportError> {
    let line = statement.line;
    match statement.arg(1)? {
        "NAT" => Ok((Forwarding::Nat, None)),
        "DR" => Ok((Forwarding::DirectRouting, None)),
        "TUN" => {
            let mut tunnel = Tunnel::default();
            let mut words = statement.words[2..].iter().map(String::as_str);
            while let Some(word) = words.next() {
                match (word, words.clone().next()) {
                    ("type", Some("ipip")) => tunnel.encapsulation = TunnelEncapsulation::Ipip,
                    ("type", Some("gue")) => tunnel.encapsulation = TunnelEncapsulation::Gue,
                    ("type", Some("gre")) => tunnel.encapsulation = TunnelEncapsulation::Gre,
                    ("port", Some(port)) => {
                        tunnel.port = Some(
                            port.parse().map_err(|_| at(line, format!("invalid tunnel port {port:?}")))?,
                        )
                    }
                    ("nocsum", _) => tunnel.checksum = TunnelChecksum::None,
                    ("csum", _) => tunnel.checksum = TunnelChecksum::Checksum,
                    ("remcsum", _) => tunnel.checksum = TunnelChecksum::RemoteChecksum,
                    (other, _) => return Err(at(line, format!("unknown tunnel option {other:?}"))),
                }
                if matches!(word, "type" | "port") {
                    words.next();
                }
            }
            Ok((Forwarding::Tunnel, Some(tunnel)))
        }
        other => Err(at(line, format!("unknown forwarding method {other:?}: NAT, DR or TUN"))),
    }
}
