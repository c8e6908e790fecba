//! A path-compressed binary trie for longest-prefix match, keys left-aligned in a u128.
//!
//! Persistent: nodes are shared (`Arc`) between a trie and its clones, and a change copies
//! only the nodes on its path (`Arc::make_mut`). So the control thread publishes a snapshot
//! with an O(1) clone, and adding or removing a prefix on a table of a million costs its path,
//! not the table.

use std::sync::Arc;

use super::mask;

#[derive(Clone, Debug)]
struct Node<V> {
    key: u128,
    len: u8,
    value: Option<V>,
    children: [Option<Arc<Node<V>>>; 2],
}

fn bit(key: u128, at: u8) -> usize {
    ((key >> (127 - at as u32)) & 1) as usize
}

fn common_prefix(a: u128, b: u128, max: u8) -> u8 {
    ((a ^ b).leading_zeros() as u8).min(max)
}

#[derive(Clone, Debug)]
pub struct Trie<V> {
    root: Option<Arc<Node<V>>>,
    len: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie { root: None, len: 0 }
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
        let key = key & mask(len);
        let (old, added) = Self::insert_at(&mut self.root, key, len, value);
        if added {
            self.len += 1;
        }
        old
    }

    /// Returns the replaced value and whether a new prefix was added.
    fn insert_at(slot: &mut Option<Arc<Node<V>>>, key: u128, len: u8, value: V) -> (Option<V>, bool) {
        enum Step {
            Leaf,
            Replace,
            Descend(usize),
            Split(u8),
        }
        let step = match slot.as_deref() {
            None => Step::Leaf,
            Some(node) => {
                let common = common_prefix(node.key, key, node.len.min(len));
                if common == node.len && common == len {
                    Step::Replace
                } else if common == node.len {
                    Step::Descend(bit(key, common))
                } else {
                    Step::Split(common)
                }
            }
        };
        let leaf = |value| Arc::new(Node { key, len, value: Some(value), children: [None, None] });
        match (step, slot.take()) {
            (Step::Leaf, _) | (_, None) => {
                *slot = Some(leaf(value));
                (None, true)
            }
            (Step::Replace, Some(mut node)) => {
                let old = Arc::make_mut(&mut node).value.replace(value);
                *slot = Some(node);
                let added = old.is_none();
                (old, added)
            }
            (Step::Descend(side), Some(mut node)) => {
                let result = Self::insert_at(&mut Arc::make_mut(&mut node).children[side], key, len, value);
                *slot = Some(node);
                result
            }
            // The new prefix and the node diverge, or the new one is shorter: a node at the
            // common prefix goes above the old one.
            (Step::Split(common), Some(old)) => {
                let old_side = bit(old.key, common);
                let mut parent = Node { key: key & mask(common), len: common, value: None, children: [None, None] };
                if common == len {
                    parent.value = Some(value);
                } else {
                    parent.children[1 - old_side] = Some(leaf(value));
                }
                parent.children[old_side] = Some(old);
                *slot = Some(Arc::new(parent));
                (None, true)
            }
        }
    }

    /// The value of the longest prefix containing `key`.
    pub fn lookup(&self, key: u128) -> Option<&V> {
        let mut best = None;
        let mut cur = self.root.as_deref();
        while let Some(node) = cur {
            if (key ^ node.key) & mask(node.len) != 0 {
                break;
            }
            if node.value.is_some() {
                best = node.value.as_ref();
            }
            if node.len == 128 {
                break;
            }
            cur = node.children[bit(key, node.len)].as_deref();
        }
        best
    }

    /// Removes exactly `key/len`.
    pub fn remove(&mut self, key: u128, len: u8) -> Option<V> {
        let key = key & mask(len);
        let removed = Self::remove_at(&mut self.root, key, len);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(slot: &mut Option<Arc<Node<V>>>, key: u128, len: u8) -> Option<V> {
        let node = slot.as_mut()?;
        if node.len > len || (key ^ node.key) & mask(node.len) != 0 {
            return None;
        }
        let node = Arc::make_mut(node);
        let removed = if node.len == len {
            node.value.take()
        } else {
            Self::remove_at(&mut node.children[bit(key, node.len)], key, len)
        };
        Self::compact(slot);
        removed
    }

    /// A node without a value and with fewer than two children is not needed.
    fn compact(slot: &mut Option<Arc<Node<V>>>) {
        let replacement = match slot.as_deref() {
            Some(node) if node.value.is_none() => match &node.children {
                [None, None] => None,
                [Some(only), None] | [None, Some(only)] => Some(only.clone()),
                _ => return,
            },
            _ => return,
        };
        *slot = replacement;
    }

    /// Removes every entry whose value matches; returns how many went.
    pub fn retain(&mut self, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let removed = Self::retain_at(&mut self.root, keep);
        self.len -= removed;
        removed
    }

    fn retain_at(slot: &mut Option<Arc<Node<V>>>, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let Some(node) = slot.as_mut() else { return 0 };
        let node = Arc::make_mut(node);
        let mut removed = 0;
        if node.value.as_ref().is_some_and(|v| !keep(v)) {
            node.value = None;
            removed += 1;
        }
        removed += Self::retain_at(&mut node.children[0], keep);
        removed += Self::retain_at(&mut node.children[1], keep);
        Self::compact(slot);
        removed
    }

    /// Every (key, len, value), in key order.
    pub fn entries(&self) -> Vec<(u128, u8, V)> {
        let mut out = Vec::with_capacity(self.len);
        let mut stack: Vec<&Node<V>> = self.root.as_deref().into_iter().collect();
        while let Some(node) = stack.pop() {
            if let Some(v) = &node.value {
                out.push((node.key, node.len, v.clone()));
            }
            stack.extend(node.children.iter().rev().flatten().map(|b| b.as_ref()));
        }
        out
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
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut trie = Trie::default();
        let mut list = Vec::new();
        let mut snapshots = Vec::new();
        for round in 0..40u32 {
            for _ in 0..50 {
                let (key, len) = (rng.gen::<u128>(), rng.gen_range(0..=32u8) * 4);
                if rng.gen_bool(0.3) && !list.is_empty() {
                    let (k, l, _) = list.swap_remove(rng.gen_range(0..list.len()));
                    assert!(trie.remove(k, l).is_some());
                } else {
                    trie.insert(key, len, round);
                    naive_insert(&mut list, key, len, round);
                }
            }
            snapshots.push((trie.clone(), list.clone()));
        }
        for (snap, list) in &snapshots {
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
        assert_eq!(t.retain(&mut |v| *v != 9), 1);
        assert_eq!(t.lookup(v4(11, 2, 2, 4)), None);
        assert_eq!(t.len(), 2);
        // Host bits are masked on insert.
        t.insert(v4(192, 168, 1, 77), 24, 5);
        assert_eq!(t.entries().iter().find(|e| e.2 == 5).map(|e| (e.0, e.1)), Some((v4(192, 168, 1, 0), 24)));
    }

    #[test]
    fn random_against_linear_scan() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for round in 0..4 {
            let mut trie = Trie::default();
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
            if round == 3 {
                trie.retain(&mut |v| v % 3 != 0);
                list.retain(|e| e.2 % 3 != 0);
                assert_eq!(trie.len(), list.len());
            }
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
        }
    }
}
