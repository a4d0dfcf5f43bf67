//! A fault-injecting HTTP proxy in front of the S3 test server, on
//! 127.0.0.1 only. Each request gets its own upstream connection (the
//! proxy asks for `Connection: close`), so every request is a fresh
//! decision: pass, answer 500 or 503 (S3's own error XML), drop the
//! connection without an answer (what a reset looks like to a client), or
//! stall before passing it on. Decisions come from a seeded RNG; at least
//! `rate` of all requests are faulted while faults are on, and the number
//! of faults and the lifetime of every connection are bounded. One request
//! (method and target) is faulted at most `MAX_STREAK` times in a row: drctl
//! makes 6 attempts, and a test of its retries must not fail on the 1 in
//! 10,000 requests a 30% rate would fault six times running.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Status500,
    Status503,
    Reset,
    Stall,
}

const KINDS: [Fault; 4] = [
    Fault::Status500,
    Fault::Status503,
    Fault::Reset,
    Fault::Stall,
];

/// Most faults one proxy injects, however long a test runs.
const MAX_FAULTS: u64 = 2000;

/// Most faults in a row for one request.
const MAX_STREAK: u32 = 3;

struct Shared {
    upstream: u16,
    rate_per_mille: AtomicU64,
    stall: Duration,
    rng: Mutex<rand::rngs::StdRng>,
    requests: AtomicU64,
    faulted_requests: AtomicU64,
    counted: Mutex<std::collections::BTreeMap<Fault, u64>>,
    /// Faults in a row, by request line.
    streaks: Mutex<std::collections::HashMap<String, u32>>,
    stop: AtomicBool,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Forwards to `upstream` on 127.0.0.1; faults start off.
    pub fn start(upstream: u16, seed: u64, stall: Duration) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            rate_per_mille: AtomicU64::new(0),
            stall,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            requests: AtomicU64::new(0),
            faulted_requests: AtomicU64::new(0),
            counted: Mutex::new(Default::default()),
            streaks: Mutex::new(Default::default()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(conn, &s));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Fault this share of requests from now on (0 turns faults off).
    pub fn set_rate(&self, rate: f64) {
        self.shared
            .rate_per_mille
            .store((rate * 1000.0) as u64, Ordering::Relaxed);
        self.shared.requests.store(0, Ordering::Relaxed);
        self.shared.faulted_requests.store(0, Ordering::Relaxed);
    }

    /// (requests, faulted) since the last `set_rate`.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.requests.load(Ordering::Relaxed),
            self.shared.faulted_requests.load(Ordering::Relaxed),
        )
    }

    /// Faults injected by kind, over the proxy's life.
    pub fn by_kind(&self) -> Vec<(Fault, u64)> {
        let m = self.shared.counted.lock().unwrap();
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn decide(s: &Shared, head: &str) -> Option<Fault> {
    let n = s.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let rate = s.rate_per_mille.load(Ordering::Relaxed);
    if rate == 0 {
        return None;
    }
    let line = head.lines().next().unwrap_or_default().to_string();
    let mut streaks = s.streaks.lock().unwrap();
    let streak = streaks.entry(line.clone()).or_default();
    if *streak >= MAX_STREAK {
        streaks.remove(&line);
        return None;
    }
    let fault = decide_at(s, n, rate);
    match fault {
        Some(_) => *streaks.get_mut(&line).unwrap() += 1,
        None => {
            streaks.remove(&line);
        }
    }
    fault
}

fn decide_at(s: &Shared, n: u64, rate: u64) -> Option<Fault> {
    let total: u64 = s.counted.lock().unwrap().values().sum();
    if total >= MAX_FAULTS {
        return None;
    }
    let mut rng = s.rng.lock().unwrap();
    let faulted = s.faulted_requests.load(Ordering::Relaxed);
    // Random, and never below the rate: behind it, the next one is faulted.
    let hit = rng.random_range(0..1000) < rate || faulted * 1000 < rate * n;
    if !hit {
        return None;
    }
    let kind = KINDS[rng.random_range(0..KINDS.len())];
    drop(rng);
    s.faulted_requests.fetch_add(1, Ordering::Relaxed);
    *s.counted.lock().unwrap().entry(kind).or_default() += 1;
    Some(kind)
}

/// The request head (through the blank line) and whatever body bytes came
/// with it.
fn read_head(c: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 64 << 10 {
            return None;
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &str) -> u64 {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn serve(mut client: TcpStream, s: &Shared) {
    // Bounded: no connection of a test outlives these.
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = client.set_write_timeout(Some(Duration::from_secs(60)));
    let Some((head, early)) = read_head(&mut client) else {
        return;
    };
    match decide(s, &head) {
        Some(kind @ (Fault::Status500 | Fault::Status503)) => {
            // Read the body first, so the client sees an answer, not a reset.
            let mut left = content_length(&head).saturating_sub(early.len() as u64);
            let mut sink = [0u8; 65536];
            while left > 0 {
                match client.read(&mut sink[..left.min(65536) as usize]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left -= n as u64,
                }
            }
            let (status, code) = if kind == Fault::Status500 {
                ("500 Internal Server Error", "InternalError")
            } else {
                ("503 Slow Down", "SlowDown")
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
            );
            let _ = write!(
                client,
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::Reset) => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::Stall) => {
            std::thread::sleep(s.stall);
            pass(client, s, &head, &early);
        }
        None => pass(client, s, &head, &early),
    }
}

fn pass(mut client: TcpStream, s: &Shared, head: &str, early: &[u8]) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", s.upstream)) else {
        return;
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(60)));
    let mut out = String::new();
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if up.write_all(out.as_bytes()).is_err() || up.write_all(early).is_err() {
        return;
    }
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let body = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
    });
    let _ = std::io::copy(&mut up, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = body.join();
}
