//! Which connections `serve` keeps when more arrive than it serves at once. Pure: the
//! caller says when each connection last made progress and whether it has sent a whole
//! request; this decides whom to admit and whom to close.
//!
//! A scraper connects and sends its request at once; an attacker's connection either
//! sends nothing, or requests and never reads. So when a peer reaches its share, or the
//! server its bound, the oldest connection that is not being served usefully gives way
//! to the new one: one that never sent a byte of a request (nothing parsed, nothing
//! waiting to be read), or one that has made no progress for [`STALL_EVICTABLE_MS`].
//! Only when every connection is busy making progress is the new one refused.
//!
//! "Nothing waiting" matters under a flood: the server accepts a burst before it runs
//! any connection's task, and a scraper's request can sit unread in its socket while
//! newer attackers arrive; it must not be taken for an idle connection.
use std::{collections::BTreeMap, net::IpAddr};

/// A connection that moved no byte for this long may be closed for a newcomer.
pub const STALL_EVICTABLE_MS: u64 = 1_000;

/// What is known of a connection when a newcomer arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    /// Requests it has sent whole.
    pub requests: u64,
    /// When it last read or wrote a byte (ms on the caller's monotonic clock).
    pub last_progress_ms: u64,
    /// Bytes from the peer are waiting in its socket, not read yet.
    pub waiting_input: bool,
}

impl Activity {
    fn evictable(self, now_ms: u64) -> bool {
        (self.requests == 0 && !self.waiting_input)
            || now_ms.saturating_sub(self.last_progress_ms) >= STALL_EVICTABLE_MS
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve it under this id, after closing `evict` (if any).
    Admit { id: u64, evict: Option<u64> },
    /// Close it at once: every connection of its peer (or of the server) is busy.
    Refuse,
}

#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_peer: usize,
    next_id: u64,
    /// id (in arrival order) -> peer.
    open: BTreeMap<u64, IpAddr>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_peer: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_peer: max_per_peer.max(1),
            next_id: 0,
            open: BTreeMap::new(),
        }
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// A connection from `peer` arrived; `activity(id)` tells how each open one is doing.
    pub fn admit(
        &mut self,
        peer: IpAddr,
        now_ms: u64,
        activity: impl Fn(u64) -> Activity,
    ) -> Decision {
        let from_peer = self.open.values().filter(|p| **p == peer).count();
        let evict = if from_peer >= self.max_per_peer {
            match self.oldest_evictable(now_ms, &activity, Some(peer)) {
                Some(id) => Some(id),
                None => return Decision::Refuse,
            }
        } else if self.open.len() >= self.max_total {
            match self.oldest_evictable(now_ms, &activity, None) {
                Some(id) => Some(id),
                None => return Decision::Refuse,
            }
        } else {
            None
        };
        if let Some(id) = evict {
            self.open.remove(&id);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(id, peer);
        Decision::Admit { id, evict }
    }

    /// The connection ended (or was evicted: then this does nothing).
    pub fn closed(&mut self, id: u64) {
        self.open.remove(&id);
    }

    fn oldest_evictable(
        &self,
        now_ms: u64,
        activity: &impl Fn(u64) -> Activity,
        peer: Option<IpAddr>,
    ) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, p)| peer.is_none_or(|peer| **p == peer))
            .map(|(id, _)| *id)
            .find(|id| activity(*id).evictable(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    struct World {
        admission: Admission,
        activity: HashMap<u64, Activity>,
        now: u64,
    }

    impl World {
        fn new(total: usize, per_peer: usize) -> Self {
            Self {
                admission: Admission::new(total, per_peer),
                activity: HashMap::new(),
                now: 10_000,
            }
        }

        fn connect(&mut self, peer: IpAddr) -> Decision {
            let activity = self.activity.clone();
            let decision = self.admission.admit(peer, self.now, |id| activity[&id]);
            if let Decision::Admit { id, evict } = decision {
                self.activity.insert(
                    id,
                    Activity {
                        requests: 0,
                        last_progress_ms: self.now,
                        waiting_input: false,
                    },
                );
                if let Some(gone) = evict {
                    self.activity.remove(&gone);
                }
            }
            decision
        }

        fn request(&mut self, id: u64) {
            let a = self.activity.get_mut(&id).unwrap();
            a.requests += 1;
            a.last_progress_ms = self.now;
        }
    }

    #[test]
    fn a_peer_flooding_idle_connections_evicts_only_its_own() {
        let mut w = World::new(16, 4);
        let Decision::Admit { id: scraper, .. } = w.connect(ip(1)) else {
            panic!("admitted")
        };
        w.request(scraper);
        for _ in 0..100 {
            assert!(matches!(w.connect(ip(2)), Decision::Admit { .. }));
        }
        assert!(
            w.activity.contains_key(&scraper),
            "the scraper kept its connection"
        );
        assert_eq!(w.admission.open(), 5);
    }

    #[test]
    fn a_scraper_sharing_the_attackers_address_is_served_once_it_has_asked() {
        let mut w = World::new(16, 4);
        for _ in 0..4 {
            w.connect(ip(1));
        }
        let Decision::Admit { id: scraper, evict } = w.connect(ip(1)) else {
            panic!("admitted")
        };
        assert_eq!(evict, Some(0), "the oldest idle one gave way");
        w.request(scraper);
        for _ in 0..50 {
            w.connect(ip(1));
        }
        assert!(w.activity.contains_key(&scraper));
    }

    #[test]
    fn a_request_waiting_unread_is_not_idle() {
        // The server accepts a burst before any connection's task runs: the scraper's
        // request is in its socket, not parsed yet, while attackers keep arriving.
        let mut w = World::new(16, 4);
        let Decision::Admit { id: scraper, .. } = w.connect(ip(1)) else {
            panic!("admitted")
        };
        w.activity.get_mut(&scraper).unwrap().waiting_input = true;
        for _ in 0..50 {
            assert!(matches!(w.connect(ip(1)), Decision::Admit { .. }));
        }
        assert!(w.activity.contains_key(&scraper), "the scraper was evicted");
        // Unread for a whole stall: then it may go too.
        w.now += STALL_EVICTABLE_MS;
        for _ in 0..4 {
            w.connect(ip(1));
        }
        assert!(!w.activity.contains_key(&scraper));
    }

    #[test]
    fn busy_connections_are_kept_and_the_newcomer_refused() {
        let mut w = World::new(3, 3);
        for peer in 1..=3 {
            let Decision::Admit { id, .. } = w.connect(ip(peer)) else {
                panic!("admitted")
            };
            w.request(id);
        }
        assert_eq!(w.connect(ip(9)), Decision::Refuse);
        // Stalled past the bound: now they give way, oldest first.
        w.now += STALL_EVICTABLE_MS;
        assert_eq!(
            w.connect(ip(9)),
            Decision::Admit {
                id: 3,
                evict: Some(0)
            }
        );
    }

    #[test]
    fn the_server_bound_evicts_across_peers_oldest_first() {
        let mut w = World::new(4, 4);
        for peer in 1..=4 {
            w.connect(ip(peer));
        }
        assert_eq!(
            w.connect(ip(5)),
            Decision::Admit {
                id: 4,
                evict: Some(0)
            }
        );
        w.admission.closed(2);
        assert_eq!(w.connect(ip(6)), Decision::Admit { id: 5, evict: None });
        assert_eq!(w.admission.open(), 4);
    }
}
