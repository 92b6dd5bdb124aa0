//! Socket inode -> owning process, by walking /proc/PID/fd (what `ss -p` does).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    ffi::CString,
    fs,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
};

use super::{
    caps::{self, Capability},
    read, ProcRoot,
};
use crate::model::{Process, Refused};

/// What the walk found, and whether it could look everywhere.
#[derive(Clone, Debug, Default)]
pub struct Owners {
    pub by_inode: HashMap<u64, Process>,
    /// Processes whose fd table could not be read: their sockets stay unowned.
    pub refused: Refused,
}

/// Finds the owners of `wanted` inodes. The walk is split over the available cores (a
/// process holding thousands of sockets is itself split, since its fd table is most of
/// the work) and stops as soon as every inode is found, so its cost is bounded by where
/// the wanted sockets are rather than by every fd on the machine. When several processes
/// share a socket (fork), the lowest pid is reported.
pub fn find_owners(proc_root: &ProcRoot, wanted: &HashSet<u64>) -> Owners {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    find_owners_with(proc_root, wanted, cores, SPLIT_FDS)
}

fn find_owners_with(
    proc_root: &ProcRoot,
    wanted: &HashSet<u64>,
    threads: usize,
    split_fds: usize,
) -> Owners {
    if wanted.is_empty() {
        return Owners::default();
    }
    let Ok(entries) = fs::read_dir(proc_root.path()) else {
        return Owners::default();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let threads = threads.min(pids.len()).max(1);
    let walk = Walk {
        proc_root,
        wanted,
        threads,
        split_fds,
        found: Mutex::new(HashMap::new()),
        done: AtomicBool::new(false),
        refused: Mutex::new((Refused::default(), HashSet::new())),
        queue: Mutex::new(Queue {
            jobs: pids.into_iter().map(Job::Process).collect(),
            busy: 0,
        }),
        more: Condvar::new(),
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| walk.work());
        }
    });
    let (mut refused, _) = walk.refused.into_inner().unwrap_or_else(|e| e.into_inner());
    refused.privileged = may_read_every_fd_table();
    Owners {
        by_inode: walk.found.into_inner().unwrap_or_else(|e| e.into_inner()),
        refused,
    }
}

/// Whether this process holds what reading another user's fd table takes: listing it is
/// a DAC check, reading its links a ptrace one.
pub fn may_read_every_fd_table() -> bool {
    caps::has(Capability::SysPtrace) && caps::has(Capability::DacReadSearch)
}

/// An fd table longer than this is shared out between the threads.
const SPLIT_FDS: usize = 2048;

enum Job {
    Process(u32),
    /// Part of one process's fd table, relative to its open fd directory.
    Fds {
        pid: u32,
        dir: Arc<fs::File>,
        names: Vec<CString>,
    },
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads running a job, which may still add jobs.
    busy: usize,
}

struct Walk<'a> {
    proc_root: &'a ProcRoot,
    wanted: &'a HashSet<u64>,
    threads: usize,
    split_fds: usize,
    found: Mutex<HashMap<u64, Process>>,
    done: AtomicBool,
    /// Processes refused, and their pids (each counted once).
    refused: Mutex<(Refused, HashSet<u32>)>,
    queue: Mutex<Queue>,
    more: Condvar,
}

impl Walk<'_> {
    fn work(&self) {
        while let Some(job) = self.next_job() {
            match job {
                Job::Process(pid) => {
                    if let Err(e) = self.scan_process(pid) {
                        // A process that exited meanwhile hid nothing.
                        if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) {
                            self.refuse(pid, &e);
                        }
                    }
                }
                Job::Fds { pid, dir, names } => self.scan_fds(pid, &dir, &names),
            }
            let mut queue = self.lock_queue();
            queue.busy -= 1;
            if queue.busy == 0 && queue.jobs.is_empty() {
                self.more.notify_all();
            }
        }
    }

    /// The next job, or None once every inode is found or nothing is left to do.
    fn next_job(&self) -> Option<Job> {
        let mut queue = self.lock_queue();
        loop {
            if self.done.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(job) = queue.jobs.pop_front() {
                queue.busy += 1;
                return Some(job);
            }
            if queue.busy == 0 {
                return None;
            }
            // A busy thread may yet split a large fd table.
            queue = self.more.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Counts `pid` as refused, once, whichever part of its table found out.
    fn refuse(&self, pid: u32, e: &std::io::Error) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.1.insert(pid) {
            let comm = read::small_text(&self.proc_root.pid_dir(pid).join("comm"))
                .ok()
                .map(|c| c.trim_end_matches('\n').to_owned());
            refused.0.add(pid, comm, e);
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn scan_process(&self, pid: u32) -> std::io::Result<()> {
        let dir_path = self.proc_root.pid_dir(pid).join("fd");
        // Not a plain open: in another /proc tree `fd` could be a FIFO, which blocks.
        let dir = read::open_dir(&dir_path)?;
        let mut names = fs::read_dir(&dir_path)?
            .filter_map(Result::ok)
            .filter_map(|e| CString::new(e.file_name().as_encoded_bytes()).ok());
        // The directory is read as it is walked, so a walk that finds the last wanted
        // socket early does not list the rest of a large table.
        let head: Vec<CString> = names.by_ref().take(self.split_fds).collect();
        self.scan_fds(pid, &dir, &head);
        if head.len() < self.split_fds || self.done.load(Ordering::Relaxed) {
            return Ok(());
        }
        let rest: Vec<CString> = names.collect();
        if self.threads == 1 {
            self.scan_fds(pid, &dir, &rest);
            return Ok(());
        }
        let dir = Arc::new(dir);
        let mut parts = rest.chunks(rest.len().div_ceil(self.threads).max(1));
        let first = parts.next().unwrap_or_default();
        {
            let mut queue = self.lock_queue();
            // At the front: the rest of this table before other processes.
            for part in parts.rev() {
                queue.jobs.push_front(Job::Fds {
                    pid,
                    dir: Arc::clone(&dir),
                    names: part.to_vec(),
                });
            }
            self.more.notify_all();
        }
        self.scan_fds(pid, &dir, first);
        Ok(())
    }

    /// Reads fd links with readlinkat() relative to the process's fd directory (one path
    /// component per lookup instead of four). A link is only read, never followed: what
    /// it points to (a FUSE file, say) could block a stat.
    fn scan_fds(&self, pid: u32, dir: &fs::File, names: &[CString]) {
        let mut comm: Option<String> = None;
        let mut link = [0u8; 64];
        for name in names {
            if self.done.load(Ordering::Relaxed) {
                return;
            }
            // SAFETY: valid dir fd, NUL-terminated name, buffer length passed.
            let len = unsafe {
                libc::readlinkat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    link.as_mut_ptr().cast(),
                    link.len(),
                )
            };
            let Ok(len) = usize::try_from(len) else {
                let e = std::io::Error::last_os_error();
                // Listing the table is allowed, reading its links is not (a ptrace check
                // the process's owner or a security module refuses): the whole table is.
                if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                    self.refuse(pid, &e);
                    return;
                }
                continue;
            };
            let Some(inode) = socket_inode(&link[..len]) else {
                continue;
            };
            if !self.wanted.contains(&inode) {
                continue;
            }
            let comm = comm
                .get_or_insert_with(|| {
                    read::small_text(&self.proc_root.pid_dir(pid).join("comm"))
                        .map(|c| c.trim_end_matches('\n').to_owned())
                        .unwrap_or_else(|_| "?".into())
                })
                .clone();
            let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
            let owner = found.entry(inode).or_insert_with(|| Process {
                pid,
                comm: comm.clone(),
            });
            if pid < owner.pid {
                *owner = Process { pid, comm };
            }
            if found.len() == self.wanted.len() {
                self.done.store(true, Ordering::Relaxed);
                // Under the queue's lock, so a thread about to wait cannot miss it.
                let _queue = self.lock_queue();
                self.more.notify_all();
                return;
            }
        }
    }
}

/// A process's own usage, as Prometheus clients report it (process_* metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub start_time_seconds: f64,
}

/// This process's CPU time, resident memory and start time, from /proc/self/stat and
/// /proc/self/statm (what Prometheus clients report as process_* metrics).
pub fn self_usage(proc_root: &ProcRoot) -> Option<ProcessUsage> {
    let stat = read::small_text(&proc_root.path().join("self/stat")).ok()?;
    let statm = read::small_text(&proc_root.path().join("self/statm")).ok()?;
    let boot = read::small_text(&proc_root.path().join("stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    parse_usage(&stat, &statm, &boot, ticks as f64, page as u64)
}

/// The pure part of [`self_usage`]: `stat`'s fields after the command name (which may
/// hold spaces and parentheses), `statm`'s resident pages, `/proc/stat`'s btime.
fn parse_usage(
    stat: &str,
    statm: &str,
    proc_stat: &str,
    ticks_per_sec: f64,
    page_bytes: u64,
) -> Option<ProcessUsage> {
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14, 15 (utime, stime) and 22 (starttime) of proc(5), counted from 3 here.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let cpu = (field(14)? + field(15)?) / ticks_per_sec;
    let start_ticks = field(22)?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let btime: f64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(ProcessUsage {
        cpu_seconds: cpu,
        resident_bytes: resident * page_bytes,
        start_time_seconds: btime + start_ticks / ticks_per_sec,
    })
}

/// Parses `socket:[12345]`.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_usage() {
        let usage = self_usage(&ProcRoot::host()).expect("our own /proc");
        assert!(usage.resident_bytes > 1 << 20);
        assert!(usage.start_time_seconds > 1.0e9);
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1000 100 5";
        let u = parse_usage(stat, "100 25 3", "cpu 1\nbtime 1700000000\n", 100.0, 4096).unwrap();
        assert_eq!(u.cpu_seconds, 3.0);
        assert_eq!(u.resident_bytes, 25 * 4096);
        assert_eq!(u.start_time_seconds, 1_700_000_010.0);
        assert!(parse_usage("garbage", "", "", 100.0, 4096).is_none());
    }

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
    }

    #[test]
    fn finds_its_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let snap = crate::snapshot::Snapshot::read(&ProcRoot::host()).unwrap();
        let inode = snap
            .rows()
            .filter_map(|r| r.socket.ok())
            .find(|s| s.local_port == port && s.state == crate::model::TcpState::Listen)
            .expect("our listener is in /proc/net/tcp")
            .inode;
        let owners = find_owners(&ProcRoot::host(), &HashSet::from([inode]));
        let owner = owners.by_inode.get(&inode).expect("owner found");
        assert_eq!(owner.pid, std::process::id());
    }

    #[test]
    fn a_large_fd_table_shared_between_threads_finds_every_owner() {
        let listeners: Vec<_> = (0..40)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: HashSet<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let snap = crate::snapshot::Snapshot::read(&ProcRoot::host()).unwrap();
        let ours: HashSet<u64> = snap
            .rows()
            .filter_map(|r| r.socket.ok())
            .filter(|s| ports.contains(&s.local_port) && s.state == crate::model::TcpState::Listen)
            .map(|s| s.inode)
            .collect();
        assert_eq!(ours.len(), 40);
        // Our fd table is cut into parts of 4 for 3 threads: every owner is found, whether
        // the walk stops early (all found) or must read everything (one inode no one holds).
        let all = find_owners_with(&ProcRoot::host(), &ours, 3, 4);
        assert_eq!(all.by_inode.len(), 40);
        assert!(all.by_inode.values().all(|p| p.pid == std::process::id()));
        let mut with_missing = ours.clone();
        with_missing.insert(u64::MAX);
        let partial = find_owners_with(&ProcRoot::host(), &with_missing, 3, 4);
        assert_eq!(partial.by_inode.len(), 40);
        assert!(!partial.by_inode.contains_key(&u64::MAX));
        drop(listeners);
    }
}
