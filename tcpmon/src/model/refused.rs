//! Processes the system would not let tcpmon look into, said the way it happened: how
//! many, which ones (a few), the error, and whether privilege would have helped.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::printable;

/// Examples kept of the processes refused.
const EXAMPLES: usize = 3;

/// What could not be looked into.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub count: u64,
    /// The first few, lowest pid first.
    pub examples: Vec<RefusedProcess>,
    /// Whether tcpmon held the privilege that should have been enough (root, or the
    /// capabilities named where this is reported): then more privilege would not help.
    pub privileged: bool,
}

/// One process that refused, and the error it gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedProcess {
    pub pid: u32,
    /// Its name, when that could still be read.
    pub comm: Option<String>,
    pub error: String,
}

impl Refused {
    pub fn add(&mut self, pid: u32, comm: Option<String>, error: &std::io::Error) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(RefusedProcess {
                pid,
                comm,
                error: error.to_string(),
            });
            self.examples.sort_by_key(|p| p.pid);
        }
    }

    pub fn merge(&mut self, other: &Refused) {
        self.count += other.count;
        self.privileged |= other.privileged;
        for p in &other.examples {
            if self.examples.len() < EXAMPLES {
                self.examples.push(p.clone());
            }
        }
        self.examples.sort_by_key(|p| p.pid);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// "2 processes could not be looked into (systemd[1]: Permission denied (os error
    /// 13), ...), even with NEEDED" or "... (run as root, or grant NEEDED)": what
    /// happened, to whom, and whether privilege would help.
    pub fn explain(&self, needed: &str) -> String {
        let examples: Vec<String> = self.examples.iter().map(ToString::to_string).collect();
        let more = if self.count > self.examples.len() as u64 {
            ", ..."
        } else {
            ""
        };
        format!(
            "{} process{} could not be looked into ({}{more}){}",
            self.count,
            if self.count == 1 { "" } else { "es" },
            examples.join(", "),
            if self.privileged {
                format!(", even with {needed}")
            } else {
                format!(" (run as root, or grant {needed})")
            }
        )
    }
}

/// `comm[pid]: error`, the name escaped.
impl fmt::Display for RefusedProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.comm {
            Some(comm) => write!(f, "{}[{}]: {}", printable(comm), self.pid, self.error),
            None => write!(f, "pid {}: {}", self.pid, self.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_which_process_refused_and_whether_privilege_helps() {
        let mut r = Refused::default();
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        r.add(1, Some("systemd".into()), &denied);
        let as_root = Refused {
            privileged: true,
            ..r.clone()
        };
        assert_eq!(
            as_root.explain("CAP_SYS_PTRACE"),
            "1 process could not be looked into (systemd[1]: Permission denied (os error 13)), \
             even with CAP_SYS_PTRACE"
        );
        for pid in 2..10 {
            r.add(pid, None, &denied);
        }
        let text = r.explain("CAP_SYS_PTRACE");
        assert!(
            text.starts_with("9 processes could not be looked into (systemd[1]: "),
            "{text}"
        );
        assert!(text.contains("pid 2: Permission denied"), "{text}");
        assert!(
            text.ends_with(", ...) (run as root, or grant CAP_SYS_PTRACE)"),
            "{text}"
        );
        assert_eq!(r.examples.len(), EXAMPLES);
    }
}
