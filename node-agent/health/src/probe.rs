//! One health check of one real server, as an async function on tokio.
//!
//! A [`Probe`] is built once per target (request bytes, TLS settings, expected
//! status codes) and run every interval; each run is bounded by the check's
//! `timeoutSeconds` and ends with success or a [`ProbeFailure`] that says why
//! in a few words.

use std::{
    fmt, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, OnceLock},
    time::Duration,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};
use tokio_rustls::TlsConnector;

use crate::{CheckKind, HealthCheck};

/// Most bytes of an HTTP response read to find the status line and the
/// `bodyContains` text.
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;

/// Why a check failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// No result within `timeoutSeconds`.
    Timeout,
    /// TCP reset on connect, or ICMP port unreachable for UDP.
    Refused,
    /// Any other connect error (no route, host unreachable, ...).
    Connect,
    /// Error while sending or receiving on an established connection.
    Io,
    /// TLS handshake failed.
    Tls,
    /// Not an HTTP response, or closed before the status line.
    Protocol,
    /// HTTP status not among the expected ones.
    Status,
    /// The body does not contain the `bodyContains` text.
    Body,
}

impl FailureKind {
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Timeout,
        FailureKind::Refused,
        FailureKind::Connect,
        FailureKind::Io,
        FailureKind::Tls,
        FailureKind::Protocol,
        FailureKind::Status,
        FailureKind::Body,
    ];

    /// Lower-case name, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Connect => "connect",
            FailureKind::Io => "io",
            FailureKind::Tls => "tls",
            FailureKind::Protocol => "protocol",
            FailureKind::Status => "status",
            FailureKind::Body => "body",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A failed check: its kind and a short reason for status and logs, e.g.
/// `connect 10.0.0.1:80: connection refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub kind: FailureKind,
    pub reason: String,
}

impl ProbeFailure {
    fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into() }
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A prepared check of one address.
#[derive(Debug, Clone)]
pub struct Probe {
    address: SocketAddr,
    timeout: Duration,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    None,
    Tcp,
    Http(Arc<Http>),
    Https(Arc<Http>, Arc<Tls>),
    Udp(Box<[u8]>),
}

#[derive(Debug)]
struct Http {
    request: Box<[u8]>,
    expected: Expected,
    body_contains: Option<Box<[u8]>>,
}

struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The HTTP status codes that count as healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// 200-399, the API's default.
    Default,
    Codes(Box<[u16]>),
}

impl Expected {
    fn contains(&self, code: u16) -> bool {
        match self {
            Expected::Default => (200..=399).contains(&code),
            Expected::Codes(codes) => codes.contains(&code),
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Default => f.write_str("200-399"),
            Expected::Codes(codes) => {
                for (i, code) in codes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{code}")?;
                }
                Ok(())
            }
        }
    }
}

impl Probe {
    /// The check `check` of the real server `destination`: the probe goes to
    /// `check.port`, else to the destination's port.
    pub fn new(check: &HealthCheck, destination: SocketAddr) -> Self {
        let address = SocketAddr::new(destination.ip(), check.port.unwrap_or(destination.port()));
        let kind = match check.kind {
            CheckKind::None => Kind::None,
            CheckKind::Tcp => Kind::Tcp,
            CheckKind::Http => Kind::Http(Arc::new(Http::new(check, address))),
            CheckKind::Https => {
                let name = check
                    .host
                    .as_deref()
                    .and_then(|host| ServerName::try_from(host).ok())
                    .map(|name| name.to_owned())
                    .unwrap_or(ServerName::IpAddress(address.ip().into()));
                let tls = Tls { connector: tls_connector(), name };
                Kind::Https(Arc::new(Http::new(check, address)), Arc::new(tls))
            }
            CheckKind::Udp => Kind::Udp(check.payload.as_deref().unwrap_or("").as_bytes().into()),
        };
        Self { address, timeout: Duration::from_secs(check.timeout_seconds.max(1).into()), kind }
    }

    /// Where the probe goes.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The same probe with another time limit.
    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the check once.
    pub async fn run(&self) -> Result<(), ProbeFailure> {
        match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(result) => result,
            Err(_) => {
                Err(ProbeFailure::new(FailureKind::Timeout, format!("timeout after {}", Secs(self.timeout))))
            }
        }
    }

    async fn attempt(&self) -> Result<(), ProbeFailure> {
        match &self.kind {
            Kind::None => Ok(()),
            Kind::Tcp => self.connect().await.map(drop),
            Kind::Http(http) => {
                let mut stream = self.connect().await?;
                http.exchange(&mut stream, self.address).await
            }
            Kind::Https(http, tls) => {
                let stream = self.connect().await?;
                let mut stream = tls.connector.connect(tls.name.clone(), stream).await.map_err(|e| {
                    ProbeFailure::new(
                        FailureKind::Tls,
                        format!("TLS handshake with {}: {}", self.address, short(&e)),
                    )
                })?;
                http.exchange(&mut stream, self.address).await
            }
            Kind::Udp(payload) => self.udp(payload).await,
        }
    }

    /// Connects with `SO_LINGER` 0: once the check has its answer, closing
    /// the stream resets the connection instead of the FIN exchange, as
    /// HAProxy's checks do. Thousands of checks per second would otherwise
    /// leave a TIME_WAIT socket each, on the director (TCP checks, which
    /// close first) or on the real server, for a minute (300,000 at 5,000
    /// checks per second, beyond the kernel's default table), and the FIN
    /// exchange costs both sides packets. A zero linger never blocks.
    async fn connect(&self) -> Result<TcpStream, ProbeFailure> {
        let stream = TcpStream::connect(self.address).await.map_err(|e| {
            let kind = match e.kind() {
                io::ErrorKind::ConnectionRefused => FailureKind::Refused,
                _ => FailureKind::Connect,
            };
            ProbeFailure::new(kind, format!("connect {}: {}", self.address, short(&e)))
        })?;
        // Best effort: without it the close is a FIN.
        let _ = stream.set_zero_linger();
        Ok(stream)
    }

    /// Sends the payload from a connected socket: any reply is success; an
    /// ICMP port unreachable comes back as ECONNREFUSED on the receive.
    async fn udp(&self, payload: &[u8]) -> Result<(), ProbeFailure> {
        let local: SocketAddr = match self.address {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let fail = |e: io::Error| {
            let (kind, what) = match e.kind() {
                io::ErrorKind::ConnectionRefused => (FailureKind::Refused, "port unreachable".to_owned()),
                _ => (FailureKind::Io, short(&e)),
            };
            ProbeFailure::new(kind, format!("udp {}: {what}", self.address))
        };
        let socket = UdpSocket::bind(local).await.map_err(fail)?;
        socket.connect(self.address).await.map_err(fail)?;
        socket.send(payload).await.map_err(fail)?;
        // A longer reply is truncated, which is fine: any reply will do.
        let mut reply = [0u8; 64];
        socket.recv(&mut reply).await.map_err(fail)?;
        Ok(())
    }
}

impl Http {
    fn new(check: &HealthCheck, address: SocketAddr) -> Self {
        let path = check.path.as_deref().unwrap_or("/");
        let host = match &check.host {
            Some(host) => host.clone(),
            None => address.to_string(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lvs-agent\r\n\r\n"
        );
        let expected = match &check.expected_status {
            Some(codes) if !codes.is_empty() => Expected::Codes(codes.as_slice().into()),
            _ => Expected::Default,
        };
        Self {
            request: request.into_bytes().into(),
            expected,
            body_contains: check.body_contains.as_ref().map(|text| text.as_bytes().into()),
        }
    }

    /// Sends the request and reads the response as far as needed: the status
    /// line, and with `bodyContains` the body up to [`MAX_RESPONSE`] bytes of
    /// response.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        address: SocketAddr,
    ) -> Result<(), ProbeFailure> {
        let io_failure =
            |e: io::Error| ProbeFailure::new(FailureKind::Io, format!("HTTP {address}: {}", short(&e)));
        stream.write_all(&self.request).await.map_err(io_failure)?;
        stream.flush().await.map_err(io_failure)?;

        let mut response = Vec::with_capacity(if self.body_contains.is_some() { 4096 } else { 512 });
        let mut eof = false;
        let mut status = None;
        loop {
            if !eof && response.len() < MAX_RESPONSE {
                let before = response.len();
                response.reserve((before.max(512)).min(MAX_RESPONSE - before));
                let limit = MAX_RESPONSE - before;
                match (&mut *stream).take(limit as u64).read_buf(&mut response).await {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    // TLS peers that close without close_notify, once a response came.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => eof = true,
                    // The status was fine: the body is judged on what came.
                    Err(_) if status.is_some() => eof = true,
                    Err(e) => return Err(io_failure(e)),
                }
            }
            let done = eof || response.len() >= MAX_RESPONSE;
            if status.is_none() {
                let Some(end) = find(&response, b"\r\n").or_else(|| find(&response, b"\n")) else {
                    if done {
                        return Err(ProbeFailure::new(
                            FailureKind::Protocol,
                            match response.is_empty() {
                                true => format!("HTTP {address}: connection closed without a response"),
                                false => format!("HTTP {address}: no status line in {}", quote(&response)),
                            },
                        ));
                    }
                    continue;
                };
                let code = status_code(&response[..end]).ok_or_else(|| {
                    ProbeFailure::new(
                        FailureKind::Protocol,
                        format!("HTTP {address}: bad status line {}", quote(&response[..end])),
                    )
                })?;
                if !self.expected.contains(code) {
                    return Err(ProbeFailure::new(
                        FailureKind::Status,
                        format!("HTTP status {code} not in {}", self.expected),
                    ));
                }
                status = Some(code);
            }
            let Some(needle) = &self.body_contains else { return Ok(()) };
            if let Some(found) = body_contains(&response, needle, done) {
                return match found {
                    true => Ok(()),
                    false => Err(ProbeFailure::new(
                        FailureKind::Body,
                        format!(
                            "HTTP body does not contain {}{}",
                            quote(needle),
                            if response.len() >= MAX_RESPONSE { " (in its first 64 KiB)" } else { "" }
                        ),
                    )),
                };
            }
        }
    }
}

/// Whether the body of `response` contains `needle`: `None` while more of
/// the response may change the answer. A chunked body is decoded first, so
/// that a chunk boundary cannot split the text.
fn body_contains(response: &[u8], needle: &[u8], complete: bool) -> Option<bool> {
    let Some(head_end) = find(response, b"\r\n\r\n").map(|i| i + 4) else {
        return if complete { Some(false) } else { None };
    };
    let head = &response[..head_end];
    let body = &response[head_end..];
    let chunked = head.split(|&b| b == b'\n').any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with(b"transfer-encoding:") && find(&line, b"chunked").is_some()
    });
    if chunked {
        let decoded = dechunk(body);
        if find(&decoded.0, needle).is_some() {
            return Some(true);
        }
        return if complete || decoded.1 { Some(false) } else { None };
    }
    if find(body, needle).is_some() {
        return Some(true);
    }
    let length = head.split(|&b| b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    if complete || length.is_some_and(|length| body.len() >= length) { Some(false) } else { None }
}

/// The data of a chunked body, as far as it came, and whether the last
/// chunk was seen.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::with_capacity(body.len());
    loop {
        let Some(line_end) = find(body, b"\r\n") else { return (data, false) };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else { return (data, false) };
        if size == 0 {
            return (data, true);
        }
        body = &body[line_end + 2..];
        let take = size.min(body.len());
        data.extend_from_slice(&body[..take]);
        if take < size || body.len() < size + 2 {
            return (data, false);
        }
        body = &body[size + 2..];
    }
}

/// The code of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let code = rest[space + 1..].get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(space + 4).is_some_and(|&b| !b" \r".contains(&b)) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// `bytes` as a short quoted string for a reason.
fn quote(bytes: &[u8]) -> String {
    const MAX: usize = 40;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let ellipsis = if bytes.len() > MAX { "..." } else { "" };
    format!("{:?}{ellipsis}", text.trim_end_matches(['\r', '\n']))
}

/// An IO error as a few lower-case words, without the `(os error N)` suffix.
fn short(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", error.kind()).to_lowercase(),
    }
}

/// A duration as `1 s` or `250 ms`.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

/// One TLS client configuration for every HTTPS probe of the process: it
/// accepts any server certificate, as keepalived's SSL_GET does. A health
/// check asks whether the server answers, not whether it is who it claims to
/// be; real servers are addressed by IP and commonly carry certificates for
/// the VIP's name, or self-signed ones.
fn tls_connector() -> TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let schemes = provider.signature_verification_algorithms.supported_schemes();
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { schemes }))
                .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// A certificate verifier that accepts every certificate and signature.
#[derive(Debug)]
struct AcceptAnyCertificate {
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

#[cfg(test)]
#[path = "probe_tests.rs"]
pub(crate) mod tests;
