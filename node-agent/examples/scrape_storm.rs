//! A storm of concurrent `/metrics` scrapes, for tests/chaos.
//!
//!   scrape_storm ADDRESS SCRAPERS SECONDS [PAUSE_S]
//!
//! SCRAPERS threads each scrape `http://ADDRESS/metrics` in a loop (a new
//! connection each time, as Prometheus does after an idle period) for SECONDS,
//! pausing PAUSE_S (default 0) after each answer: SCRAPERS clients at once,
//! without the storm's own CPU drowning the agent under test.
//! Prints `STORM key value` lines: scrapes served (200), refused (503), other
//! answers, failures (no connection, no answer within 60 s), the largest body,
//! and the median and slowest scrape in seconds.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// One scrape: the status code (0 when there was no answer) and body size.
fn scrape(address: SocketAddr) -> (u16, usize) {
    let attempt = || -> std::io::Result<(u16, usize)> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let status = response.get(9..12).and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()).unwrap_or(0);
        let body =
            response.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |head| response.len() - head - 4);
        Ok((status, body))
    };
    attempt().unwrap_or((0, 0))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, scrapers, seconds, rest @ ..] = &args[..] else {
        panic!("usage: scrape_storm ADDRESS SCRAPERS SECONDS [PAUSE_S]")
    };
    let pause = Duration::from_secs_f64(rest.first().map_or(0.0, |p| p.parse().expect("PAUSE_S")));
    let address: SocketAddr = address.parse().expect("ADDRESS");
    let scrapers: usize = scrapers.parse().expect("SCRAPERS");
    let until = Instant::now() + Duration::from_secs(seconds.parse().expect("SECONDS"));
    let threads: Vec<_> = (0..scrapers)
        .map(|_| {
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while Instant::now() < until {
                    let start = Instant::now();
                    let (status, body) = scrape(address);
                    answers.push((status, body, start.elapsed()));
                    std::thread::sleep(pause);
                }
                answers
            })
        })
        .collect();
    let mut answers: Vec<_> = threads.into_iter().flat_map(|t| t.join().expect("a scraper")).collect();
    let count = |f: &dyn Fn(u16) -> bool| answers.iter().filter(|(s, ..)| f(*s)).count();
    println!("STORM scrapes {}", answers.len());
    println!("STORM served {}", count(&|s| s == 200));
    println!("STORM refused {}", count(&|s| s == 503));
    println!("STORM other {}", count(&|s| s != 200 && s != 503 && s != 0));
    println!("STORM failed {}", count(&|s| s == 0));
    println!("STORM largest-body {}", answers.iter().map(|(_, b, _)| *b).max().unwrap_or(0));
    answers.sort_by_key(|(.., took)| *took);
    let took = |i: usize| answers.get(i).map_or(0.0, |(.., t)| t.as_secs_f64());
    println!("STORM median-seconds {:.3}", took(answers.len() / 2));
    println!("STORM slowest-seconds {:.3}", took(answers.len().saturating_sub(1)));
}
