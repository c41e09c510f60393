//! The API's rules in Rust: the same rules the CRD states as OpenAPI bounds and
//! CEL `x-kubernetes-validations`, for places without an API server (the
//! standalone agent reading manifests, the controller double-checking, tests).
//!
//! Values out of a Rust type's range (a port of 70000, weight -1, an unknown
//! scheduler) never get here: deserialization refuses them, and the YAML reader's
//! error names the field. Everything else is checked below, and each error
//! names the field path and the offending value.
//!
//! Duplicate real servers are refused server-side by the schema (realServers
//! is a list-type map keyed by address and port), not by CEL.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use crate::virtual_service::{
    AddressFamily, Forwarding, HealthCheck, HealthCheckType, MAX_REAL_SERVERS, Protocol, RealServer,
    Scheduler, SchedulerFlag, Tunnel, TunnelChecksum, TunnelEncapsulation, VirtualServiceSpec,
};

/// One broken rule: where, which value, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the field, e.g. `spec.realServers[1].port`.
    pub field: String,
    /// The offending value as written, if the field has one.
    pub value: Option<String>,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}: {}: {}", self.field, value, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

impl std::error::Error for ValidationError {}

/// Check a VirtualService spec against every rule of the API; every broken
/// rule is reported, e.g. `spec.realServers[1].port: 8080: DirectRouting
/// cannot map ports (must equal spec.port 80)`.
pub fn validate(spec: &VirtualServiceSpec) -> Result<(), Vec<ValidationError>> {
    let mut check = Checker::default();
    check.key(spec);
    check.forwarding(spec);
    check.real_servers(spec);
    check.scheduler(spec);
    check.persistence(spec);
    if let Some(health_check) = &spec.health_check {
        check.health_check(health_check);
    }
    check.failover(spec);
    if check.errors.is_empty() { Ok(()) } else { Err(check.errors) }
}

impl VirtualServiceSpec {
    /// Check the spec against every rule of the API; see [`validate`].
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        validate(self)
    }

    /// Address family of the service: the vip's, else (fwmark) the first
    /// real server's, else IPv4. Decided by the text, as the CRD's CEL rules
    /// do, so that even an invalid spec gets the same answer on both sides.
    pub fn family(&self) -> AddressFamily {
        let address = self.vip.as_deref().or_else(|| self.real_servers.first().map(|r| r.address.as_str()));
        match address {
            Some(address) if address.contains(':') => AddressFamily::IPv6,
            _ => AddressFamily::IPv4,
        }
    }
}

/// Parse an IP address as Kubernetes' CEL `isIP()` accepts it: IPv4 without
/// leading zeros, IPv6 without zone and not IPv4-mapped.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    match text.parse().ok()? {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
        ip => Some(ip),
    }
}

/// Prefix length of a persistence netmask: a dotted contiguous netmask for
/// IPv4 (`255.255.255.0` is 24), a decimal prefix length 1-128 for IPv6.
pub fn netmask_prefix_length(netmask: &str, family: AddressFamily) -> Option<u8> {
    match family {
        AddressFamily::IPv4 => {
            let bits = u32::from(netmask.parse::<std::net::Ipv4Addr>().ok()?);
            let ones = bits.leading_ones();
            (ones + bits.trailing_zeros() >= 32).then_some(ones as u8)
        }
        AddressFamily::IPv6 => {
            let length: u8 = netmask.parse().ok()?;
            // The CRD's regex takes only the canonical spelling ("64", not "064" or "+64").
            ((1..=128).contains(&length) && length.to_string() == netmask).then_some(length)
        }
    }
}

#[derive(Default)]
struct Checker {
    errors: Vec<ValidationError>,
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, value: Option<String>, message: impl Into<String>) {
        self.errors.push(ValidationError { field: field.into(), value, message: message.into() });
    }

    /// Fails when `value` is outside `range`; schema minimum/maximum in the CRD.
    fn range(&mut self, field: impl Into<String>, value: u32, range: std::ops::RangeInclusive<u32>) {
        if !range.contains(&value) {
            let message = format!("must be {}-{}", range.start(), range.end());
            self.fail(field, Some(value.to_string()), message);
        }
    }

    /// Fails when `text` has fewer than `min` or more than `max` characters;
    /// schema minLength/maxLength in the CRD.
    fn length(&mut self, field: &str, text: &str, min: usize, max: usize) {
        let length = text.chars().count();
        if length < min || length > max {
            let message = format!("length must be {min}-{max}");
            self.fail(field, Some(quoted(text)), message);
        }
    }

    fn ip(&mut self, field: &str, text: &str) -> Option<IpAddr> {
        let ip = parse_ip(text);
        if ip.is_none() {
            self.fail(field, Some(quoted(text)), "must be an IPv4 or IPv6 address");
        }
        ip
    }

    /// vip, fwmark and port: what identifies the service.
    fn key(&mut self, spec: &VirtualServiceSpec) {
        match (&spec.vip, spec.fwmark) {
            (Some(_), Some(mark)) => {
                self.fail("spec.fwmark", Some(mark.to_string()), "fwmark excludes vip and port")
            }
            (None, Some(mark)) if spec.port.is_some() => {
                self.fail("spec.fwmark", Some(mark.to_string()), "fwmark excludes vip and port")
            }
            _ => {}
        }
        if let Some(vip) = &spec.vip {
            self.ip("spec.vip", vip);
        }
        if spec.fwmark.is_none() && spec.port.is_none() {
            self.fail("spec.port", None, "port is required without fwmark (0 = all ports)");
        }
        if let Some(pool) = &spec.pool {
            self.length("spec.pool", pool, 1, 253);
        }
        if spec.fwmark == Some(0) {
            self.fail("spec.fwmark", Some("0".into()), "must be 1-4294967295");
        }
        if spec.port == Some(0) && spec.persistence.is_none() {
            self.fail("spec.port", Some("0".into()), "port 0 (all ports) needs persistence");
        }
        if spec.one_packet && spec.protocol != Protocol::UDP {
            let protocol = format!("{:?}", spec.protocol);
            self.fail(
                "spec.onePacket",
                Some("true".into()),
                format!("onePacket is only allowed with protocol UDP, not {protocol}"),
            );
        }
    }

    /// Forwarding-dependent fields: port mapping, tunnel, backendService.
    fn forwarding(&mut self, spec: &VirtualServiceSpec) {
        let mode = spec.forwarding;
        if matches!(mode, Forwarding::DirectRouting | Forwarding::Tunnel) {
            let mapped = |port: Option<u16>| port.is_some_and(|p| Some(p) != spec.port);
            let expected = match spec.port {
                Some(port) => format!("must equal spec.port {port}"),
                None => "must be omitted with fwmark".to_owned(),
            };
            let message = format!("{mode:?} cannot map ports ({expected})");
            for (i, server) in spec.real_servers.iter().enumerate() {
                if mapped(server.port) {
                    let field = format!("spec.realServers[{i}].port");
                    self.fail(field, server.port.map(|p| p.to_string()), &message);
                }
            }
            if let Some(selector) = spec.real_server_selector.as_ref().filter(|s| mapped(s.port)) {
                let port = selector.port.map(|p| p.to_string());
                self.fail("spec.realServerSelector.port", port, &message);
            }
            if let Some(sorry) = spec.sorry_server.as_ref().filter(|s| mapped(s.port)) {
                self.fail("spec.sorryServer.port", sorry.port.map(|p| p.to_string()), &message);
            }
        }
        match &spec.tunnel {
            Some(_) if mode != Forwarding::Tunnel => self.fail(
                "spec.tunnel",
                None,
                format!("tunnel is only allowed with forwarding Tunnel, not {}", forwarding_name(mode)),
            ),
            Some(tunnel) => self.tunnel(tunnel),
            None => {}
        }
        if let Some(backend) = &spec.backend_service {
            if !matches!(mode, Forwarding::Nat | Forwarding::FullNat) {
                self.fail(
                    "spec.backendService",
                    Some(quoted(&backend.name)),
                    format!(
                        "backendService is only allowed with forwarding NAT or FullNAT, not {}",
                        forwarding_name(mode)
                    ),
                );
            }
            self.length("spec.backendService.name", &backend.name, 1, 253);
            if backend.port == Some(0) {
                self.fail("spec.backendService.port", Some("0".into()), "must be 1-65535");
            }
        }
        if let Some(interface) = spec.directors.as_ref().and_then(|d| d.interface.as_deref()) {
            self.length("spec.directors.interface", interface, 1, 15);
        }
    }

    fn tunnel(&mut self, tunnel: &Tunnel) {
        let gue = tunnel.encapsulation == TunnelEncapsulation::Gue;
        match tunnel.port {
            None if gue => self.fail("spec.tunnel.port", None, "port is required with GUE"),
            Some(port) if !gue => {
                self.fail("spec.tunnel.port", Some(port.to_string()), "port is only allowed with GUE")
            }
            Some(0) => self.fail("spec.tunnel.port", Some("0".into()), "must be 1-65535"),
            _ => {}
        }
        if tunnel.checksum == TunnelChecksum::RemoteChecksum && !gue {
            self.fail(
                "spec.tunnel.checksum",
                Some("RemoteChecksum".into()),
                "RemoteChecksum is only available with GUE",
            );
        }
    }

    /// The real servers: addresses, families, ports, thresholds, sources.
    fn real_servers(&mut self, spec: &VirtualServiceSpec) {
        let family = spec.family();
        let servers = &spec.real_servers;
        if servers.len() > MAX_REAL_SERVERS {
            let count = servers.len().to_string();
            self.fail("spec.realServers", Some(count), format!("at most {MAX_REAL_SERVERS} real servers"));
        }
        let mut seen = BTreeSet::new();
        for (i, server) in servers.iter().enumerate() {
            self.real_server(i, server, family);
            if !seen.insert((server.address.as_str(), server.port)) {
                let field = format!("spec.realServers[{i}]");
                self.fail(field, Some(quoted(&server.address)), "duplicate real server");
            }
        }
        if let Some(port) = spec.real_server_selector.as_ref().and_then(|s| s.port)
            && port == 0
        {
            self.fail("spec.realServerSelector.port", Some("0".into()), "must be 1-65535");
        }
        if let Some(sorry) = &spec.sorry_server {
            let ip = self.ip("spec.sorryServer.address", &sorry.address);
            if ip.is_some_and(|ip| AddressFamily::from(ip) != family) {
                self.fail(
                    "spec.sorryServer.address",
                    Some(quoted(&sorry.address)),
                    format!("sorryServer must have the service's address family {family:?}"),
                );
            }
            if sorry.port == Some(0) {
                self.fail("spec.sorryServer.port", Some("0".into()), "must be 1-65535");
            }
        }
        let has_source = !servers.is_empty()
            || spec.real_server_selector.is_some()
            || spec.backend_service.is_some()
            || spec.sorry_server.is_some();
        if !has_source {
            self.fail(
                "spec.realServers",
                None,
                "no real servers: set realServers, realServerSelector or backendService (or at least a sorryServer)",
            );
        }
    }

    fn real_server(&mut self, i: usize, server: &RealServer, family: AddressFamily) {
        let field = |name: &str| format!("spec.realServers[{i}].{name}");
        let ip = self.ip(&field("address"), &server.address);
        if ip.is_some_and(|ip| AddressFamily::from(ip) != family) {
            self.fail(
                field("address"),
                Some(quoted(&server.address)),
                format!("real servers must have the service's address family {family:?}"),
            );
        }
        if server.upper_threshold == Some(0) {
            self.fail(field("upperThreshold"), Some("0".into()), "must be 1-4294967295");
        }
        if let Some(lower) = server.lower_threshold
            && server.upper_threshold.is_none_or(|upper| lower > upper)
        {
            let upper = server.upper_threshold.map_or("none".into(), |u| u.to_string());
            self.fail(
                field("lowerThreshold"),
                Some(lower.to_string()),
                format!("lowerThreshold needs an upperThreshold at least as large (upperThreshold: {upper})"),
            );
        }
    }

    fn scheduler(&mut self, spec: &VirtualServiceSpec) {
        if spec.scheduler_flags.len() > 4 {
            let count = spec.scheduler_flags.len().to_string();
            self.fail("spec.schedulerFlags", Some(count), "at most 4 flags");
        }
        for (i, flag) in spec.scheduler_flags.iter().enumerate() {
            let owner = match flag {
                SchedulerFlag::ShFallback | SchedulerFlag::ShPort => Scheduler::Sh,
                SchedulerFlag::MhFallback | SchedulerFlag::MhPort => Scheduler::Mh,
            };
            if owner != spec.scheduler {
                self.fail(
                    format!("spec.schedulerFlags[{i}]"),
                    Some(serde_name(flag)),
                    format!(
                        "flag of scheduler {} used with scheduler {}",
                        serde_name(&owner),
                        serde_name(&spec.scheduler)
                    ),
                );
            }
        }
    }

    fn persistence(&mut self, spec: &VirtualServiceSpec) {
        let Some(persistence) = &spec.persistence else { return };
        if persistence.timeout_seconds == 0 {
            self.fail("spec.persistence.timeoutSeconds", Some("0".into()), "must be 1-4294967295");
        }
        if let Some(netmask) = &persistence.netmask {
            let family = spec.family();
            if netmask_prefix_length(netmask, family).is_none() {
                let expected = match family {
                    AddressFamily::IPv4 => "a dotted IPv4 netmask such as 255.255.255.0",
                    AddressFamily::IPv6 => "a prefix length 1-128",
                };
                self.fail(
                    "spec.persistence.netmask",
                    Some(quoted(netmask)),
                    format!("must be {expected} for an {family:?} service"),
                );
            }
        }
    }

    fn health_check(&mut self, check: &HealthCheck) {
        let field = |name: &str| format!("spec.healthCheck.{name}");
        self.range(field("intervalSeconds"), check.interval_seconds, 1..=3600);
        self.range(field("timeoutSeconds"), check.timeout_seconds, 1..=3600);
        self.range(field("rise"), check.rise, 1..=100);
        self.range(field("fall"), check.fall, 1..=100);
        if check.timeout_seconds > check.interval_seconds {
            self.fail(
                field("timeoutSeconds"),
                Some(check.timeout_seconds.to_string()),
                format!("timeoutSeconds must not exceed intervalSeconds {}", check.interval_seconds),
            );
        }
        if check.port == Some(0) {
            self.fail(field("port"), Some("0".into()), "must be 1-65535");
        }
        let http = matches!(check.kind, HealthCheckType::HTTP | HealthCheckType::HTTPS);
        let http_only = [
            ("path", check.path.clone()),
            ("host", check.host.clone()),
            ("expectedStatus", check.expected_status.as_ref().map(|s| format!("{s:?}"))),
            ("bodyContains", check.body_contains.clone()),
        ];
        for (name, value) in http_only {
            if let Some(value) = value.filter(|_| !http) {
                self.fail(
                    field(name),
                    Some(quoted(&value)),
                    format!("{name} is only allowed with type HTTP or HTTPS, not {:?}", check.kind),
                );
            }
        }
        if let Some(payload) = &check.payload {
            if check.kind != HealthCheckType::UDP {
                self.fail(
                    field("payload"),
                    Some(quoted(payload)),
                    format!("payload is only allowed with type UDP, not {:?}", check.kind),
                );
            }
            self.length(&field("payload"), payload, 0, 1024);
        }
        if let Some(path) = &check.path {
            if !path.starts_with('/') {
                self.fail(field("path"), Some(quoted(path)), "must start with /");
            }
            if path.chars().any(|c| is_control(c) || c == ' ') {
                self.fail(field("path"), Some(quoted(path)), "must not contain control characters or spaces");
            }
            self.length(&field("path"), path, 0, 1024);
        }
        if let Some(host) = &check.host {
            if host.chars().any(is_control) {
                self.fail(field("host"), Some(quoted(host)), "must not contain control characters");
            }
            self.length(&field("host"), host, 1, 253);
        }
        if let Some(body) = &check.body_contains {
            self.length(&field("bodyContains"), body, 0, 1024);
        }
        if let Some(codes) = &check.expected_status {
            if codes.is_empty() || codes.len() > 16 {
                self.fail(field("expectedStatus"), Some(format!("{codes:?}")), "must list 1-16 codes");
            }
            for (i, &code) in codes.iter().enumerate() {
                self.range(format!("spec.healthCheck.expectedStatus[{i}]"), code.into(), 100..=599);
            }
        }
    }

    fn failover(&mut self, spec: &VirtualServiceSpec) {
        let Some(failover) = &spec.failover else { return };
        if spec.fwmark.is_some() {
            self.fail(
                "spec.failover",
                None,
                "failover moves the vip between directors: it needs a vip, not a fwmark",
            );
        }
        let vrrp = &failover.vrrp;
        self.range("spec.failover.vrrp.virtualRouterId", vrrp.virtual_router_id.into(), 1..=255);
        let interval = vrrp.advert_interval_ms;
        self.range("spec.failover.vrrp.advertIntervalMs", interval, 10..=40950);
        if interval % 10 != 0 {
            self.fail(
                "spec.failover.vrrp.advertIntervalMs",
                Some(interval.to_string()),
                "must be a multiple of 10 (VRRPv3 counts in centiseconds)",
            );
        }
    }
}

/// ASCII control characters, as the CRD's CEL rules see them (`[\x00-\x1f\x7f]`);
/// CR and LF in a request would let a value inject headers.
fn is_control(c: char) -> bool {
    c < ' ' || c == '\x7f'
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// The name a unit enum variant has in manifests.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn forwarding_name(mode: Forwarding) -> String {
    serde_name(&mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> VirtualServiceSpec {
        crate::yaml::from_str(yaml).unwrap()
    }

    /// The errors of the spec `yaml`, as people read them (none when valid).
    fn error_texts(yaml: &str) -> Vec<String> {
        validate(&spec(yaml)).err().unwrap_or_default().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn netmasks_become_prefix_lengths() {
        use AddressFamily::{IPv4, IPv6};
        assert_eq!(netmask_prefix_length("255.255.255.255", IPv4), Some(32));
        assert_eq!(netmask_prefix_length("255.255.254.0", IPv4), Some(23));
        assert_eq!(netmask_prefix_length("0.0.0.0", IPv4), Some(0));
        assert_eq!(netmask_prefix_length("255.0.255.0", IPv4), None);
        assert_eq!(netmask_prefix_length("24", IPv4), None);
        assert_eq!(netmask_prefix_length("64", IPv6), Some(64));
        assert_eq!(netmask_prefix_length("128", IPv6), Some(128));
        for bad in ["0", "129", "064", "+64", "255.255.255.0"] {
            assert_eq!(netmask_prefix_length(bad, IPv6), None, "{bad}");
        }
    }

    #[test]
    fn addresses_parse_as_kubernetes_isip_does() {
        assert!(parse_ip("192.168.16.100").is_some());
        assert!(parse_ip("2001:db8::1").is_some());
        for bad in
            ["192.168.016.100", "::ffff:192.168.16.100", "fe80::1%eth0", "192.168.16.100/32", " 192.168.16.1"]
        {
            assert_eq!(parse_ip(bad), None, "{bad}");
        }
    }

    #[test]
    fn duplicate_real_servers_are_refused() {
        let errors = validate(&spec(
            "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21}, {address: 192.168.16.21}]}",
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), r#"spec.realServers[1]: "192.168.16.21": duplicate real server"#);
    }

    #[test]
    fn a_real_servers_port_0_is_the_services_port() {
        let zero = spec("{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21, port: 0}]}");
        assert_eq!(zero.real_servers[0].port, None);
        assert_eq!(validate(&zero), Ok(()));
        let errors = validate(&spec(
            "{vip: 192.168.16.100, port: 80, realServers: [{address: 192.168.16.21}, {address: 192.168.16.21, port: 0}]}",
        ))
        .unwrap_err();
        assert_eq!(errors[0].field, "spec.realServers[1]");
    }

    #[test]
    fn control_characters_in_the_request_are_refused_naming_field_and_value() {
        let check = |health_check: &str| {
            error_texts(&format!(
                "{{vip: 192.168.16.100, port: 80, healthCheck: {health_check}, realServers: [{{address: 192.168.16.21}}]}}"
            ))
        };
        assert_eq!(
            check(r#"{type: HTTP, path: "/health\r\nX-Injected: 1"}"#),
            [
                r#"spec.healthCheck.path: "/health\r\nX-Injected: 1": must not contain control characters or spaces"#
            ]
        );
        assert_eq!(
            check(r#"{type: HTTP, path: "/a b"}"#),
            [r#"spec.healthCheck.path: "/a b": must not contain control characters or spaces"#]
        );
        assert_eq!(
            check(r#"{type: HTTP, host: "web\nX: 1"}"#),
            [r#"spec.healthCheck.host: "web\nX: 1": must not contain control characters"#]
        );
        assert_eq!(check(r#"{type: HTTP, host: "web\x7f"}"#).len(), 1);
        assert!(check(r#"{type: HTTP, path: "/h?q=%0d%0a", host: "web.example:8080"}"#).is_empty());
    }

    #[test]
    fn advert_intervals_are_whole_centiseconds() {
        let vrrp = |interval: u32| {
            error_texts(&format!(
                "{{vip: 192.168.16.100, port: 80, failover: {{vrrp: {{virtualRouterId: 1, advertIntervalMs: {interval}}}}}, realServers: [{{address: 192.168.16.21}}]}}"
            ))
        };
        assert!(vrrp(10).is_empty() && vrrp(1000).is_empty() && vrrp(40950).is_empty());
        assert_eq!(
            vrrp(1005),
            [
                "spec.failover.vrrp.advertIntervalMs: 1005: must be a multiple of 10 (VRRPv3 counts in centiseconds)"
            ]
        );
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let errors = validate(&spec(
            "{vip: 10.0.0.300, port: 0, onePacket: true, tunnel: {}, realServers: [{address: 10.0.0.1, port: 8080}]}",
        ))
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.vip", "spec.port", "spec.onePacket", "spec.realServers[0].port", "spec.tunnel"]
        );
    }

    #[test]
    fn fwmark_services_take_the_real_servers_family() {
        assert_eq!(
            spec("{fwmark: 1, realServers: [{address: '2001:db8::1'}]}").family(),
            AddressFamily::IPv6
        );
        assert_eq!(spec("{fwmark: 1, sorryServer: {address: 10.0.0.1}}").family(), AddressFamily::IPv4);
    }
}
