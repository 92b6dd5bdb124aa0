//! Shared plumbing for the root tests: privilege gate, private network namespaces that
//! clean up after themselves, threads that run inside a namespace, and a `tcpmon watch`
//! child whose NDJSON output is collected.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Returns false (and says why) when the test cannot run here; with CI=true that is a
/// failure instead, because CI runs as root and must exercise the real kernel path.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && has_ip {
        return true;
    }
    let why = if root {
        "the `ip` tool (iproute2) is missing"
    } else {
        "it needs root"
    };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: refusing to skip in CI: {why}");
    }
    eprintln!("SKIPPED {test}: {why} (run `cargo xtask test` as root)");
    false
}

pub fn tcpmon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tcpmon"))
}

/// A network namespace deleted on drop (also when the test panics).
pub struct Netns {
    pub name: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "tcpmon-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's inode, as tcpmon reports it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns file")
            .ino()
    }

    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self
            .command(argv[0])
            .args(&argv[1..])
            .output()
            .expect("spawn ip netns exec");
        assert!(
            out.status.success(),
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace (setns affects only the
    /// calling thread), so the test's own sockets live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(format!("/run/netns/{}", self.name), f)
    }
}

/// Runs `f` on a thread that has entered the network namespace of the nsfs file at
/// `path` (/run/netns/NAME, /proc/PID/ns/net).
pub fn run_in<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: a valid netns fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A process that only sleeps, killed on drop: it keeps a namespace alive and gives it a
/// pid (a namespace of `unshare -n`, with no name, lives only as long as it does).
pub struct Holder {
    child: Child,
}

impl Holder {
    /// `argv` must end by exec'ing something that sleeps (e.g. `unshare -n sleep 600`).
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn namespace holder");
        let holder = Self { child };
        // Wait until it has left our namespace (unshare/ip netns exec run before sleep).
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(holder.ns_path()).ok().as_ref() == Some(&own)
            || std::fs::read_link(holder.ns_path()).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the holder never left our namespace"
            );
            thread::sleep(Duration::from_millis(10));
        }
        holder
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.child.id())
    }

    pub fn inode(&self) -> u64 {
        let link = std::fs::read_link(self.ns_path()).unwrap();
        let text = link.to_str().unwrap();
        text.trim_start_matches("net:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Netns {
    /// Links this namespace to `other` with a veth pair: `addr` here, `peer_addr` there
    /// (CIDR), both up. The pair goes when either namespace does.
    pub fn link(&self, other: &Netns, addr: &str, peer_addr: &str) {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let (here, there) = (
            format!("tmv{}a{seq}", std::process::id() % 10_000),
            format!("tmv{}b{seq}", std::process::id() % 10_000),
        );
        run(
            "ip",
            &["link", "add", &here, "type", "veth", "peer", "name", &there],
        );
        run("ip", &["link", "set", &here, "netns", &self.name]);
        run("ip", &["link", "set", &there, "netns", &other.name]);
        self.exec_ok(&["ip", "addr", "add", addr, "dev", &here]);
        self.exec_ok(&["ip", "link", "set", &here, "up"]);
        other.exec_ok(&["ip", "addr", "add", peer_addr, "dev", &there]);
        other.exec_ok(&["ip", "link", "set", &there, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `tcpmon` whose stdout lines are collected; killed on drop.
pub struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    ready: mpsc::Receiver<()>,
    stderr: Arc<Mutex<String>>,
}

impl Watcher {
    /// Starts `tcpmon <args>` (inside `netns` when given) and waits until it has printed
    /// a line matching `ready` (its mode line: attached and baselined).
    pub fn start(
        netns: Option<&Netns>,
        args: &[&str],
        ready: impl Fn(&str) -> bool + Send + 'static,
    ) -> Self {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = ns.command(tcpmon_bin().to_str().unwrap());
                c.args(args);
                c
            }
            None => {
                let mut c = Command::new(tcpmon_bin());
                c.args(args);
                c
            }
        };
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpmon");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            let mut signalled = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !signalled && ready(&line) {
                    signalled = true;
                    let _ = tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let err_sink = Arc::clone(&stderr_text);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = err_sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let watcher = Self {
            child,
            lines,
            ready: rx,
            stderr: stderr_text,
        };
        watcher.wait_ready(Duration::from_secs(30));
        watcher
    }

    fn wait_ready(&self, timeout: Duration) {
        if self.ready.recv_timeout(timeout).is_err() {
            panic!(
                "tcpmon did not become ready in {timeout:?}\nstdout: {:?}\nstderr: {}",
                self.lines.lock().unwrap(),
                self.stderr.lock().unwrap()
            );
        }
    }

    /// How many NDJSON records of `kind` were printed so far.
    pub fn count(&self, kind: &str) -> usize {
        let tag = format!("\"type\":\"{kind}\"");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&tag))
            .count()
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// tcpmon's pid (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until some collected line satisfies `pred` (or panics after `timeout`).
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return line.clone();
            }
            if start.elapsed() > timeout {
                let lines = self.lines.lock().unwrap();
                let last = &lines[lines.len().saturating_sub(3)..];
                panic!(
                    "no {what} within {timeout:?}; last stdout lines:\n{}\nstderr:\n{}",
                    last.join("\n"),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to tcpmon (SIGSTOP/SIGCONT pause and resume its reader).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child, which is not reaped before `self` drops.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, wait for exit, and return every stdout line.
    pub fn stop(self) -> (Vec<String>, std::process::ExitStatus) {
        let (lines, status, _) = self.stop_with_stderr();
        (lines, status)
    }

    /// [`Watcher::stop`], with everything written to stderr.
    pub fn stop_with_stderr(mut self) -> (Vec<String>, std::process::ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tcpmon did not exit on SIGTERM; stderr:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        };
        // Let the reader thread drain the pipe.
        thread::sleep(Duration::from_millis(200));
        let lines = self.lines.lock().unwrap().clone();
        (lines, status, self.stderr())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NDJSON records of `kind` ("transition", "tally", ...).
pub fn records<'a>(lines: &'a [String], kind: &'a str) -> impl Iterator<Item = Value> + 'a {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(move |v| v["type"] == kind)
}

/// Checks every NDJSON line against docs/schema/watch.schema.json.
pub fn check_schema(lines: &[String]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/watch.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for line in lines {
        let record: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let errors: Vec<String> = validator
            .iter_errors(&record)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{line}");
    }
}

/// Peak resident memory of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The states of a JSON `states` object (a snapshot's, a tally's or a namespace entry's)
/// that have any socket.
pub fn nonzero_states(has_states: &Value) -> std::collections::BTreeMap<String, u64> {
    has_states["states"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Sockets per state in the namespace at `ns_path`, as `ss -tan` counts them, by
/// tcpmon's state names.
pub fn ss_states(ns_path: &str) -> std::collections::BTreeMap<String, u64> {
    let out = Command::new("nsenter")
        .args([&format!("--net={ns_path}"), "ss", "-tan"])
        .output()
        .expect("nsenter ss");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let state = match line.split_whitespace().next().unwrap() {
            "ESTAB" => "ESTABLISHED".to_owned(),
            "UNCONN" | "CLOSED" => "CLOSE".to_owned(),
            other => other.replace('-', "_").replace("FIN_WAIT_", "FIN_WAIT"),
        };
        *counts.entry(state).or_default() += 1;
    }
    counts
}
