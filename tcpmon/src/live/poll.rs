//! The fallback source: successive /proc snapshots, their differences turned into
//! inferred transitions. Pure: snapshots in, transitions out.
use std::collections::HashMap;

use crate::{
    host::proc_net::Socket,
    model::{Endpoints, TcpState, Transition, Tuple},
};

/// A socket's identity across snapshots: its inode while it has one (full sockets), else
/// its tuple (TIME_WAIT and request mini-sockets have inode 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Inode(u64),
    Mini(Tuple, bool),
}

/// One snapshot, indexed for diffing.
#[derive(Clone, Debug, Default)]
pub struct Index {
    sockets: HashMap<Key, Socket>,
}

fn tuple(s: &Socket) -> Tuple {
    Tuple::new((s.local_ip, s.local_port), (s.remote_ip, s.remote_port))
}

impl Index {
    pub fn new<'a>(sockets: impl IntoIterator<Item = &'a Socket>) -> Self {
        let sockets = sockets
            .into_iter()
            .map(|s| {
                let key = if s.inode != 0 {
                    Key::Inode(s.inode)
                } else {
                    Key::Mini(tuple(s), s.state == TcpState::TimeWait)
                };
                (key, *s)
            })
            .collect();
        Self { sockets }
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

fn transition(s: &Socket, old: TcpState, new: TcpState, ts_ns: u64, id: u64) -> Transition {
    Transition {
        at: Endpoints {
            ts_ns,
            skaddr: id,
            netns: 0,
            family: s.family,
            local_ip: s.local_ip,
            local_port: s.local_port,
            remote_ip: s.remote_ip,
            remote_port: s.remote_port,
        },
        old,
        new,
        task: None,
    }
}

/// What changed between two snapshots, as transitions: state changes, sockets that
/// appeared (from CLOSE) or vanished (to CLOSE). A full socket that vanished while a
/// TIME_WAIT with its tuple appeared is one transition into TIME_WAIT. Intermediate states
/// between two polls are invisible, so these are marked inferred by the caller.
pub fn diff(before: &Index, after: &Index, ts_ns: u64) -> Vec<Transition> {
    let mut out = Vec::new();
    let mut became_time_wait: HashMap<Tuple, &Socket> = after
        .sockets
        .iter()
        .filter(|(k, s)| {
            matches!(k, Key::Mini(_, true))
                && !before.sockets.contains_key(k)
                && s.state == TcpState::TimeWait
        })
        .map(|(_, s)| (tuple(s), s))
        .collect();
    let id = |k: &Key| match k {
        Key::Inode(i) => *i,
        Key::Mini(t, _) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            t.hash(&mut h);
            h.finish()
        }
    };
    for (key, old) in &before.sockets {
        match after.sockets.get(key) {
            Some(new) if new.state != old.state => {
                out.push(transition(new, old.state, new.state, ts_ns, id(key)))
            }
            Some(_) => {}
            None => match became_time_wait
                .remove(&tuple(old))
                .filter(|_| old.state != TcpState::TimeWait)
            {
                Some(tw) => out.push(transition(
                    tw,
                    old.state,
                    TcpState::TimeWait,
                    ts_ns,
                    id(key),
                )),
                None => out.push(transition(old, old.state, TcpState::Close, ts_ns, id(key))),
            },
        }
    }
    for (key, new) in &after.sockets {
        // A new TIME_WAIT row already reported as its full socket's last transition is
        // not a birth of its own.
        let reported =
            matches!(key, Key::Mini(_, true)) && !became_time_wait.contains_key(&tuple(new));
        if !before.sockets.contains_key(key) && !reported {
            out.push(transition(new, TcpState::Close, new.state, ts_ns, id(key)));
        }
    }
    out.sort_by_key(|t| (t.at.local_port, t.at.remote_port, t.old as u8, t.new as u8));
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn s(state: TcpState, lport: u16, rport: u16, inode: u64) -> Socket {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        Socket::new(state, (lo, lport), (lo, rport), inode)
    }

    fn names(ts: &[Transition]) -> Vec<String> {
        ts.iter()
            .map(|t| {
                format!(
                    "{}:{} {}->{}",
                    t.at.local_port,
                    t.at.remote_port,
                    t.old.name(),
                    t.new.name()
                )
            })
            .collect()
    }

    #[test]
    fn changes_appearances_and_time_wait_are_inferred() {
        let before = Index::new(&[
            s(TcpState::Listen, 80, 0, 1),
            s(TcpState::Established, 80, 5000, 2),
            s(TcpState::Established, 5001, 80, 3),
            s(TcpState::TimeWait, 5009, 80, 0),
        ]);
        let after = Index::new(&[
            s(TcpState::Listen, 80, 0, 1),
            s(TcpState::CloseWait, 80, 5000, 2),
            s(TcpState::TimeWait, 5001, 80, 0),
            s(TcpState::Established, 5002, 80, 4),
        ]);
        assert_eq!(
            names(&diff(&before, &after, 7)),
            vec![
                "80:5000 ESTABLISHED->CLOSE_WAIT",
                "5001:80 ESTABLISHED->TIME_WAIT",
                "5002:80 CLOSE->ESTABLISHED",
                "5009:80 TIME_WAIT->CLOSE",
            ]
        );
        assert!(diff(&after, &after, 8).is_empty());
    }
}
