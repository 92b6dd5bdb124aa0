//! `tcpmon serve` over real HTTP (polling, so no privilege is needed): the endpoints, a
//! scrape storm, clients that never finish their request, and a stop during scrapes.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// A free loopback port (bound and released: another process could take it meanwhile,
/// which would make the test fail loudly, not pass wrongly).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
            .args(["serve", "--mode", "poll", "--interval", "200ms", "--listen"])
            .arg(addr.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let server = Self { child, addr };
        let started = Instant::now();
        while get(addr, "/healthz").0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "serve never became healthy"
            );
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` with `accept`; (status, headers, body). Status 0 when the connection failed.
fn request(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new(), String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: tcpmon\r\n{accept}Connection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return (0, String::new(), String::new());
    }
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = request(addr, path, None);
    (status, body)
}

#[test]
fn endpoints_answer_and_negotiate_the_format() {
    let server = Server::start(&[]);
    let (status, head, body) = request(server.addr, "/metrics", None);
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("tcpmon_connections{"), "{body}");
    // A counter, named by its sample in the Prometheus format (transitions may not have
    // happened yet, so a family that always has a sample).
    assert!(
        body.contains("# TYPE tcpmon_reconciliations_total counter"),
        "{body}"
    );
    assert!(!body.contains("# EOF"));
    let (status, head, body) = request(
        server.addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"));
    assert!(
        body.contains(r#"tcpmon_mode_info{mode="poll"} 1"#),
        "{body}"
    );
    let (status, body) = get(server.addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok: poll mode\n"));
    let (status, body) = get(server.addr, "/alerts");
    assert_eq!(status, 200);
    let alerts: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        alerts["schema_version"],
        tcpmon::live::record::SCHEMA_VERSION
    );
    assert!(alerts["alerts"].is_array());
    assert_eq!(get(server.addr, "/nope").0, 404);
}

#[test]
fn a_scrape_storm_gets_answers_and_leaves_memory_flat() {
    let server = Server::start(&[]);
    // Warm up (the first encodings, the allocator's arenas).
    for _ in 0..50 {
        assert_eq!(get(server.addr, "/metrics").0, 200);
    }
    let before = server.rss_kib();
    // 200 scrapes a second for 10 s: 20 threads, each 10 a second.
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (ok, failed, addr) = (Arc::clone(&ok), Arc::clone(&failed), server.addr);
            thread::spawn(move || {
                for i in 0..100u32 {
                    let due = started + Duration::from_millis(100) * i;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    match get(addr, "/metrics").0 {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = started.elapsed();
    let after = server.rss_kib();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(ok.load(Ordering::Relaxed), 2000);
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(
        after < before + 16 * 1024,
        "RSS {before} KiB before, {after} KiB after 2000 scrapes"
    );
    eprintln!("scrape storm: 2000 scrapes in {took:?}, RSS {before} -> {after} KiB");
}

#[test]
fn clients_that_never_finish_are_dropped_and_others_still_served() {
    let server = Server::start(&[]);
    // More idle connections than the server serves at once, each sending half a request.
    let idle: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // A real scrape gets through once the header timeout frees the slots.
    let started = Instant::now();
    let (status, _) = get(server.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    // The slow clients were cut off.
    let mut closed = 0;
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        // A 408 or a plain close: either way the connection ends.
        if s.read(&mut buf).is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 80);
}

#[test]
fn sigterm_during_scrapes_ends_serve_cleanly() {
    let mut server = Server::start(&[]);
    let addr = server.addr;
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut statuses = Vec::new();
                for _ in 0..50 {
                    statuses.push(get(addr, "/metrics").0);
                }
                statuses
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "still running");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    for s in scrapers {
        // Every scrape either completed or found the server gone; none got an error page.
        assert!(s.join().unwrap().iter().all(|&st| st == 200 || st == 0));
    }
    let mut err = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("tcpmon: detached (poll mode)"), "{err}");
    assert_eq!(get(addr, "/metrics").0, 0, "no longer listening");
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
        .args(["serve", "--mode", "poll", "--listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("tcpmon: listening on 127.0.0.1:"), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
