//! `tcpmon top` as a person uses it: tmux runs it on a real terminal in a private
//! namespace with a known population, send-keys types, capture-pane reads the screen.
//! The counts on the screen must be ss's, a change must show within 2 s, a resize must
//! redraw, q and SIGTERM must exit 0 with the terminal as it was; without a terminal it
//! must refuse at once.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::harness::{require_root, ss_states, tcpmon_bin, Netns};

/// A tmux server of the test's own, killed on drop (with whatever runs in it).
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `shell_command` in a detached session of `width`x`height`.
    fn start(shell_command: &str, width: u16, height: u16) -> Self {
        let tmux = Self {
            socket: format!("tcpmon-top-{}", std::process::id()),
        };
        tmux.ok(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            shell_command,
        ]);
        tmux
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.ok(&args);
    }

    /// The screen once `pred` holds, or a failure showing the last one.
    fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < timeout,
                "no {what} within {timeout:?}; the screen:\n{screen}\nits states: {:?}",
                states_on(&screen)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The states pane as drawn: each state's count (both layouts: one or two per line).
fn states_on(screen: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in screen.lines() {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            let is_state = pair[0].len() > 3
                && pair[0].starts_with(|c: char| c.is_ascii_uppercase())
                && pair[0]
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
            if let (true, Ok(n)) = (is_state, pair[1].parse::<u64>()) {
                counts.entry(pair[0].to_owned()).or_insert(n);
            }
        }
    }
    counts
}

/// What `states_on` finds for every state: ss's counts, zero where ss has none.
fn all_states(ss: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let names = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    names
        .iter()
        .map(|n| ((*n).to_owned(), ss.get(*n).copied().unwrap_or(0)))
        .collect()
}

/// Sockets held in the namespace: ESTABLISHED pairs, CLOSE_WAIT with FIN_WAIT2 peers,
/// TIME_WAIT left by active closes, one listener.
struct Population {
    listener: TcpListener,
    _held: Vec<TcpStream>,
}

fn populate(ns: &Netns) -> Population {
    ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        let pair = || {
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            (client, server)
        };
        for _ in 0..5 {
            let (c, s) = pair();
            held.extend([c, s]);
        }
        // The client half-closes and is held (FIN_WAIT2); the server reads the end and
        // never closes (CLOSE_WAIT).
        for _ in 0..3 {
            let (c, mut s) = pair();
            c.shutdown(Shutdown::Write).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).unwrap(), 0);
            held.extend([c, s]);
        }
        // The client closes first, then the server: the client's end waits in TIME_WAIT.
        for _ in 0..4 {
            let (c, mut s) = pair();
            drop(c);
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).unwrap(), 0);
            drop(s);
        }
        Population {
            listener,
            _held: held,
        }
    })
}

fn settle(ns_path: &str) -> BTreeMap<String, u64> {
    // FIN_WAIT1 and LAST_ACK end within a round trip on loopback (or a delayed ACK).
    let started = Instant::now();
    loop {
        let ss = ss_states(ns_path);
        let passing = ss.contains_key("LAST_ACK") || ss.contains_key("FIN_WAIT1");
        if !passing || started.elapsed() > Duration::from_secs(2) {
            return ss;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn top_in_a_real_terminal_shows_what_ss_shows_and_gives_the_terminal_back() {
    if !require_root("top_in_a_real_terminal_shows_what_ss_shows_and_gives_the_terminal_back") {
        return;
    }
    let ns = Netns::new("top");
    let ns_path = format!("/run/netns/{}", ns.name);
    let population = populate(&ns);
    let expected = all_states(&settle(&ns_path));
    assert_eq!(expected["ESTABLISHED"], 10, "{expected:?}");
    let command = format!(
        "S0=$(stty -g); ip netns exec {} {} top --interval 1s; echo EXIT=$?; \
         [ \"$S0\" = \"$(stty -g)\" ] && echo TTY=RESTORED || echo TTY=CHANGED; sleep 60",
        ns.name,
        tcpmon_bin().display()
    );
    let tmux = Tmux::start(&command, 200, 60);
    let screen = tmux.wait_for(Duration::from_secs(15), "the states", |s| {
        states_on(s) == expected || !s.contains("reconcile:")
    });
    let screen = if states_on(&screen) == expected {
        screen
    } else {
        tmux.wait_for(
            Duration::from_secs(15),
            &format!("the states ss counts, {expected:?}"),
            |s| states_on(s) == expected,
        )
    };
    assert!(screen.contains("eBPF"), "{screen}");
    assert!(screen.contains("lost 0"), "{screen}");

    // Four more ESTABLISHED sockets show within 2 s.
    let more: Vec<TcpStream> = {
        let listener = population.listener.try_clone().unwrap();
        ns.run(move || {
            let addr = listener.local_addr().unwrap();
            (0..2)
                .flat_map(|_| {
                    let c = TcpStream::connect(addr).unwrap();
                    let (s, _) = listener.accept().unwrap();
                    [c, s]
                })
                .collect()
        })
    };
    let changed = Instant::now();
    let mut expected = all_states(&settle(&ns_path));
    assert_eq!(expected["ESTABLISHED"], 14);
    tmux.wait_for(Duration::from_secs(2), "the new connections", |s| {
        states_on(s) == expected
    });
    let took = changed.elapsed();
    eprintln!("a change appeared on the screen after {took:?}");

    // Smaller: the compact layout, the same counts.
    tmux.ok(&["resize-window", "-t", "top", "-x", "80", "-y", "24"]);
    let small = tmux.wait_for(Duration::from_secs(3), "the 80x24 layout", |s| {
        s.lines()
            .any(|l| l.contains("ESTABLISHED") && l.contains("CLOSE "))
    });
    assert!(small.lines().all(|l| l.chars().count() <= 80), "{small}");
    assert_eq!(states_on(&small), expected, "{small}");
    // Keys: the help, then back; pause marks the screen.
    tmux.keys(&["?"]);
    tmux.wait_for(Duration::from_secs(2), "the help", |s| {
        s.contains("any key closes")
    });
    // Esc and a key sent together read as Alt and the key, as in any terminal.
    tmux.keys(&["Escape"]);
    tmux.wait_for(Duration::from_secs(2), "the help to close", |s| {
        !s.contains("any key closes")
    });
    tmux.keys(&["p"]);
    tmux.wait_for(Duration::from_secs(2), "the pause mark", |s| {
        s.contains("PAUSED")
    });
    tmux.keys(&["p"]);
    tmux.wait_for(Duration::from_secs(2), "the pause to end", |s| {
        !s.contains("PAUSED")
    });

    // q: exit 0, the terminal as it was, the exit line on the normal screen.
    drop(more);
    tmux.keys(&["q"]);
    let after = tmux.wait_for(Duration::from_secs(5), "the exit", |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(after.contains("TTY=RESTORED"), "{after}");
    assert!(after.contains("tcpmon: detached (ebpf mode)"), "{after}");
    assert!(
        !after.contains("States ·"),
        "the alternate screen was left: {after}"
    );
    drop(tmux);
    expected.clear();
    drop(population);
}

#[test]
#[ignore = "needs root: run by `cargo xtask test`"]
fn top_stops_on_sigterm_and_refuses_without_a_terminal() {
    if !require_root("top_stops_on_sigterm_and_refuses_without_a_terminal") {
        return;
    }
    // A marker in the arguments finds the process.
    let marker = "173";
    let command = format!(
        "S0=$(stty -g); {} top --mode poll --top {marker}; echo EXIT=$?; \
         [ \"$S0\" = \"$(stty -g)\" ] && echo TTY=RESTORED || echo TTY=CHANGED; sleep 60",
        tcpmon_bin().display()
    );
    let tmux = Tmux::start(&command, 100, 30);
    tmux.wait_for(Duration::from_secs(10), "the screen", |s| {
        s.contains("States ·")
    });
    let pid = find_pid(&["--top", marker]).expect("tcpmon top runs");
    // SAFETY: a signal to a child of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let after = tmux.wait_for(Duration::from_secs(3), "the exit", |s| s.contains("EXIT="));
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(after.contains("TTY=RESTORED"), "{after}");
    drop(tmux);

    // No terminal: refused at once, with the reason and what to use instead.
    let started = Instant::now();
    let mut child = Command::new(tcpmon_bin())
        .arg("top")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(
        stderr.contains("stdin is not a terminal (a pipe)"),
        "{stderr}"
    );
    assert!(stderr.contains("tcpmon watch --json"), "{stderr}");
    // stdout a file, stdin the terminal it would have had.
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} top > {}",
            tcpmon_bin().display(),
            file.path().display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("stdout is not a terminal (a file)"), "{said}");
    let _ = std::io::stderr().flush();
}

/// The pid of the process whose arguments contain `args` in order.
fn find_pid(args: &[&str]) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if words.first().is_some_and(|w| w.ends_with("tcpmon"))
            && words.windows(args.len()).any(|w| w == args)
        {
            return Some(pid);
        }
    }
    None
}
