//! Network namespaces: tcpmon's own (its inode, what the kernel program filters on, and
//! its cookie, what cgroup programs can read), and every other one on the machine, found
//! through processes and `ip netns` bind mounts, each attributed to its owner.
use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs, io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use super::{
    caps::{self, Capability},
    deadline, read, ProcRoot,
};
use crate::model::{
    owner::{owner_of_cgroup, Owner},
    printable_bytes, Refused,
};

/// The network namespace inode of this process.
pub fn own_inode() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata("/proc/self/ns/net")?.ino();
    u32::try_from(ino).map_err(|_| io::Error::other("netns inode does not fit 32 bits"))
}

/// This process's network namespace cookie (SO_NETNS_COOKIE, Linux >= 5.14).
pub fn own_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket fd and an 8-byte out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// A network namespace found on the machine, and who it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Namespace {
    /// The nsfs inode (what `ip netns identify`, `lsns` and /proc/PID/ns/net show).
    pub inode: u64,
    /// Its `ip netns` name (a bind mount under /run/netns), when it has one.
    pub name: Option<String>,
    pub owner: Owner,
    /// How to read its sockets.
    #[serde(skip)]
    pub access: Access,
}

/// How a namespace's sockets can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Through processes in it (/proc/PID/net/...), lowest pid first.
    Pids(Vec<u32>),
    /// Only by entering it (a bind mount with no process in it); needs CAP_SYS_ADMIN.
    Enter(PathBuf),
}

/// What discovery found, and what it could not look at.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    pub namespaces: Vec<Namespace>,
    /// Processes whose namespace could not be looked at (processes that exited meanwhile
    /// are not counted).
    pub refused: Refused,
}

/// How many pids of a namespace are kept to read it through (one may exit meanwhile).
const PIDS_KEPT: usize = 3;

/// "net:[4026531840]" -> 4026531840.
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every pid under `proc_root`, lowest first.
fn pids(proc_root: &ProcRoot) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir(proc_root.path())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Processes under `proc_root` in the namespace `inode` now, lowest pid first, at most
/// [`PIDS_KEPT`]: when the processes a namespace was found through have exited, another
/// may hold it still.
pub fn holders(proc_root: &ProcRoot, inode: u64) -> Vec<u32> {
    let pids = pids(proc_root);
    pids.into_iter()
        .filter(|pid| {
            fs::read_link(proc_root.pid_dir(*pid).join("ns/net"))
                .ok()
                .and_then(|l| l.to_str().and_then(parse_ns_link))
                == Some(inode)
        })
        .take(PIDS_KEPT)
        .collect()
}

/// Every network namespace under `proc_root` (from its processes) and under
/// `run_netns` (`ip netns` bind mounts, which may hold no process), with its owner.
pub fn discover(proc_root: &ProcRoot, run_netns: &Path) -> Discovery {
    let mut by_inode: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut refused = Refused::default();
    let pids = pids(proc_root);
    for pid in pids {
        match fs::read_link(proc_root.pid_dir(pid).join("ns/net")) {
            Ok(link) => {
                if let Some(inode) = link.to_str().and_then(parse_ns_link) {
                    let list = by_inode.entry(inode).or_default();
                    if list.len() < PIDS_KEPT {
                        list.push(pid);
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {}
            Err(e) => {
                let comm = read::small_text(&proc_root.pid_dir(pid).join("comm"))
                    .ok()
                    .map(|c| c.trim_end_matches('\n').to_owned());
                refused.add(pid, comm, &e);
            }
        }
    }
    let init = fs::read_link(proc_root.pid_dir(1).join("ns/net"))
        .ok()
        .and_then(|l| l.to_str().and_then(parse_ns_link));
    let names = named_namespaces(run_netns);
    let mut namespaces: Vec<Namespace> = by_inode
        .into_iter()
        .map(|(inode, pids)| {
            let owner = if Some(inode) == init {
                Owner::Host
            } else {
                owner_of_pid(proc_root, pids[0])
            };
            Namespace {
                inode,
                name: names.get(&inode).map(|(name, _)| name.clone()),
                owner,
                access: Access::Pids(pids),
            }
        })
        .collect();
    for (inode, (name, path)) in &names {
        if !namespaces.iter().any(|n| n.inode == *inode) {
            namespaces.push(Namespace {
                inode: *inode,
                name: Some(name.clone()),
                owner: Owner::Unknown {
                    cgroup: "(no process: an ip netns bind mount)".into(),
                },
                access: Access::Enter(path.clone()),
            });
        }
    }
    namespaces.sort_by_key(|n| n.inode);
    Discovery {
        namespaces,
        refused: Refused {
            privileged: caps::has(Capability::SysPtrace),
            ..refused
        },
    }
}

/// `ip netns` names by namespace inode (the first name, when several bind the same):
/// the name as text (bytes that are not UTF-8 replaced, so it can be shown) and the
/// bind mount's real path.
pub fn named_namespaces(run_netns: &Path) -> BTreeMap<u64, (String, PathBuf)> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(run_netns) else {
        return out;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(inode) = nsfs_inode(&entry.path()) {
            out.entry(inode).or_insert((name, entry.path()));
        }
    }
    out
}

/// The namespace inode of an nsfs file (a bind mount of one, or /proc/PID/ns/net); None
/// for anything else.
pub fn nsfs_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs fills the struct for a NUL-terminated path.
    let mut fs_info: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs_info) } != 0 {
        return None;
    }
    if fs_info.f_type as i64 != NSFS_MAGIC {
        return None;
    }
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Who the namespace of `pid` belongs to: its cgroup, named by its hostname.
fn owner_of_pid(proc_root: &ProcRoot, pid: u32) -> Owner {
    let dir = proc_root.pid_dir(pid);
    let owner = read::small_text(&dir.join("cgroup"))
        .map(|c| owner_of_cgroup(&c))
        .unwrap_or(Owner::Unknown {
            cgroup: "(unreadable)".into(),
        });
    if !matches!(owner, Owner::Pod { .. } | Owner::Container { .. }) {
        return owner;
    }
    // The container's own /etc/hostname (a pod's is its name), resolved inside its root:
    // the container controls that file and may make it a link to anything.
    // Its root may be a filesystem whose server never answers: read within a deadline,
    // off this thread (see `deadline`).
    let hostname =
        deadline::small_text_in_root(&dir.join("root"), "etc/hostname", 256, deadline::DEADLINE)
            .ok()
            .and_then(|h| h.lines().next().map(|l| l.trim().to_owned()))
            .filter(|h| !h.is_empty() && h.len() <= 253)
            // Docker's default hostname is the short id, which the owner already shows.
            .filter(|h| match &owner {
                Owner::Container { container, .. } => !container.id.starts_with(h.as_str()),
                _ => true,
            });
    owner.named(hostname)
}

/// Where `ip netns` keeps its bind mounts: this machine's /run/netns; for another /proc,
/// the /run beside it (that machine's, not ours).
pub fn run_netns(root: &ProcRoot) -> PathBuf {
    if root.is_own() {
        PathBuf::from("/run/netns")
    } else {
        root.path().join("../run/netns")
    }
}

/// Every namespace `specs` name (see [`resolve_spec`]), each once.
pub fn resolve_specs(specs: &[OsString], root: &ProcRoot) -> Result<Vec<(u64, PathBuf)>, String> {
    let run = run_netns(root);
    let mut wanted: Vec<(u64, PathBuf)> = Vec::new();
    for spec in specs {
        let (inode, path) = resolve_spec(spec, root, &run)?;
        if !wanted.iter().any(|(i, _)| *i == inode) {
            wanted.push((inode, path));
        }
    }
    Ok(wanted)
}

/// What `--netns` names: a pid, a path to an nsfs file (/proc/PID/ns/net,
/// /run/netns/NAME) or an `ip netns` name (any bytes); its inode and the path that names
/// it. On this machine the file is opened and asked what it is (a symlink that only
/// looks like one, or another kind of namespace, is refused); inside another /proc tree
/// a process's link is taken at its word, as nothing there can be opened.
pub fn resolve_spec(
    spec: &OsStr,
    proc_root: &ProcRoot,
    run_netns: &Path,
) -> Result<(u64, PathBuf), String> {
    let shown = printable_bytes(spec.as_bytes());
    let pid = spec.to_str().and_then(|s| s.parse::<u32>().ok());
    let path = match pid {
        Some(pid) => proc_root.pid_dir(pid).join("ns/net"),
        None if spec.as_bytes().contains(&b'/') => PathBuf::from(spec),
        None => run_netns.join(spec),
    };
    let shown_path = printable_bytes(path.as_os_str().as_bytes()).into_owned();
    let usage = "give a pid, /proc/PID/ns/net, /run/netns/NAME or an ip netns name";
    // Another /proc tree's links name namespaces of that machine: taken at their word.
    if !proc_root.is_own() && path.starts_with(proc_root.path()) {
        return fs::read_link(&path)
            .ok()
            .and_then(|link| link.to_str().and_then(parse_ns_link))
            .map(|inode| (inode, path))
            .ok_or_else(|| {
                format!("--netns {shown}: {shown_path} is not a network namespace link ({usage})")
            });
    }
    match open_namespace(&path) {
        Ok((kind, inode)) if kind == libc::CLONE_NEWNET => Ok((inode, path)),
        Ok((kind, _)) => Err(format!(
            "--netns {shown}: {shown_path} is a {} namespace, not a network namespace",
            namespace_kind(kind)
        )),
        Err(None) => Err(format!(
            "--netns {shown}: {shown_path} is not a namespace file ({usage})"
        )),
        Err(Some(e)) if e.raw_os_error() == Some(libc::ENOENT) => Err(format!(
            "--netns {shown}: not a network namespace: {shown_path} does not exist \
             (no such process, file or ip netns name)"
        )),
        Err(Some(e)) => {
            let why = match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) if pid.is_some() => {
                    " (another user's process: looking into it needs CAP_SYS_PTRACE)"
                }
                _ => "",
            };
            Err(format!(
                "--netns {shown}: cannot open {shown_path}: {e}{why}"
            ))
        }
    }
}

/// Opens `path` and asks the kernel what it is: (CLONE_NEW* type, inode) of an nsfs
/// file; `Err(None)` for any other file, `Err(Some)` when it cannot be opened.
fn open_namespace(path: &Path) -> Result<(libc::c_int, u64), Option<io::Error>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // _IO(0xb7, 0x3): the namespace's CLONE_NEW* type.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // O_NONBLOCK: a FIFO named like a namespace fails at once instead of blocking.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(Some)?;
    // SAFETY: fstatfs fills the struct for an open fd.
    let mut fs_info: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs_info) } != 0 {
        return Err(Some(io::Error::last_os_error()));
    }
    if fs_info.f_type as i64 != NSFS_MAGIC {
        return Err(None);
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(Some(io::Error::last_os_error()));
    }
    let inode = file.metadata().map_err(Some)?.ino();
    Ok((kind, inode))
}

fn namespace_kind(kind: libc::c_int) -> &'static str {
    match kind {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "UTS",
        libc::CLONE_NEWIPC => "IPC",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "PID",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "different",
    }
}

/// Runs `f` on a thread that has entered the network namespace at `path` (setns affects
/// only the calling thread).
pub fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = fs::File::open(path)?;
    std::thread::spawn(move || {
        // SAFETY: a valid nsfs fd; only this thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace reader panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links_parse() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4_026_531_840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    #[test]
    fn finds_its_own_namespace_and_calls_it_the_host_when_it_is() {
        let own = u64::from(own_inode().unwrap());
        let found = discover(&ProcRoot::host(), Path::new("/run/netns"));
        let ours = found
            .namespaces
            .iter()
            .find(|n| n.inode == own)
            .expect("our namespace");
        let init = fs::read_link("/proc/1/ns/net")
            .ok()
            .and_then(|l| l.to_str().and_then(parse_ns_link));
        if init == Some(own) {
            assert_eq!(ours.owner, Owner::Host);
        }
        assert!(matches!(&ours.access, Access::Pids(p) if !p.is_empty()));
        let run = Path::new("/run/netns");
        let resolve = |spec: &str| resolve_spec(OsStr::new(spec), &ProcRoot::host(), run);
        let by_pid = resolve(&std::process::id().to_string());
        assert_eq!(by_pid.map(|(inode, _)| inode), Ok(own));
        let by_path = resolve("/proc/self/ns/net");
        assert_eq!(by_path.map(|(inode, _)| inode), Ok(own));
        let err = resolve("no-such-name").unwrap_err();
        assert!(err.contains("/run/netns/no-such-name"), "{err}");
        assert!(err.contains("not a network namespace"), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert_eq!(nsfs_inode(Path::new("/etc/hostname")), None);
    }

    /// `--netns` accepts only what the kernel says is a network namespace, says why it
    /// refuses with the real cause, and shows the spec escaped.
    #[test]
    fn namespace_specs_are_checked_through_the_opened_file() {
        let run = Path::new("/run/netns");
        let resolve = |spec: &OsStr| resolve_spec(spec, &ProcRoot::host(), run);
        let err = resolve(OsStr::new("/proc/self/ns/mnt")).unwrap_err();
        assert!(
            err.contains("is a mount namespace, not a network namespace"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        // A symlink whose text looks like a namespace is not one.
        let fake = dir.path().join("fake");
        std::os::unix::fs::symlink("net:[4026531840]", &fake).unwrap();
        let err = resolve(fake.as_os_str()).unwrap_err();
        assert!(
            err.contains("not a network namespace") && err.contains("does not exist"),
            "{err}"
        );
        // A FIFO is refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        let err = resolve(fifo.as_os_str()).unwrap_err();
        assert!(err.contains("is not a namespace file"), "{err}");
        // Bytes that are not text, and terminal escapes, are shown escaped.
        let hostile = OsStr::from_bytes(b"evil\x1b[2J\xff");
        let err = resolve(hostile).unwrap_err();
        assert!(err.starts_with("--netns evil\\e[2J\\xff:"), "{err}");
        assert!(!err.contains('\x1b'), "{err}");
    }
}
