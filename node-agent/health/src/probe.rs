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

/// Most bytes of an HTTP response read to find the `bodyContains` text. They
/// are scanned as they come, not kept: see [`MAX_HELD`].
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;

/// Bytes of one read from the server.
const READ_BUFFER: usize = 2 * 1024;

/// Most bytes of the status line, and of a header or chunk-size line kept
/// (the rest of a longer header line is skipped: the headers that matter,
/// Content-Length and Transfer-Encoding, are short).
const MAX_LINE: usize = 1024;

/// Most bytes of a response one probe holds at any time, whatever the server
/// sends (7 KiB): the read buffer, one line (the status line, then a header or
/// chunk-size line), and the search window (the text's length less one, the
/// text being at most 1024 bytes by the API) joined to the bytes just read.
/// 5,000 slow servers hold at most 5,000 times this (35 MiB), where each held
/// up to 64 KiB before. The tests check it; docs/architecture.md states it.
#[cfg(test)]
pub(crate) const MAX_HELD: usize = READ_BUFFER + MAX_LINE + 1024 + READ_BUFFER;

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
    /// A check whose request cannot be sent (a control character in the path
    /// or host): it fails every time, with this reason.
    Invalid(Arc<str>),
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
            CheckKind::Http | CheckKind::Https => match Http::new(check, address) {
                Err(reason) => Kind::Invalid(reason.into()),
                Ok(http) if check.kind == CheckKind::Http => Kind::Http(Arc::new(http)),
                Ok(http) => {
                    let name = check
                        .host
                        .as_deref()
                        .and_then(|host| ServerName::try_from(host).ok())
                        .map(|name| name.to_owned())
                        .unwrap_or(ServerName::IpAddress(address.ip().into()));
                    let tls = Tls { connector: tls_connector(), name };
                    Kind::Https(Arc::new(http), Arc::new(tls))
                }
            },
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
            Kind::Invalid(reason) => Err(ProbeFailure::new(FailureKind::Protocol, &**reason)),
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
    /// The request of `check`, or why it cannot be sent: the API refuses
    /// control characters in the path and host (and spaces in the path), and
    /// so does the probe, since one would split the request and let the value
    /// add headers or a second request.
    fn new(check: &HealthCheck, address: SocketAddr) -> Result<Self, String> {
        let path = check.path.as_deref().unwrap_or("/");
        if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(format!(
                "HTTP {address}: refusing to send path {path:?}: control character or space"
            ));
        }
        let host = match &check.host {
            Some(host) if host.chars().any(|c| c.is_ascii_control()) => {
                return Err(format!("HTTP {address}: refusing to send host {host:?}: control character"));
            }
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
        Ok(Self {
            request: request.into_bytes().into(),
            expected,
            body_contains: check.body_contains.as_ref().map(|text| text.as_bytes().into()),
        })
    }

    /// Sends the request and reads the response as far as needed: the status
    /// line, and with `bodyContains` the body as it streams in, up to
    /// [`MAX_RESPONSE`] bytes of response, holding at most [`MAX_HELD`].
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        address: SocketAddr,
    ) -> Result<(), ProbeFailure> {
        let io_failure =
            |e: io::Error| ProbeFailure::new(FailureKind::Io, format!("HTTP {address}: {}", short(&e)));
        stream.write_all(&self.request).await.map_err(io_failure)?;
        stream.flush().await.map_err(io_failure)?;

        let mut buffer = [0u8; READ_BUFFER];
        let mut read = 0; // bytes of the response read so far
        let (code, rest) = self.status_line(stream, &mut buffer, &mut read, address).await?;
        if !self.expected.contains(code) {
            return Err(ProbeFailure::new(
                FailureKind::Status,
                format!("HTTP status {code} not in {}", self.expected),
            ));
        }
        let Some(needle) = &self.body_contains else { return Ok(()) };

        let mut search = BodySearch::new(needle);
        let mut found = search.feed(&buffer[rest]);
        while found.is_none() && read < MAX_RESPONSE {
            let want = READ_BUFFER.min(MAX_RESPONSE - read);
            match stream.read(&mut buffer[..want]).await {
                // The status was fine: the body is judged on what came
                // (TLS peers also close without close_notify).
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    read += n;
                    found = search.feed(&buffer[..n]);
                }
            }
        }
        match found {
            Some(true) => Ok(()),
            _ => Err(ProbeFailure::new(
                FailureKind::Body,
                format!(
                    "HTTP body does not contain {}{}",
                    quote(needle),
                    if found.is_none() && read >= MAX_RESPONSE { " (in its first 64 KiB)" } else { "" }
                ),
            )),
        }
    }

    /// Reads the status line, at most [`MAX_LINE`] bytes: its code, and where
    /// the bytes after it are in `buffer`.
    async fn status_line<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        buffer: &mut [u8; READ_BUFFER],
        read: &mut usize,
        address: SocketAddr,
    ) -> Result<(u16, std::ops::Range<usize>), ProbeFailure> {
        let mut line = Vec::with_capacity(128);
        let rest = loop {
            let want = READ_BUFFER.min(MAX_LINE - line.len());
            let n = match stream.read(&mut buffer[..want]).await {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => {
                    return Err(ProbeFailure::new(FailureKind::Io, format!("HTTP {address}: {}", short(&e))));
                }
            };
            *read += n;
            let got = &buffer[..n];
            if let Some(end) = got.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&got[..end]);
                break end + 1..n;
            }
            line.extend_from_slice(got);
            if n == 0 || line.len() >= MAX_LINE {
                return Err(ProbeFailure::new(
                    FailureKind::Protocol,
                    match line.is_empty() {
                        true => format!("HTTP {address}: connection closed without a response"),
                        false => format!("HTTP {address}: no status line in {}", quote(&line)),
                    },
                ));
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let code = status_code(line).ok_or_else(|| {
            ProbeFailure::new(
                FailureKind::Protocol,
                format!("HTTP {address}: bad status line {}", quote(line)),
            )
        })?;
        Ok((code, rest))
    }
}

/// Looks for a text in an HTTP response's head and body as it streams in,
/// holding one line and the last bytes of the body that could start the text
/// (the body of a chunked response is decoded first, so that a chunk boundary
/// cannot split the text).
#[derive(Debug)]
pub(crate) struct BodySearch<'a> {
    needle: &'a [u8],
    part: Part,
    /// The header or chunk-size line being read, at most [`MAX_LINE`] bytes.
    line: Vec<u8>,
    chunked: bool,
    /// Body bytes still to come, by Content-Length.
    length: Option<usize>,
    /// The last `needle.len() - 1` bytes of body data.
    window: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Head,
    Body,
    ChunkSize,
    /// Data bytes of the chunk still to come.
    ChunkData(usize),
    /// Bytes of the CRLF after a chunk's data still to skip.
    ChunkEnd(usize),
    /// The body is complete.
    End,
}

impl<'a> BodySearch<'a> {
    /// A search of the response after its status line.
    pub(crate) fn new(needle: &'a [u8]) -> Self {
        // Both buffers get their full size once, and never grow beyond it.
        Self {
            needle,
            part: Part::Head,
            line: Vec::with_capacity(MAX_LINE),
            chunked: false,
            length: None,
            window: Vec::with_capacity(needle.len().saturating_sub(1) + READ_BUFFER),
        }
    }

    /// Takes the next bytes of the response: `Some(found)` once the answer is
    /// known, `None` while more of the response may change it.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Option<bool> {
        loop {
            if self.part == Part::End {
                return Some(false);
            }
            if bytes.is_empty() {
                return None;
            }
            match self.part {
                Part::Head | Part::ChunkSize => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        self.keep_line(bytes);
                        return None;
                    };
                    self.keep_line(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(line.strip_suffix(b"\r").unwrap_or(&line));
                    self.line = line;
                    self.line.clear();
                }
                Part::Body => {
                    let take = self.length.map_or(bytes.len(), |left| left.min(bytes.len()));
                    if self.search(&bytes[..take]) {
                        return Some(true);
                    }
                    bytes = &bytes[take..];
                    self.length = self.length.map(|left| left - take);
                    if self.length == Some(0) {
                        self.part = Part::End;
                    }
                }
                Part::ChunkData(left) => {
                    let take = left.min(bytes.len());
                    if self.search(&bytes[..take]) {
                        return Some(true);
                    }
                    bytes = &bytes[take..];
                    self.part = if take == left { Part::ChunkEnd(2) } else { Part::ChunkData(left - take) };
                }
                Part::ChunkEnd(left) => {
                    let take = left.min(bytes.len());
                    bytes = &bytes[take..];
                    self.part = if take == left { Part::ChunkSize } else { Part::ChunkEnd(left - take) };
                }
                Part::End => unreachable!("handled above"),
            }
        }
    }

    fn keep_line(&mut self, bytes: &[u8]) {
        let room = MAX_LINE - self.line.len();
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// A complete header or chunk-size line, without its line end.
    fn line_done(&mut self, line: &[u8]) {
        if self.part == Part::ChunkSize {
            let size = std::str::from_utf8(line)
                .ok()
                .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok());
            // The last chunk (size 0) or a broken one ends the body.
            self.part = match size {
                Some(size) if size > 0 => Part::ChunkData(size),
                _ => Part::End,
            };
            return;
        }
        if line.is_empty() {
            self.part = match (self.chunked, self.length) {
                (true, _) => Part::ChunkSize,
                (false, Some(0)) => Part::End,
                (false, _) => Part::Body,
            };
            return;
        }
        let Some((name, value)) = std::str::from_utf8(line).ok().and_then(|line| line.split_once(':')) else {
            return;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            self.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            self.length = value.trim().parse().ok();
        }
    }

    /// Whether the text ends within `data`, the body bytes that follow the
    /// window; `data` goes through the window a read buffer at a time.
    fn search(&mut self, data: &[u8]) -> bool {
        for piece in data.chunks(READ_BUFFER) {
            self.window.extend_from_slice(piece);
            if find(&self.window, self.needle).is_some() {
                return true;
            }
            let keep = self.needle.len().saturating_sub(1).min(self.window.len());
            self.window.drain(..self.window.len() - keep);
        }
        false
    }

    /// Bytes held: what [`MAX_HELD`] bounds, less the read buffer.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.line.capacity() + self.window.capacity()
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
