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

/// The tests that load a server run one at a time: on two cores, two floods at once
/// would measure each other.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let interval: &[&str] = if extra.contains(&"--interval") {
            &[]
        } else {
            &["--interval", "200ms"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
            .args(["serve", "--no-history", "--mode", "poll"])
            .args(interval)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .envs(env.iter().copied())
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
    let _alone = heavy();
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
    // The engine polls the host's table every 200 ms, and other programs' sockets come
    // and go by the tens of thousands on a busy machine: its share of RSS moves by
    // several MiB on its own. A leak of 16 KiB a scrape would still show.
    assert!(
        after < before + 32 * 1024,
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
        .args(["serve", "--no-history", "--mode", "poll", "--listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("tcpmon: listening on 127.0.0.1:"), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// How an attacker holds connections.
#[derive(Clone, Copy)]
enum Flood {
    /// Connects and sends nothing.
    Idle,
    /// Pipelines `GET /metrics` and never reads an answer.
    PipelineNeverRead,
}

/// `n` connections of `kind` from `source`, each re-opened as soon as the server closes
/// it, until `stop`; returns how many connects were made.
fn flood(
    addr: SocketAddr,
    source: std::net::Ipv4Addr,
    n: usize,
    kind: Flood,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<usize> {
    use socket2::{Domain, Socket, Type};
    let connect = move || -> Option<TcpStream> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
        socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(1))
            .ok()?;
        let stream: TcpStream = socket.into();
        stream.set_nonblocking(true).ok()?;
        Some(stream)
    };
    thread::spawn(move || {
        let mut connects = 0;
        let mut held: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        while !stop.load(Ordering::Relaxed) {
            for slot in held.iter_mut() {
                let alive = match slot {
                    None => false,
                    Some(s) => match kind {
                        // A closed connection reads as end of file or an error.
                        Flood::Idle => matches!(
                            s.peek(&mut [0u8; 1]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                        ),
                        Flood::PipelineNeverRead => match s.write(request) {
                            Ok(_) => true,
                            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                        },
                    },
                };
                if !alive {
                    *slot = connect();
                    connects += 1;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        connects
    })
}

/// Scrapes `/healthz` and `/metrics` in turn every 250 ms for `run`, each given 2 s;
/// (answered with 200, tried, slowest answer).
fn scrape_during(addr: SocketAddr, run: Duration) -> (usize, usize, Duration) {
    let (mut ok, mut tried, mut slowest) = (0, 0, Duration::ZERO);
    let started = Instant::now();
    while started.elapsed() < run {
        let path = if tried % 2 == 0 {
            "/healthz"
        } else {
            "/metrics"
        };
        let asked = Instant::now();
        let answered = thread::scope(|scope| {
            let handle = scope.spawn(|| get(addr, path).0);
            loop {
                if handle.is_finished() {
                    break handle.join().unwrap() == 200;
                }
                if asked.elapsed() > Duration::from_secs(2) {
                    // Too slow counts as failed; the request ends on its own timeout.
                    break false;
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        tried += 1;
        if answered {
            ok += 1;
            slowest = slowest.max(asked.elapsed());
        }
        thread::sleep(Duration::from_millis(250).saturating_sub(asked.elapsed()));
    }
    (ok, tried, slowest)
}

fn scrapes_survive(kind: Flood, attackers: usize, source: std::net::Ipv4Addr) {
    let _alone = heavy();
    let server = Server::start(&[]);
    let before = server.rss_kib();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attack = flood(server.addr, source, attackers, kind, Arc::clone(&stop));
    // Let the flood fill every slot it can.
    thread::sleep(Duration::from_secs(2));
    let (ok, tried, slowest) = scrape_during(server.addr, Duration::from_secs(8));
    let during = server.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let connects = attack.join().unwrap();
    let recovered = Instant::now();
    while get(server.addr, "/healthz").0 != 200 {
        assert!(recovered.elapsed() < Duration::from_secs(5), "no recovery");
    }
    eprintln!(
        "{attackers} attackers from {source}: {ok}/{tried} scrapes answered, slowest {slowest:?}, \
         {connects} attacker connects, RSS {before} -> {during} KiB, recovered in {:?}",
        recovered.elapsed()
    );
    assert_eq!(ok, tried, "scrapes failed during the flood");
    assert!(during < before + 64 * 1024, "RSS {before} -> {during} KiB");
}

#[test]
fn clients_pipelining_and_never_reading_do_not_stop_scrapes() {
    scrapes_survive(
        Flood::PipelineNeverRead,
        80,
        std::net::Ipv4Addr::new(127, 0, 0, 2),
    );
}

#[test]
fn a_flood_of_idle_connections_does_not_stop_scrapes() {
    scrapes_survive(Flood::Idle, 190, std::net::Ipv4Addr::new(127, 0, 0, 3));
}

#[test]
fn a_flood_from_the_scrapers_own_address_does_not_stop_scrapes() {
    scrapes_survive(Flood::Idle, 190, std::net::Ipv4Addr::LOCALHOST);
}

/// A shared object that shifts the wall clock (CLOCK_REALTIME, as `SystemTime` reads it)
/// by the seconds written in the file named by `CLOCK_SHIFT_FILE`, read at every call.
fn clock_shim(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("shift.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        const char *path = getenv("CLOCK_SHIFT_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        long shift = 0;
        if (f) { if (fscanf(f, "%ld", &shift) != 1) shift = 0; fclose(f); }
        ts->tv_sec += shift;
    }
    return r;
}
"#,
    )
    .unwrap();
    let object = dir.join("libshift.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&object)
        .arg(&source)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(built.success(), "cc failed");
    object
}

/// Stops one thread of another process (ptrace: the others run on) until dropped.
struct FrozenThread(libc::pid_t);

impl FrozenThread {
    fn freeze(tid: libc::pid_t) -> Self {
        // SAFETY: ptrace and waitpid on a thread of our own child; the requests take no
        // pointers.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
        }
        Self(tid)
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        // SAFETY: as above; the thread is in a ptrace stop.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

fn healthz_during(addr: SocketAddr, run: Duration) -> Vec<(u16, String)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < run {
        seen.push(get(addr, "/healthz"));
        thread::sleep(Duration::from_millis(200));
    }
    seen
}

fn tally_age(addr: SocketAddr) -> f64 {
    let (_, body) = get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("tcpmon_last_tally_age_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tally age in {body}"))
}

#[test]
fn a_frozen_engine_shows_whatever_the_wall_clock_does() {
    let _alone = heavy();
    let dir = tempfile::tempdir().unwrap();
    let shim = clock_shim(dir.path());
    let shift = dir.path().join("shift");
    std::fs::write(&shift, "0").unwrap();
    let server = Server::start_with_env(
        &[],
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("CLOCK_SHIFT_FILE", shift.as_os_str()),
        ],
    );
    // The wall clock jumps ahead, then back: the engine is fine, and says so.
    for step in ["600", "-600"] {
        std::fs::write(&shift, step).unwrap();
        let seen = healthz_during(server.addr, Duration::from_secs(3));
        assert!(seen.iter().all(|(s, _)| *s == 200), "step {step}: {seen:?}");
        assert!(tally_age(server.addr) < 2.0, "step {step}");
    }
    // The engine (the main thread) freezes while the HTTP thread answers: /healthz and
    // the tally's age say so, whatever the wall clock says.
    let frozen = FrozenThread::freeze(server.child.id() as libc::pid_t);
    let started = Instant::now();
    while get(server.addr, "/healthz").0 != 503 {
        assert!(started.elapsed() < Duration::from_secs(6), "still healthy");
        thread::sleep(Duration::from_millis(100));
    }
    let noticed = started.elapsed();
    std::fs::write(&shift, "600").unwrap();
    let seen = healthz_during(server.addr, Duration::from_secs(1));
    assert!(
        seen.iter()
            .all(|(s, body)| *s == 503 && body.contains("the engine is stuck")),
        "{seen:?}"
    );
    assert!(tally_age(server.addr) > 2.5);
    drop(frozen);
    let thawed = Instant::now();
    while get(server.addr, "/healthz").0 != 200 {
        assert!(thawed.elapsed() < Duration::from_secs(5), "never recovered");
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "frozen engine: /healthz 503 after {noticed:?}, healthy {:?} after thawing",
        thawed.elapsed()
    );
}

/// With few file descriptors, held HTTP connections cannot take those the engine reads
/// the socket table with: it keeps reading, and /healthz keeps answering.
#[test]
fn held_connections_cannot_starve_the_engine_of_file_descriptors() {
    use std::os::unix::process::CommandExt as _;
    let _alone = heavy();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcpmon"));
    command
        .args([
            "serve",
            "--no-history",
            "--mode",
            "poll",
            "--interval",
            "200ms",
            "--listen",
        ])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child yet.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server {
        child: command.spawn().unwrap(),
        addr,
    };
    let started = Instant::now();
    while get(addr, "/healthz").0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(15), "never healthy");
        thread::sleep(Duration::from_millis(100));
    }
    // 60 connections held from six addresses, each re-opened as it is closed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floods: Vec<_> = (2..8)
        .map(|last| {
            flood(
                addr,
                std::net::Ipv4Addr::new(127, 0, 0, last),
                10,
                Flood::Idle,
                Arc::clone(&stop),
            )
        })
        .collect();
    thread::sleep(Duration::from_secs(4));
    let (ok, tried, _) = scrape_during(addr, Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    assert!(server.child.try_wait().unwrap().is_none(), "serve exited");
    assert_eq!(ok, tried, "scrapes failed");
    let (_, metrics) = get(addr, "/metrics");
    assert!(
        metrics.contains("tcpmon_socket_read_failures_total 0"),
        "{metrics}"
    );
    let (_, alerts) = get(addr, "/alerts");
    assert!(!alerts.contains("socket_read"), "{alerts}");
}
