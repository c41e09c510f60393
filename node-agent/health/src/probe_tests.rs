//! Probes against real listeners on 127.0.0.1.

use std::sync::Arc;

use pretty_assertions::assert_eq;
use rustls::{
    ServerConfig,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use tokio_rustls::TlsAcceptor;

use super::*;

pub(crate) fn check(kind: CheckKind) -> HealthCheck {
    HealthCheck {
        kind,
        path: None,
        host: None,
        port: None,
        expected_status: None,
        body_contains: None,
        payload: None,
        interval_seconds: 1,
        timeout_seconds: 1,
        rise: 2,
        fall: 3,
    }
}

/// An address nothing listens on (a port just released).
fn closed_tcp_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Reads an HTTP request head from `stream`.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while find(&request, b"\r\n\r\n").is_none() {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&request).into_owned()
}

/// A one-response-per-connection HTTP server sending `response` (raw bytes);
/// the requests it received come out of the receiver.
async fn http_server(response: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let request = read_request(&mut stream).await;
                let _ = tx.send(request);
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (address, rx)
}

fn http_check() -> HealthCheck {
    check(CheckKind::Http)
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nall is well\n";

#[tokio::test]
async fn none_always_passes() {
    let probe = Probe::new(&check(CheckKind::None), closed_tcp_port());
    assert_eq!(probe.run().await, Ok(()));
}

#[tokio::test]
async fn tcp_connect_up_and_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    assert_eq!(Probe::new(&check(CheckKind::Tcp), up).run().await, Ok(()));

    drop(listener);
    let failure = Probe::new(&check(CheckKind::Tcp), up).run().await.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Refused);
    assert_eq!(failure.reason, format!("connect {up}: connection refused"));
}

#[tokio::test]
async fn check_port_overrides_the_destination_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let destination = closed_tcp_port();
    let check = HealthCheck { port: Some(port), ..check(CheckKind::Tcp) };
    let probe = Probe::new(&check, destination);
    assert_eq!(probe.address(), SocketAddr::new(destination.ip(), port));
    assert_eq!(probe.run().await, Ok(()));
}

#[tokio::test]
async fn http_request_and_status_match() {
    let (address, mut requests) = http_server(OK).await;
    let check = HealthCheck { path: Some("/health?x=1".into()), ..http_check() };
    assert_eq!(Probe::new(&check, address).run().await, Ok(()));
    assert_eq!(
        requests.recv().await.unwrap(),
        format!(
            "GET /health?x=1 HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: lvs-agent\r\n\r\n"
        )
    );
}

#[tokio::test]
async fn http_host_header_from_the_check() {
    let (address, mut requests) = http_server(OK).await;
    let check = HealthCheck { host: Some("www.example.com".into()), ..http_check() };
    assert_eq!(Probe::new(&check, address).run().await, Ok(()));
    let request = requests.recv().await.unwrap();
    assert!(request.starts_with("GET / HTTP/1.1\r\nHost: www.example.com\r\n"), "{request}");
}

#[tokio::test]
async fn http_status_mismatch() {
    let (address, _requests) =
        http_server("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
    let failure = Probe::new(&http_check(), address).run().await.unwrap_err();
    assert_eq!(failure, ProbeFailure::new(FailureKind::Status, "HTTP status 503 not in 200-399"));

    let listed = HealthCheck { expected_status: Some(vec![200, 204]), ..http_check() };
    let failure = Probe::new(&listed, address).run().await.unwrap_err();
    assert_eq!(failure.reason, "HTTP status 503 not in 200,204");

    let expected = HealthCheck { expected_status: Some(vec![503]), ..http_check() };
    assert_eq!(Probe::new(&expected, address).run().await, Ok(()));
}

#[tokio::test]
async fn http_redirect_is_healthy_by_default_but_500_is_not() {
    let (address, _r) = http_server("HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n").await;
    assert_eq!(Probe::new(&http_check(), address).run().await, Ok(()));
    let (address, _r) = http_server("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
    assert_eq!(Probe::new(&http_check(), address).run().await.unwrap_err().kind, FailureKind::Status);
}

#[tokio::test]
async fn http_body_substring() {
    let (address, _requests) = http_server(OK).await;
    let found = HealthCheck { body_contains: Some("is well".into()), ..http_check() };
    assert_eq!(Probe::new(&found, address).run().await, Ok(()));

    let missing = HealthCheck { body_contains: Some("database: ok".into()), ..http_check() };
    let failure = Probe::new(&missing, address).run().await.unwrap_err();
    assert_eq!(failure, ProbeFailure::new(FailureKind::Body, r#"HTTP body does not contain "database: ok""#));

    // Only the body counts, not the headers.
    let in_header = HealthCheck { body_contains: Some("Connection".into()), ..http_check() };
    assert_eq!(Probe::new(&in_header, address).run().await.unwrap_err().kind, FailureKind::Body);
}

#[tokio::test]
async fn http_body_substring_across_chunks() {
    let (address, _requests) = http_server(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nstatus:\r\n3\r\n up\r\n0\r\n\r\n",
    )
    .await;
    let check = HealthCheck { body_contains: Some("status: up".into()), ..http_check() };
    assert_eq!(Probe::new(&check, address).run().await, Ok(()));
}

#[tokio::test]
async fn http_not_http_and_no_answer() {
    let (address, _r) = http_server("SSH-2.0-OpenSSH_9.2\r\n").await;
    let failure = Probe::new(&http_check(), address).run().await.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Protocol);
    assert_eq!(failure.reason, format!(r#"HTTP {address}: bad status line "SSH-2.0-OpenSSH_9.2""#));

    let (address, _r) = http_server("").await;
    let failure = Probe::new(&http_check(), address).run().await.unwrap_err();
    assert_eq!(failure.reason, format!("HTTP {address}: connection closed without a response"));
}

#[tokio::test]
async fn http_timeout_when_the_server_never_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Accepted by the kernel (backlog), never answered.
    let probe = Probe::new(&http_check(), address).with_timeout(Duration::from_millis(200));
    let failure = probe.run().await.unwrap_err();
    assert_eq!(failure, ProbeFailure::new(FailureKind::Timeout, "timeout after 200 ms"));
    drop(listener);
}

#[tokio::test]
async fn http_stops_reading_after_the_status_line() {
    // The server sends the status line and then nothing, keeping the
    // connection open: without bodyContains the probe needs nothing more.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        stream.write_all(b"HTTP/1.1 204 No Content\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    assert_eq!(Probe::new(&http_check(), address).run().await, Ok(()));
}

/// An HTTPS server with a self-signed certificate for `localhost`; each
/// connection's SNI (None without) and request come out of the receiver.
async fn https_server(
    response: &'static str,
) -> (SocketAddr, mpsc::UnboundedReceiver<(Option<String>, String)>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else { return };
                let sni = stream.get_ref().1.server_name().map(str::to_owned);
                let request = read_request(&mut stream).await;
                let _ = tx.send((sni, request));
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (address, rx)
}

#[tokio::test]
async fn https_accepts_a_self_signed_certificate() {
    let (address, mut requests) = https_server(OK).await;
    let named = HealthCheck {
        host: Some("www.example.com".into()),
        body_contains: Some("well".into()),
        ..check(CheckKind::Https)
    };
    assert_eq!(Probe::new(&named, address).run().await, Ok(()));
    let (sni, request) = requests.recv().await.unwrap();
    // The certificate is for localhost: the name does not matter either.
    assert_eq!(sni.as_deref(), Some("www.example.com"));
    assert!(request.starts_with("GET / HTTP/1.1\r\nHost: www.example.com\r\n"), "{request}");

    // No host: no SNI (an IP address), Host is the address.
    assert_eq!(Probe::new(&check(CheckKind::Https), address).run().await, Ok(()));
    let (sni, request) = requests.recv().await.unwrap();
    assert_eq!(sni, None);
    assert!(request.contains(&format!("\r\nHost: {address}\r\n")), "{request}");
}

#[tokio::test]
async fn https_status_mismatch_and_plain_http_server() {
    let (address, _r) = https_server("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
    let failure = Probe::new(&check(CheckKind::Https), address).run().await.unwrap_err();
    assert_eq!(failure.reason, "HTTP status 404 not in 200-399");

    // A plain HTTP server answers the ClientHello with a 400.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 16];
        let _ = stream.read(&mut hello).await;
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n").await;
    });
    let failure = Probe::new(&check(CheckKind::Https), address).run().await.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Tls, "{failure}");
    assert!(failure.reason.starts_with(&format!("TLS handshake with {address}: ")), "{failure}");
}

#[tokio::test]
async fn udp_echo_silence_and_closed_port() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap();
    let check = HealthCheck { payload: Some("ping".into()), ..check(CheckKind::Udp) };
    let probe = Probe::new(&check, address).with_timeout(Duration::from_millis(300));

    // Silence: the datagram arrives, nobody answers.
    let (failure, received) = tokio::join!(probe.run(), async {
        let mut buf = [0u8; 16];
        let (n, _) = server.recv_from(&mut buf).await.unwrap();
        buf[..n].to_vec()
    });
    assert_eq!(failure, Err(ProbeFailure::new(FailureKind::Timeout, "timeout after 300 ms")));
    assert_eq!(received, b"ping");

    // Echo.
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        server.send_to(&buf[..n], from).await.unwrap();
        server
    });
    assert_eq!(probe.run().await, Ok(()));

    // Closed: ICMP port unreachable.
    drop(echo.await.unwrap());
    let failure = probe.run().await.unwrap_err();
    assert_eq!(failure, ProbeFailure::new(FailureKind::Refused, format!("udp {address}: port unreachable")));
}

#[tokio::test]
async fn udp_default_payload_is_empty() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap();
    let probe = Probe::new(&check(CheckKind::Udp), address);
    let (result, ()) = tokio::join!(probe.run(), async {
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(n, 0);
        server.send_to(b"", from).await.unwrap();
    });
    assert_eq!(result, Ok(()));
}

#[test]
fn status_lines() {
    assert_eq!(status_code(b"HTTP/1.1 200 OK"), Some(200));
    assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable\r"), Some(503));
    assert_eq!(status_code(b"HTTP/2 204"), Some(204));
    assert_eq!(status_code(b"HTTP/1.1 2000 OK"), None);
    assert_eq!(status_code(b"HTTP/1.1 20"), None);
    assert_eq!(status_code(b"HTTP/1.1 abc OK"), None);
    assert_eq!(status_code(b"SSH-2.0 200"), None);
}

#[test]
fn body_search() {
    // Fed the response after its status line, in one piece or byte by byte.
    fn search(response: &str, needle: &str) -> Option<bool> {
        let whole = BodySearch::new(needle.as_bytes()).feed(response.as_bytes());
        let mut bytewise = BodySearch::new(needle.as_bytes());
        let mut found = None;
        for byte in response.as_bytes() {
            found = bytewise.feed(std::slice::from_ref(byte));
            if found.is_some() {
                break;
            }
        }
        assert_eq!(whole, found, "{response:?}");
        whole
    }
    let head = "Content-Length: 5\r\n\r\n";
    assert_eq!(search(&format!("{head}hel"), "hello"), None);
    assert_eq!(search(&format!("{head}hello"), "hello"), Some(true));
    assert_eq!(search(&format!("{head}world"), "hello"), Some(false));
    assert_eq!(search(&format!("{head}worldhello"), "hello"), Some(false));
    assert_eq!(search("X: y\r\n\r\nabc", "zz"), None);
    assert_eq!(search("X: y", "zz"), None);
    assert_eq!(search("X: hello\r\n\r\n", "hello"), None);
    let chunked = "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n";
    assert_eq!(search(chunked, "abcde"), Some(true));
    assert_eq!(search(chunked, "zz"), Some(false));
    assert_eq!(search(chunked, "2;x"), Some(false));
    assert_eq!(search("Transfer-Encoding: chunked\r\n\r\n3\r\nab", "ab"), Some(true));
    assert_eq!(search("Transfer-Encoding: chunked\r\n\r\n3\r\nab", "abc"), None);
}

#[test]
fn a_search_holds_a_bounded_amount_of_any_response() {
    let needle = vec![b'y'; 1024];
    let endless_line = vec![b'h'; 100_000];
    let endless_body = vec![b'x'; 100_000];
    let chunk = format!("{:x}\r\n", endless_body.len());
    let responses: [&[&[u8]]; 3] = [
        &[b"X-Long: ", &endless_line],
        &[b"Content-Length: 999999999\r\n\r\n", &endless_body, &endless_body],
        &[b"Transfer-Encoding: chunked\r\n\r\n", chunk.as_bytes(), &endless_body, b"\r\n", &endless_line],
    ];
    for parts in responses {
        for size in [1, 1000, READ_BUFFER, 70_000] {
            let mut search = BodySearch::new(&needle);
            for part in parts {
                for piece in part.chunks(size) {
                    assert_eq!(search.feed(piece), None);
                    assert!(search.held() <= MAX_HELD - READ_BUFFER, "holds {} bytes", search.held());
                }
            }
        }
    }
}

/// A server that sends a status line and headers, then body bytes forever;
/// it records how much the client asked for at once and in all.
struct EndlessBody {
    head: &'static [u8],
    sent: usize,
    largest_read: usize,
}

impl AsyncRead for EndlessBody {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.largest_read = self.largest_read.max(buf.remaining());
        let n = buf.remaining().min(1500);
        let head = self.head.get(self.sent..).unwrap_or_default();
        let bytes: Vec<u8> = head.iter().copied().chain(std::iter::repeat(b'x')).take(n).collect();
        buf.put_slice(&bytes);
        self.sent += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EndlessBody {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn an_endless_body_is_read_a_buffer_at_a_time_and_no_further_than_the_limit() {
    let address: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let check = HealthCheck { body_contains: Some("database: ok".into()), ..http_check() };
    let http = Http::new(&check, address).unwrap();
    let mut server = EndlessBody { head: b"HTTP/1.1 200 OK\r\n\r\n", sent: 0, largest_read: 0 };
    let failure = http.exchange(&mut server, address).await.unwrap_err();
    assert_eq!(failure.reason, r#"HTTP body does not contain "database: ok" (in its first 64 KiB)"#);
    assert!(server.sent <= MAX_RESPONSE, "read {} bytes", server.sent);
    assert!(server.largest_read <= READ_BUFFER, "read {} bytes at once", server.largest_read);

    // Without bodyContains, an endless status line: at most one line is read.
    let mut server = EndlessBody { head: b"HTTP/1.1 200 ", sent: 0, largest_read: 0 };
    let failure =
        Http::new(&http_check(), address).unwrap().exchange(&mut server, address).await.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Protocol);
    assert!(server.sent <= MAX_LINE, "read {} bytes", server.sent);
}

#[tokio::test]
async fn http_refuses_to_send_control_characters_in_path_or_host() {
    let (address, mut requests) = http_server(OK).await;
    let checks = [
        HealthCheck { path: Some("/health\r\nX-Injected: 1".into()), ..http_check() },
        HealthCheck { path: Some("/health HTTP/1.0".into()), ..http_check() },
        HealthCheck { host: Some("web\nX-Injected: 1".into()), ..check(CheckKind::Https) },
        HealthCheck { host: Some("web\x7f".into()), ..http_check() },
    ];
    for check in checks {
        let failure = Probe::new(&check, address).run().await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Protocol);
        assert!(failure.reason.contains("refusing to send"), "{}", failure.reason);
    }
    assert!(requests.try_recv().is_err(), "a request reached the server");
    // A query and percent-escapes are fine.
    let fine = HealthCheck { path: Some("/health?x=%0d%0a".into()), ..http_check() };
    assert_eq!(Probe::new(&fine, address).run().await, Ok(()));
}

#[test]
fn short_io_errors() {
    let refused = io::Error::from_raw_os_error(111);
    assert_eq!(short(&refused), "connection refused");
    assert_eq!(short(&io::Error::other("Boom")), "boom");
}
