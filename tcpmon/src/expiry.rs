//! Entries that leave in expiry order, and can also be taken out early by key.
//!
//! TIME_WAIT needs both: a TIME_WAIT socket ends 60 s after it began, or earlier when a
//! new connection reuses its 4-tuple (the kernel kills it to let the new one in). Under
//! loopback churn the second is the rule (each ephemeral port comes back within a
//! second), so a plain queue would hold a minute of dead entries. Here every operation
//! is O(1) but an insert out of time order, which walks back from the newest entry.
use std::hash::Hash;

use rustc_hash::FxHashMap;

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Node<K, V> {
    key: K,
    expires_ns: u64,
    value: V,
    /// Toward the oldest / the newest entry (NIL at the ends); in the free list, `next`
    /// links free slots.
    prev: u32,
    next: u32,
}

/// A doubly linked list in expiry order, threaded through a slab, plus an index by key.
#[derive(Clone, Debug)]
pub struct ExpiryList<K, V> {
    nodes: Vec<Node<K, V>>,
    free: u32,
    oldest: u32,
    newest: u32,
    index: FxHashMap<K, u32>,
}

impl<K: Copy + Eq + Hash, V: Copy> Default for ExpiryList<K, V> {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: NIL,
            oldest: NIL,
            newest: NIL,
            index: FxHashMap::default(),
        }
    }
}

impl<K: Copy + Eq + Hash, V: Copy> ExpiryList<K, V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Adds an entry after every entry expiring at or before it; an entry already held
    /// under `key` is replaced and returned.
    pub fn insert(&mut self, key: K, expires_ns: u64, value: V) -> Option<(u64, V)> {
        let replaced = self.remove(&key);
        let mut after = self.newest;
        while after != NIL && self.nodes[after as usize].expires_ns > expires_ns {
            after = self.nodes[after as usize].prev;
        }
        let before = if after == NIL {
            self.oldest
        } else {
            self.nodes[after as usize].next
        };
        let node = Node {
            key,
            expires_ns,
            value,
            prev: after,
            next: before,
        };
        let slot = if self.free == NIL {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        } else {
            let slot = self.free;
            self.free = self.nodes[slot as usize].next;
            self.nodes[slot as usize] = node;
            slot
        };
        match after {
            NIL => self.oldest = slot,
            a => self.nodes[a as usize].next = slot,
        }
        match before {
            NIL => self.newest = slot,
            b => self.nodes[b as usize].prev = slot,
        }
        self.index.insert(key, slot);
        replaced
    }

    /// Takes out the entry held under `key`, wherever it is in the order.
    pub fn remove(&mut self, key: &K) -> Option<(u64, V)> {
        let slot = self.index.remove(key)?;
        Some(self.unlink(slot))
    }

    /// Takes out the oldest entry if it expires at or before `now_ns`.
    pub fn pop_expired(&mut self, now_ns: u64) -> Option<(K, u64, V)> {
        let oldest = self.nodes.get(self.oldest as usize)?;
        if oldest.expires_ns > now_ns {
            return None;
        }
        self.pop_oldest()
    }

    /// Takes out the oldest entry, expired or not.
    pub fn pop_oldest(&mut self) -> Option<(K, u64, V)> {
        let key = self.nodes.get(self.oldest as usize)?.key;
        let slot = self
            .index
            .remove(&key)
            .expect("every linked node is indexed");
        let (expires_ns, value) = self.unlink(slot);
        Some((key, expires_ns, value))
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, u64, &V)> + '_ {
        let mut at = self.oldest;
        std::iter::from_fn(move || {
            let node = self.nodes.get(at as usize)?;
            at = node.next;
            Some((&node.key, node.expires_ns, &node.value))
        })
    }

    /// Empties the list, keeping its memory for what comes next.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.index.clear();
        self.free = NIL;
        self.oldest = NIL;
        self.newest = NIL;
    }

    fn unlink(&mut self, slot: u32) -> (u64, V) {
        let Node {
            prev,
            next,
            expires_ns,
            value,
            ..
        } = self.nodes[slot as usize];
        match prev {
            NIL => self.oldest = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.newest = prev,
            n => self.nodes[n as usize].prev = prev,
        }
        self.nodes[slot as usize].next = self.free;
        self.nodes[slot as usize].prev = NIL;
        self.free = slot;
        (expires_ns, value)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn expires_in_order_and_leaves_early_by_key() {
        let mut list = ExpiryList::default();
        assert_eq!(list.insert("a", 10, 1), None);
        assert_eq!(list.insert("b", 30, 2), None);
        // Out of time order: goes between a and b.
        assert_eq!(list.insert("c", 20, 3), None);
        assert_eq!(list.len(), 3);
        assert_eq!(list.remove(&"c"), Some((20, 3)));
        assert_eq!(list.remove(&"c"), None);
        // Same key again: replaced, and placed by its new expiry.
        assert_eq!(list.insert("a", 40, 4), Some((10, 1)));
        assert_eq!(list.pop_expired(29), None);
        assert_eq!(list.pop_expired(30), Some(("b", 30, 2)));
        assert_eq!(
            list.iter().map(|(k, e, v)| (*k, e, *v)).collect::<Vec<_>>(),
            [("a", 40, 4)]
        );
        assert_eq!(list.pop_oldest(), Some(("a", 40, 4)));
        assert!(list.is_empty());
        assert_eq!(list.pop_oldest(), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u64),
        Remove(u8),
        PopExpired(u64),
        PopOldest,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..24, 0u64..100).prop_map(|(k, e)| Op::Insert(k, e)),
            2 => (0u8..24).prop_map(Op::Remove),
            2 => (0u64..100).prop_map(Op::PopExpired),
            1 => Just(Op::PopOldest),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Against a plain vector kept in (expiry, insertion) order.
        #[test]
        fn behaves_like_a_sorted_vector(ops in proptest::collection::vec(op(), 0..200)) {
            let mut list = ExpiryList::default();
            let mut model: Vec<(u8, u64, usize)> = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(k, e) => {
                        let old = model.iter().position(|m| m.0 == k).map(|i| model.remove(i));
                        let at = model.partition_point(|m| m.1 <= e);
                        model.insert(at, (k, e, step));
                        prop_assert_eq!(list.insert(k, e, step), old.map(|m| (m.1, m.2)));
                    }
                    Op::Remove(k) => {
                        let old = model.iter().position(|m| m.0 == k).map(|i| model.remove(i));
                        prop_assert_eq!(list.remove(&k), old.map(|m| (m.1, m.2)));
                    }
                    Op::PopExpired(now) => {
                        let expected = model.first().filter(|m| m.1 <= now).copied();
                        if expected.is_some() {
                            model.remove(0);
                        }
                        prop_assert_eq!(list.pop_expired(now), expected);
                    }
                    Op::PopOldest => {
                        let expected = (!model.is_empty()).then(|| model.remove(0));
                        prop_assert_eq!(list.pop_oldest(), expected);
                    }
                    Op::Clear => {
                        model.clear();
                        list.clear();
                    }
                }
                prop_assert_eq!(list.len(), model.len());
                let listed: Vec<(u8, u64, usize)> = list.iter().map(|(k, e, v)| (*k, e, *v)).collect();
                prop_assert_eq!(listed, model.clone());
            }
        }
    }
}
