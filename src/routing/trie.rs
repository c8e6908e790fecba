//! Longest-prefix match for allowed IPs: a multibit trie, 8 bits per level, keys
//! left-aligned in a u128 (IPv4 in the top 32 bits of a trie of its own).
//!
//! Each node holds the prefixes that end within its 8 bits as a complete binary tree of 511
//! positions (ART's numbering: a prefix of `r` bits `b` is at `2^r + b`), and its children by
//! next octet; both are popcount-compressed arrays behind bitmaps, so a node costs its
//! entries, not 256 slots (the layout of Tailscale's BART). A subtree holding one prefix is a
//! leaf in its parent's child array (path compression), so a million random /32s make about
//! three levels of nodes, not 24 of a binary trie. A lookup walks at most 4 nodes for IPv4:
//! per level one bitmap test for a child and one 512-bit AND for "does any prefix here cover
//! the address"; the best prefix's position is worked out once, at the end.
//!
//! Persistent: nodes are shared (`Arc`) between a trie and its clones, and a change copies
//! only the nodes on its path (`Arc::make_mut`). The control thread publishes a snapshot with
//! an O(1) clone; adding or removing a prefix costs its path, not the table.

use std::sync::Arc;

mod node;
mod wide;

use super::mask;
use node::{home_depth, octet, Child, Node, Top};
use wide::{Wide, WIDE_AT};

/// The root need not be the node of the empty prefix: it is the deepest node that still holds
/// every entry (`top`, its depth and path), so a table of addresses under one /48 starts its
/// walks six levels down instead of passing six nodes of one child each. A big table's root
/// is wide (see `wide`).
#[derive(Clone, Debug)]
pub struct Trie<V> {
    root: Root<V>,
    top: Top,
    len: usize,
    /// `WIDE_AT`, but smaller in tests so that small tables go wide and back.
    wide_at: usize,
}

#[derive(Clone, Debug)]
enum Root<V> {
    Narrow(Arc<Node<V>>),
    Wide(Wide<V>),
}

impl<V> Default for Root<V> {
    fn default() -> Self {
        Root::Narrow(Arc::default())
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie { root: Root::default(), top: Top::default(), len: 0, wide_at: WIDE_AT }
    }
}

impl<V: Clone> Trie<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts or replaces the value of `key/len` (host bits are ignored).
    pub fn insert(&mut self, key: u128, len: u8, value: V) -> Option<V> {
        let len = len.min(128);
        let key = key & mask(len);
        if self.len == 0 {
            self.root = Root::default();
            self.top = Top::new(home_depth(len), key);
        } else if !self.top.holds(key, len) {
            self.lift_root(key, len);
        }
        let old = match &mut self.root {
            Root::Narrow(node) => Node::insert_at(Arc::make_mut(node), self.top.depth, key, len, value),
            Root::Wide(wide) => wide.insert(self.top.depth, key, len, value),
        };
        if old.is_none() {
            self.len += 1;
            self.settle();
        }
        old
    }

    /// The root as a narrow node (a wide one is converted).
    fn take_narrow_root(&mut self) -> Arc<Node<V>> {
        match std::mem::take(&mut self.root) {
            Root::Narrow(node) => node,
            Root::Wide(wide) => Arc::new(wide.into_narrow(self.top)),
        }
    }

    /// A table that grew to `wide_at` entries gets a wide root; one that shrank under half of
    /// that (the gap keeps a table at the edge from converting on every change) a narrow one.
    fn settle(&mut self) {
        let convert = match &self.root {
            Root::Narrow(_) => self.len >= self.wide_at && self.top.depth <= 14,
            Root::Wide(_) => self.len < self.wide_at / 2,
        };
        if convert {
            self.root = match &self.root {
                Root::Narrow(node) => Root::Wide(Wide::from_narrow(node, self.top)),
                Root::Wide(_) => Root::Narrow(self.take_narrow_root()),
            };
        }
    }

    /// Puts the root high enough to hold `key/len` too: a chain of one-child nodes from the
    /// new root's depth down to the old root.
    fn lift_root(&mut self, key: u128, len: u8) {
        let shared_octets = ((key ^ self.top.path).leading_zeros() / 8) as usize;
        let depth = self.top.depth.min(home_depth(len)).min(shared_octets);
        let mut below = self.take_narrow_root();
        for d in (depth..self.top.depth).rev() {
            let mut node = Node::default();
            node.insert_child(octet(self.top.path, d), Child::Node(below));
            below = Arc::new(node);
        }
        self.root = Root::Narrow(below);
        self.top = Top::new(depth, self.top.path);
    }

    /// After a removal: the root goes down while it is a node with no prefixes and one child
    /// that is a node, and an empty trie starts again from the top. A wide root that may go
    /// down (everything under one cell, which is rare: the prefix that lifted it went) is made
    /// narrow for that, and wide again below.
    fn lower_root(&mut self) {
        if self.len == 0 {
            *self = Trie { wide_at: self.wide_at, ..Trie::default() };
            return;
        }
        if let Root::Wide(wide) = &self.root {
            if !wide.may_go_down() {
                return;
            }
            self.root = Root::Narrow(self.take_narrow_root());
            self.lower_root();
            self.settle();
            return;
        }
        while let Root::Narrow(root) = &self.root {
            if !root.prefixes.is_empty() || root.children.len() != 1 {
                return;
            }
            let Some(o) = root.child_bits.ones().next() else { return };
            let Some(Child::Node(next)) = root.child(o).cloned() else { return };
            let depth = self.top.depth;
            self.top = Top::new(depth + 1, self.top.path | ((o as u128) << (120 - 8 * depth)));
            self.root = Root::Narrow(next);
        }
    }

    /// The value of the longest prefix containing `key`.
    pub fn lookup(&self, key: u128) -> Option<&V> {
        if (key ^ self.top.path) & self.top.mask != 0 {
            return None;
        }
        // The key's octets from the root's down, each in turn in the top byte: constant shifts,
        // where `octet(key, depth)` would shift a u128 by a variable amount at every level.
        let rest = key << (8 * self.top.depth);
        match &self.root {
            Root::Narrow(node) => Node::walk(node, rest, key, None),
            Root::Wide(wide) => wide.lookup(key, rest),
        }
    }

    /// The value stored for exactly `key/len`.
    fn get_exact(&self, key: u128, len: u8) -> Option<&V> {
        if !self.top.holds(key, len) {
            return None;
        }
        match &self.root {
            Root::Narrow(node) => Node::exact_in(node, self.top.depth, key, len),
            Root::Wide(wide) => wide.exact(self.top.depth, key, len),
        }
    }

    /// Removes exactly `key/len`.
    pub fn remove(&mut self, key: u128, len: u8) -> Option<V> {
        let len = len.min(128);
        let key = key & mask(len);
        // Absent: no path is copied for nothing.
        self.get_exact(key, len)?;
        let removed = match &mut self.root {
            Root::Narrow(node) => Node::remove_at(Arc::make_mut(node), self.top.depth, key, len),
            Root::Wide(wide) => wide.remove(self.top.depth, key, len),
        };
        if removed.is_some() {
            self.len -= 1;
            self.settle();
            self.lower_root();
        }
        removed
    }

    /// Every (key, len, value).
    pub fn entries(&self) -> Vec<(u128, u8, V)> {
        let mut out = Vec::with_capacity(self.len);
        match &self.root {
            Root::Narrow(node) => Node::entries_at(node, self.top.depth, self.top.path, &mut out),
            Root::Wide(wide) => wide.entries(self.top, &mut out),
        }
        out
    }
}

impl<V> Trie<V> {
    /// A trie whose root turns wide at `wide_at` entries instead of `WIDE_AT` (262,144): for
    /// tests and the fuzzer, which reach the wide root's paths with small tables.
    pub fn with_wide_at(wide_at: usize) -> Self {
        Trie { wide_at: wide_at.max(1), ..Trie::default() }
    }
}

#[cfg(test)]
impl<V: Clone + PartialEq + std::fmt::Debug> Trie<V> {
    fn narrow(&self) -> &Node<V> {
        match &self.root {
            Root::Narrow(node) => node,
            Root::Wide(_) => panic!("the root is wide"),
        }
    }

    fn is_wide(&self) -> bool {
        matches!(self.root, Root::Wide(_))
    }

    /// The wide root's cells agree with its prefixes.
    fn check(&self) {
        if let Root::Wide(wide) = &self.root {
            wide.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The kernel's "horrible_allowedips": a list scanned for the longest match.
    fn naive_lookup(list: &[(u128, u8, u32)], key: u128) -> Option<u32> {
        list.iter().filter(|(k, l, _)| (key ^ k) & mask(*l) == 0).max_by_key(|(_, l, _)| *l).map(|(_, _, v)| *v)
    }

    fn naive_insert(list: &mut Vec<(u128, u8, u32)>, key: u128, len: u8, v: u32) {
        let key = key & mask(len);
        list.retain(|(k, l, _)| !(*k == key && *l == len));
        list.push((key, len, v));
    }

    /// A clone is a snapshot: changes to either side after the clone leave the other as it
    /// was, and every snapshot still answers like a linear scan of its own entries.
    #[test]
    fn clones_are_independent_snapshots() {
        // Narrow throughout, then a table that goes wide at 400 entries and narrow again.
        for wide_at in [WIDE_AT, 400] {
            snapshots_hold(wide_at);
        }
    }

    fn snapshots_hold(wide_at: usize) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut trie = Trie::with_wide_at(wide_at);
        let mut list = Vec::new();
        let mut snapshots = Vec::new();
        for round in 0..60u32 {
            let removing = if round < 40 { 0.3 } else { 0.9 };
            for _ in 0..50 {
                let (key, len) = (rng.gen::<u128>(), rng.gen_range(0..=32u8) * 4);
                if rng.gen_bool(removing) && !list.is_empty() {
                    let (k, l, _) = list.swap_remove(rng.gen_range(0..list.len()));
                    assert!(trie.remove(k, l).is_some());
                } else {
                    trie.insert(key, len, round);
                    naive_insert(&mut list, key, len, round);
                }
            }
            snapshots.push((trie.clone(), list.clone()));
        }
        let wide = snapshots.iter().filter(|(snap, _)| snap.is_wide()).count();
        assert_eq!(wide > 0 && wide < snapshots.len(), wide_at < 1000, "went wide and back ({wide})");
        for (snap, list) in &snapshots {
            snap.check();
            assert_eq!(snap.len(), list.len());
            for _ in 0..200 {
                let probe = rng.gen::<u128>();
                assert_eq!(snap.lookup(probe).copied(), naive_lookup(list, probe));
            }
            for (k, _, _) in list {
                assert_eq!(snap.lookup(*k).copied(), naive_lookup(list, *k));
            }
        }
    }

    /// Removal leaves no empty node behind, and a subtree down to one prefix is a leaf again:
    /// a table that shrank costs what it holds.
    #[test]
    fn removal_compacts_the_tree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut trie = Trie::default();
        let keys: Vec<(u128, u8)> = (0..2000)
            .map(|_| ((rng.gen::<u32>() as u128 & 0x00ff_ffff) << 96 | (10u128 << 120), rng.gen_range(9..=32)))
            .collect();
        for (i, &(k, l)) in keys.iter().enumerate() {
            trie.insert(k, l, i);
        }
        let n = trie.len();
        let mut removed = 0;
        for &(k, l) in &keys {
            removed += usize::from(trie.remove(k, l).is_some());
        }
        assert_eq!(removed, n);
        assert!(trie.is_empty() && trie.narrow().is_empty(), "an empty trie has an empty root");
        // Two /32s under one /24: a node; remove one and the other is a leaf of the root's child.
        // (A prefix under another first octet keeps the root at the top for these checks.)
        let v4 = |a: u8, b: u8, c: u8, d: u8| (u32::from_be_bytes([a, b, c, d]) as u128) << 96;
        trie.insert(v4(200, 0, 0, 1), 32, 0);
        trie.insert(v4(10, 1, 2, 3), 32, 1);
        assert!(matches!(trie.narrow().child(10), Some(Child::Leaf(_))), "one prefix in a subtree is a leaf");
        trie.insert(v4(10, 1, 2, 4), 32, 2);
        assert!(matches!(trie.narrow().child(10), Some(Child::Node(_))));
        trie.remove(v4(10, 1, 2, 3), 32);
        match trie.narrow().child(10) {
            Some(Child::Leaf(leaf)) => assert_eq!((leaf.key(), leaf.len, leaf.value), (v4(10, 1, 2, 4), 32, 2)),
            _ => panic!("the subtree did not collapse to a leaf"),
        }
        assert_eq!(trie.lookup(v4(10, 1, 2, 4)), Some(&2));
        // A node left with one prefix of its own collapses too, rebuilt from its path.
        trie.insert(v4(10, 1, 0, 0), 16, 3);
        trie.remove(v4(10, 1, 2, 4), 32);
        match trie.narrow().child(10) {
            Some(Child::Leaf(leaf)) => assert_eq!((leaf.key(), leaf.len, leaf.value), (v4(10, 1, 0, 0), 16, 3)),
            _ => panic!("a node with one prefix did not collapse to a leaf"),
        }
        assert_eq!(trie.lookup(v4(10, 1, 9, 9)), Some(&3));
    }

    /// The root sits at the deepest node that holds every entry, moves up for a prefix outside
    /// it and back down when that prefix goes, and answers like the top for what lies outside.
    #[test]
    fn the_root_follows_the_entries() {
        let v6 = |s: &str| u128::from(s.parse::<std::net::Ipv6Addr>().unwrap());
        let mut t = Trie::default();
        t.insert(v6("fd00:1:2::1"), 128, 1);
        assert_eq!((t.top.depth, t.top.path), (15, v6("fd00:1:2::")));
        t.insert(v6("fd00:1:2::2"), 128, 2);
        t.insert(v6("fd00:1:2:3::"), 64, 3);
        assert_eq!((t.top.depth, t.top.path), (7, v6("fd00:1:2::")), "the /56 all three share");
        assert_eq!(t.lookup(v6("fd00:1:2::2")), Some(&2));
        assert_eq!(t.lookup(v6("fd00:1:2:3::9")), Some(&3));
        assert_eq!(t.lookup(v6("fd00:1:3::1")), None, "outside the root's path");
        t.insert(0, 0, 9);
        assert_eq!(t.top.depth, 0, "a /0 needs the top");
        assert_eq!(t.lookup(v6("fd00:1:3::1")), Some(&9));
        assert_eq!(t.lookup(v6("fd00:1:2::1")), Some(&1));
        assert_eq!(t.remove(0, 0), Some(9));
        assert_eq!((t.top.depth, t.top.path), (7, v6("fd00:1:2::")), "and goes back down without it");
        assert_eq!(t.lookup(v6("fd00:1:3::1")), None);
        assert_eq!(t.remove(v6("fd00:1:2::2"), 128), Some(2));
        assert_eq!(t.remove(v6("fd00:1:2:3::"), 64), Some(3));
        assert_eq!((t.top.depth, t.top.path), (7, v6("fd00:1:2::")), "a leaf child does not move the root");
        assert_eq!(t.entries(), vec![(v6("fd00:1:2::1"), 128, 1)]);
        assert_eq!(t.remove(v6("fd00:1:2::1"), 128), Some(1));
        assert_eq!((t.top.depth, t.len()), (0, 0));
        assert_eq!(t.lookup(v6("fd00:1:2::1")), None);
    }

    /// A wide root under a long path (a v6 table under one /32) that a prefix outside it
    /// lifts, and that prefix removed again: every answer matches a linear scan throughout.
    #[test]
    fn a_wide_root_is_lifted_and_answers_like_a_scan() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let base = 0x2001_0db8u128 << 96;
        let mut trie = Trie::with_wide_at(64);
        let mut list = Vec::new();
        for i in 0..400u32 {
            let key = base | (rng.gen::<u128>() >> 40);
            let len = rng.gen_range(40..=128);
            trie.insert(key, len, i);
            naive_insert(&mut list, key, len, i);
        }
        assert!(trie.is_wide() && trie.top.depth == 4, "wide under the /32 ({})", trie.top.depth);
        let probes: Vec<u128> = (0..3000)
            .map(|i| {
                if i % 2 == 0 {
                    base | (rng.gen::<u128>() >> 40)
                } else {
                    list[i % list.len()].0 | (i as u128 & 0xff)
                }
            })
            .collect();
        let agree = |trie: &Trie<u32>, list: &[(u128, u8, u32)]| {
            trie.check();
            for &p in &probes {
                assert_eq!(trie.lookup(p).copied(), naive_lookup(list, p), "{p:x}");
            }
            assert_eq!(trie.lookup(0x2002u128 << 112).copied(), naive_lookup(list, 0x2002u128 << 112));
        };
        agree(&trie, &list);
        for (key, len) in [(base, 16u8), (0, 0), (0x2002u128 << 112, 16)] {
            trie.insert(key, len, 9000 + len as u32);
            naive_insert(&mut list, key, len, 9000 + len as u32);
            assert!(trie.is_wide() && trie.top.depth < 4, "lifted and wide again");
            agree(&trie, &list);
        }
        for (key, len) in [(base, 16u8), (0, 0), (0x2002u128 << 112, 16)] {
            assert_eq!(trie.remove(key, len), Some(9000 + len as u32));
            list.retain(|e| !(e.0 == key & mask(len) && e.1 == len));
            agree(&trie, &list);
        }
        assert!(trie.is_wide() && trie.top.depth == 4, "back down under the /32 ({})", trie.top.depth);
        let mut e = trie.entries();
        e.sort();
        list.sort();
        assert_eq!(e, list);
    }

    #[test]
    fn small_cases() {
        let mut t = Trie::default();
        let v4 = |a: u8, b: u8, c: u8, d: u8| (u32::from_be_bytes([a, b, c, d]) as u128) << 96;
        t.insert(v4(10, 0, 0, 0), 8, 1);
        t.insert(v4(10, 1, 0, 0), 16, 2);
        t.insert(v4(10, 1, 2, 3), 32, 3);
        t.insert(0, 0, 9);
        assert_eq!(t.lookup(v4(10, 1, 2, 3)), Some(&3));
        assert_eq!(t.lookup(v4(10, 1, 2, 4)), Some(&2));
        assert_eq!(t.lookup(v4(10, 2, 2, 4)), Some(&1));
        assert_eq!(t.lookup(v4(11, 2, 2, 4)), Some(&9));
        assert_eq!(t.remove(v4(10, 1, 0, 0), 16), Some(2));
        assert_eq!(t.lookup(v4(10, 1, 2, 4)), Some(&1));
        assert_eq!(t.remove(v4(10, 1, 0, 0), 16), None);
        assert_eq!(t.remove(0, 0), Some(9));
        assert_eq!(t.lookup(v4(11, 2, 2, 4)), None);
        assert_eq!(t.len(), 2);
        // Host bits are masked on insert.
        t.insert(v4(192, 168, 1, 77), 24, 5);
        assert_eq!(t.entries().iter().find(|e| e.2 == 5).map(|e| (e.0, e.1)), Some((v4(192, 168, 1, 0), 24)));
    }

    #[test]
    fn random_against_linear_scan() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        // Rounds 4-7 repeat 0-3 with a root that goes wide at 700 entries.
        for round in 0..8 {
            let wide_at = if round < 4 { WIDE_AT } else { 700 };
            let mut trie = Trie::with_wide_at(wide_at);
            let mut list = Vec::new();
            // Clustered keys so prefixes nest and share paths.
            let base: u128 = rng.gen();
            for i in 0..4000u32 {
                let key =
                    if rng.gen_bool(0.7) { base ^ (rng.gen::<u128>() >> rng.gen_range(0..64)) } else { rng.gen() };
                let len = if round % 2 == 0 { rng.gen_range(0..=32) } else { rng.gen_range(0..=128) };
                trie.insert(key, len, i);
                naive_insert(&mut list, key, len, i);
                if i % 5 == 0 {
                    let (k, l, _) = list[rng.gen_range(0..list.len())];
                    assert!(trie.remove(k, l).is_some());
                    list.retain(|e| !(e.0 == k && e.1 == l));
                }
            }
            assert_eq!(trie.len(), list.len());
            assert_eq!(trie.is_wide(), round >= 4);
            trie.check();
            for _ in 0..20_000 {
                let probe = if rng.gen_bool(0.5) {
                    let (k, l, _) = list[rng.gen_range(0..list.len())];
                    k | (rng.gen::<u128>() & !mask(l))
                } else {
                    base ^ (rng.gen::<u128>() >> rng.gen_range(0..128))
                };
                assert_eq!(trie.lookup(probe).copied(), naive_lookup(&list, probe));
            }
            let mut e: Vec<_> = trie.entries();
            let mut l = list.clone();
            e.sort();
            l.sort();
            assert_eq!(e, l);
            // Shrink to under half the threshold: a wide root turns narrow on the way.
            while list.len() > 300 {
                let (k, l, _) = list.swap_remove(rng.gen_range(0..list.len()));
                assert!(trie.remove(k, l).is_some());
                if list.len() % 250 == 0 {
                    trie.check();
                    for _ in 0..500 {
                        let probe = base ^ (rng.gen::<u128>() >> rng.gen_range(0..128));
                        assert_eq!(trie.lookup(probe).copied(), naive_lookup(&list, probe));
                    }
                }
            }
            assert!(!trie.is_wide());
            let mut e: Vec<_> = trie.entries();
            e.sort();
            list.sort();
            assert_eq!(e, list);
        }
    }
}
