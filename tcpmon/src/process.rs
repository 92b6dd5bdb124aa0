//! Socket inode -> owning process, by walking /proc/PID/fd (what `ss -p` does).
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.comm, self.pid)
    }
}

/// What the walk found, and whether it could look everywhere.
#[derive(Clone, Debug, Default)]
pub struct Owners {
    pub by_inode: HashMap<u64, Process>,
    /// Processes whose fd table we could not read (not root): their sockets stay unowned.
    pub unreadable_processes: usize,
}

/// Finds the owners of `wanted` inodes. Stops as soon as every inode is found, so the
/// cost is bounded by where the wanted sockets are, not by every fd on the machine.
pub fn find_owners(proc_root: &Path, wanted: &HashSet<u64>) -> Owners {
    let mut owners = Owners::default();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(entries) = fs::read_dir(proc_root) else {
        return owners;
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let fd_dir = proc_root.join(pid.to_string()).join("fd");
        let Ok(fds) = fs::read_dir(&fd_dir) else {
            owners.unreadable_processes += 1;
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            if !wanted.contains(&inode) || owners.by_inode.contains_key(&inode) {
                continue;
            }
            let comm = comm
                .get_or_insert_with(|| {
                    fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
                        .map(|c| c.trim_end().to_owned())
                        .unwrap_or_else(|_| "?".into())
                })
                .clone();
            owners.by_inode.insert(inode, Process { pid, comm });
            if owners.by_inode.len() == wanted.len() {
                return owners;
            }
        }
    }
    owners
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
        let snap = crate::snapshot::Snapshot::read(Path::new("/proc")).unwrap();
        let inode = snap
            .rows()
            .filter_map(|r| r.socket.ok())
            .find(|s| s.local_port == port && s.state == crate::model::TcpState::Listen)
            .expect("our listener is in /proc/net/tcp")
            .inode;
        let owners = find_owners(Path::new("/proc"), &HashSet::from([inode]));
        let owner = owners.by_inode.get(&inode).expect("owner found");
        assert_eq!(owner.pid, std::process::id());
    }
}
