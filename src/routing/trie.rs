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

use super::mask;

mod wide;
use wide::{Wide, WIDE_AT};

/// A fixed-size bitmap with rank (set bits below a position), for the compressed arrays. It
/// keeps, for each word, how many bits are set in the words before it, so a rank is one
/// popcount: the default x86-64 target has no popcount instruction, and four or eight software
/// popcounts per level were most of a lookup's arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bits<const W: usize> {
    words: [u64; W],
    before: [u16; W],
}

impl<const W: usize> Default for Bits<W> {
    fn default() -> Self {
        Bits { words: [0; W], before: [0; W] }
    }
}

impl<const W: usize> Bits<W> {
    fn test(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
        self.recount();
    }
    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
        self.recount();
    }
    fn recount(&mut self) {
        let mut total = 0;
        for (before, word) in self.before.iter_mut().zip(self.words) {
            *before = total;
            total += word.count_ones() as u16;
        }
    }
    /// How many set bits come before `i`: the position of `i`'s entry in its array.
    fn rank(&self, i: usize) -> usize {
        let (word, below) = (i / 64, (1u64 << (i % 64)) - 1);
        self.before[word] as usize + (self.words[word] & below).count_ones() as usize
    }
    /// The highest position set in both.
    fn highest_common(&self, other: &[u64; W]) -> Option<usize> {
        (0..W).rev().find_map(|w| {
            let both = self.words[w] & other[w];
            (both != 0).then(|| w * 64 + 63 - both.leading_zeros() as usize)
        })
    }
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..W * 64).filter(|&i| self.test(i))
    }
}

/// Position of a prefix of `rel` bits (0..=8) of `octet` in a node's prefix tree.
fn prefix_index(octet: usize, rel: u32) -> usize {
    (1 << rel) + (octet >> (8 - rel))
}

/// For each octet, the positions of every prefix in a node that covers it: the octet's
/// /8 position and its ancestors up to the node's /0.
static COVERING: [[u64; 8]; 256] = covering();

const fn covering() -> [[u64; 8]; 256] {
    let mut table = [[0u64; 8]; 256];
    let mut octet = 0;
    while octet < 256 {
        let mut i = 256 + octet;
        while i >= 1 {
            table[octet][i / 64] |= 1 << (i % 64);
            i /= 2;
        }
        octet += 1;
    }
    table
}

/// The octet of `key` a node at `depth` branches on.
fn octet(key: u128, depth: usize) -> usize {
    ((key >> (120 - 8 * depth)) & 0xff) as usize
}

/// The depth of the node a prefix of `len` bits lives in: /1-/8 at the root, /9-/16 one level
/// down, ...; /0 at the root too.
fn home_depth(len: u8) -> usize {
    (len as usize).saturating_sub(1) / 8
}

/// A prefix stored in its parent's child array: it alone lives in that subtree. The key is two
/// words, not a `u128`, so that a slot is 8-byte aligned and 40 bytes rather than 48.
#[derive(Clone, Debug)]
struct Leaf<V> {
    key: [u64; 2],
    value: V,
    len: u8,
}

impl<V> Leaf<V> {
    fn new(key: u128, len: u8, value: V) -> Self {
        Leaf { key: [(key >> 64) as u64, key as u64], value, len }
    }
    fn key(&self) -> u128 {
        (self.key[0] as u128) << 64 | self.key[1] as u128
    }
    fn is(&self, key: u128, len: u8) -> bool {
        self.key() == key && self.len == len
    }
}

#[derive(Clone, Debug)]
enum Child<V> {
    Node(Arc<Node<V>>),
    Leaf(Leaf<V>),
}

/// An entry of a node's child array: the subtree, and the longest prefix of this node that
/// covers all of it. A lookup keeps the last fallback it passed, so a walk that ends below
/// (a leaf that does not match, or a node with nothing for the address) has its answer without
/// going back up to read the prefix tables of the nodes it passed.
#[derive(Clone, Debug)]
struct Slot<V> {
    child: Child<V>,
    fallback: Option<V>,
}

/// What a lookup reads on its way down (the child bitmap and the child array) is the first
/// cache line; the prefixes are read only when the walk ends in a node with no child for the
/// address. Boxed slices, not `Vec`s: no spare capacity, and 16 bytes each.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct Node<V> {
    child_bits: Bits<4>,
    children: Box<[Slot<V>]>,
    prefix_bits: Bits<8>,
    prefixes: Box<[V]>,
}

/// `slice` with `item` inserted at `at` (a change reallocates: arrays here hold at most 256
/// or 511 entries, and a tight allocation is what keeps a million prefixes small).
fn insert_into<T>(slice: &mut Box<[T]>, at: usize, item: T) {
    let mut v = std::mem::take(slice).into_vec();
    v.reserve_exact(1);
    v.insert(at, item);
    *slice = v.into_boxed_slice();
}

fn remove_from<T>(slice: &mut Box<[T]>, at: usize) -> T {
    let mut v = std::mem::take(slice).into_vec();
    let item = v.remove(at);
    *slice = v.into_boxed_slice();
    item
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            child_bits: Bits::default(),
            children: Box::default(),
            prefixes: Box::default(),
            prefix_bits: Bits::default(),
        }
    }
}

/// The longest of a node's prefixes that covers `octet` (a free function so that it can be
/// read while the node's child array is borrowed for writing).
fn best_of<'a, V>(prefix_bits: &Bits<8>, prefixes: &'a [V], octet: usize) -> Option<&'a V> {
    let index = prefix_bits.highest_common(&COVERING[octet])?;
    prefixes.get(prefix_bits.rank(index))
}

/// The octets a prefix at `index` of a node covers.
fn octets_under(index: usize) -> std::ops::Range<usize> {
    let rel = usize::BITS - 1 - index.leading_zeros();
    let first = (index - (1 << rel)) << (8 - rel);
    first..first + (1 << (8 - rel))
}

impl<V: Clone> Node<V> {
    fn child(&self, octet: usize) -> Option<&Child<V>> {
        self.slot(octet).map(|slot| &slot.child)
    }

    fn slot(&self, octet: usize) -> Option<&Slot<V>> {
        if self.child_bits.test(octet) {
            self.children.get(self.child_bits.rank(octet))
        } else {
            None
        }
    }

    fn child_pos(&self, octet: usize) -> Option<usize> {
        self.child_bits.test(octet).then(|| self.child_bits.rank(octet))
    }

    fn insert_child(&mut self, octet: usize, child: Child<V>) {
        let at = self.child_bits.rank(octet);
        self.child_bits.set(octet);
        let fallback = self.best(octet).cloned();
        insert_into(&mut self.children, at, Slot { child, fallback });
    }

    fn remove_child(&mut self, octet: usize) -> Option<Child<V>> {
        let at = self.child_pos(octet)?;
        self.child_bits.clear(octet);
        Some(remove_from(&mut self.children, at).child)
    }

    fn set_prefix(&mut self, index: usize, value: V) -> Option<V> {
        let at = self.prefix_bits.rank(index);
        let old = if self.prefix_bits.test(index) {
            self.prefixes.get_mut(at).map(|slot| std::mem::replace(slot, value))
        } else {
            self.prefix_bits.set(index);
            insert_into(&mut self.prefixes, at, value);
            None
        };
        self.refresh_fallbacks(octets_under(index));
        old
    }

    fn remove_prefix(&mut self, index: usize) -> Option<V> {
        if !self.prefix_bits.test(index) {
            return None;
        }
        let at = self.prefix_bits.rank(index);
        self.prefix_bits.clear(index);
        let removed = remove_from(&mut self.prefixes, at);
        self.refresh_fallbacks(octets_under(index));
        Some(removed)
    }

    /// Works the fallbacks of the children at `octets` out again after a prefix changed.
    fn refresh_fallbacks(&mut self, octets: std::ops::Range<usize>) {
        let Node { child_bits, children, prefixes, prefix_bits } = self;
        let first = child_bits.rank(octets.start);
        let with_child = octets.filter(|&o| child_bits.test(o));
        for (slot, o) in children[first..].iter_mut().zip(with_child) {
            slot.fallback = best_of(prefix_bits, prefixes, o).cloned();
        }
    }

    /// The value of the prefix at `index`, if there is one.
    fn prefix(&self, index: usize) -> Option<&V> {
        self.prefix_bits.test(index).then(|| self.prefixes.get(self.prefix_bits.rank(index))).flatten()
    }

    /// Drops the prefixes whose value is not kept; returns how many went.
    fn retain_prefixes(&mut self, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let indices: Vec<usize> = self.prefix_bits.ones().collect();
        let mut kept = Vec::with_capacity(self.prefixes.len());
        let mut removed = 0;
        for (index, value) in indices.into_iter().zip(std::mem::take(&mut self.prefixes).into_vec()) {
            if keep(&value) {
                kept.push(value);
            } else {
                self.prefix_bits.clear(index);
                removed += 1;
            }
        }
        self.prefixes = kept.into_boxed_slice();
        if removed > 0 {
            self.refresh_fallbacks(0..256);
        }
        removed
    }

    /// Replaces the children with `children` (by ascending octet), their fallbacks worked out.
    fn set_children(&mut self, children: Vec<(usize, Child<V>)>) {
        self.child_bits = Bits::default();
        for (o, _) in &children {
            self.child_bits.set(*o);
        }
        let slots = children.into_iter().map(|(o, child)| Slot { fallback: self.best(o).cloned(), child });
        self.children = slots.collect();
    }

    /// The longest prefix here that covers `octet`.
    fn best(&self, octet: usize) -> Option<&V> {
        best_of(&self.prefix_bits, &self.prefixes, octet)
    }

    fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.children.is_empty()
    }

    /// What this node, which lost entries, becomes in its parent: nothing if it is empty
    /// (`Some(None)`), a leaf if it holds one entry a leaf can stand for (`path` and `depth`
    /// are its own), and `None` if it stays.
    fn shrunk(&self, path: u128, depth: usize) -> Option<Option<Leaf<V>>> {
        if self.is_empty() {
            Some(None)
        } else {
            self.as_leaf(path, depth).map(Some)
        }
    }

    /// Two prefixes now share the subtree of `leaf`: the node at `depth` that holds both.
    fn of_two(leaf: &Leaf<V>, depth: usize, key: u128, len: u8, value: V) -> Node<V> {
        let mut node = Node::default();
        Trie::insert_at(&mut node, depth, leaf.key(), leaf.len, leaf.value.clone());
        Trie::insert_at(&mut node, depth, key, len, value);
        node
    }

    /// A node with a single entry that a leaf can stand for: its one prefix (rebuilt from the
    /// node's path), or its one child if that is a leaf.
    fn as_leaf(&self, path: u128, depth: usize) -> Option<Leaf<V>> {
        match (&*self.prefixes, &*self.children) {
            ([value], []) => {
                let index = self.prefix_bits.ones().next()?;
                let (key, len) = prefix_key(path, depth, index);
                Some(Leaf::new(key, len, value.clone()))
            }
            ([], [Slot { child: Child::Leaf(leaf), .. }]) => Some(leaf.clone()),
            _ => None,
        }
    }
}

/// The key and length of the prefix at `index` of a node at `depth` whose path is `path`.
fn prefix_key(path: u128, depth: usize, index: usize) -> (u128, u8) {
    let rel = usize::BITS - 1 - index.leading_zeros();
    let bits = (index - (1 << rel)) as u128;
    let start = 8 * depth as u32;
    let key = if rel == 0 { path } else { path | (bits << (128 - start - rel)) };
    (key, (start + rel) as u8)
}

fn covers(key: u128, prefix: u128, len: u8) -> bool {
    (key ^ prefix) & mask(len) == 0
}

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

/// Where the root sits: its depth (octets above it) and the key bits of its path, with the
/// mask of those bits kept rather than worked out on every lookup.
#[derive(Clone, Copy, Debug, Default)]
struct Top {
    depth: usize,
    path: u128,
    mask: u128,
}

impl Top {
    fn new(depth: usize, key: u128) -> Self {
        let mask = mask(8 * depth as u8);
        Top { depth, path: key & mask, mask }
    }
    /// Whether `key/len` lives at or below the root.
    fn holds(&self, key: u128, len: u8) -> bool {
        home_depth(len) >= self.depth && (key ^ self.path) & self.mask == 0
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
            Root::Narrow(node) => Self::insert_at(Arc::make_mut(node), self.top.depth, key, len, value),
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

    fn insert_at(node: &mut Node<V>, depth: usize, key: u128, len: u8, value: V) -> Option<V> {
        if home_depth(len) == depth {
            return node.set_prefix(prefix_index(octet(key, depth), len as u32 - 8 * depth as u32), value);
        }
        let o = octet(key, depth);
        let Some(at) = node.child_pos(o) else {
            node.insert_child(o, Child::Leaf(Leaf::new(key, len, value)));
            return None;
        };
        Self::insert_below(&mut node.children[at].child, depth + 1, key, len, value)
    }

    /// Inserts into the subtree `child` whose node is (or would be) at `depth`.
    fn insert_below(child: &mut Child<V>, depth: usize, key: u128, len: u8, value: V) -> Option<V> {
        match child {
            Child::Node(next) => Self::insert_at(Arc::make_mut(next), depth, key, len, value),
            Child::Leaf(leaf) if leaf.is(key, len) => Some(std::mem::replace(&mut leaf.value, value)),
            Child::Leaf(leaf) => {
                *child = Child::Node(Arc::new(Node::of_two(leaf, depth, key, len, value)));
                None
            }
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
            Root::Narrow(node) => Self::walk(node, rest, key, None),
            Root::Wide(wide) => wide.lookup(key, rest),
        }
    }

    /// The walk down from `node`, whose octet of the key is the top byte of `rest`. `above` is
    /// the fallback of the last slot passed: the longest prefix above that covers the key (a
    /// deeper node's prefixes are longer than every prefix above it).
    fn walk<'a>(mut node: &'a Node<V>, mut rest: u128, key: u128, mut above: Option<&'a V>) -> Option<&'a V> {
        loop {
            let o = (rest >> 120) as usize;
            rest <<= 8;
            let Some(slot) = node.slot(o) else {
                return node.best(o).or(above);
            };
            above = slot.fallback.as_ref().or(above);
            match &slot.child {
                Child::Node(next) => node = next,
                Child::Leaf(leaf) => return if covers(key, leaf.key(), leaf.len) { Some(&leaf.value) } else { above },
            }
        }
    }

    /// The value stored for exactly `key/len`.
    fn get_exact(&self, key: u128, len: u8) -> Option<&V> {
        if !self.top.holds(key, len) {
            return None;
        }
        match &self.root {
            Root::Narrow(node) => Self::exact_in(node, self.top.depth, key, len),
            Root::Wide(wide) => wide.exact(self.top.depth, key, len),
        }
    }

    fn exact_in(mut node: &Node<V>, mut depth: usize, key: u128, len: u8) -> Option<&V> {
        loop {
            if home_depth(len) == depth {
                return node.prefix(prefix_index(octet(key, depth), len as u32 - 8 * depth as u32));
            }
            match node.child(octet(key, depth))? {
                Child::Node(next) => {
                    node = next;
                    depth += 1;
                }
                Child::Leaf(leaf) => return leaf.is(key, len).then_some(&leaf.value),
            }
        }
    }

    /// Removes exactly `key/len`.
    pub fn remove(&mut self, key: u128, len: u8) -> Option<V> {
        let len = len.min(128);
        let key = key & mask(len);
        // Absent: no path is copied for nothing.
        self.get_exact(key, len)?;
        let removed = match &mut self.root {
            Root::Narrow(node) => Self::remove_at(Arc::make_mut(node), self.top.depth, key, len),
            Root::Wide(wide) => wide.remove(self.top.depth, key, len),
        };
        if removed.is_some() {
            self.len -= 1;
            self.settle();
            self.lower_root();
        }
        removed
    }

    fn remove_at(node: &mut Node<V>, depth: usize, key: u128, len: u8) -> Option<V> {
        if home_depth(len) == depth {
            return node.remove_prefix(prefix_index(octet(key, depth), len as u32 - 8 * depth as u32));
        }
        let o = octet(key, depth);
        let at = node.child_pos(o)?;
        let removed = match &mut node.children[at].child {
            Child::Leaf(leaf) if leaf.is(key, len) => None,
            Child::Leaf(_) => return None,
            Child::Node(next) => Some(Self::remove_at(Arc::make_mut(next), depth + 1, key, len)),
        };
        match removed {
            None => match node.remove_child(o) {
                Some(Child::Leaf(leaf)) => Some(leaf.value),
                _ => None,
            },
            Some(value) => {
                let path = key & mask(8 * (depth as u8 + 1));
                Self::compact_child(node, o, path, depth + 1);
                value
            }
        }
    }

    /// The child node at `octet` (path `path`, at `depth`) lost an entry: an empty node goes,
    /// and a node with one entry a leaf can hold becomes that leaf.
    fn compact_child(node: &mut Node<V>, o: usize, path: u128, depth: usize) {
        let Some(at) = node.child_pos(o) else { return };
        let Child::Node(child) = &node.children[at].child else { return };
        match child.shrunk(path, depth) {
            None => {}
            Some(None) => {
                node.remove_child(o);
            }
            Some(Some(leaf)) => node.children[at].child = Child::Leaf(leaf),
        }
    }

    /// Removes every entry whose value matches; returns how many went.
    pub fn retain(&mut self, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let removed = match &mut self.root {
            Root::Narrow(node) => Self::retain_at(Arc::make_mut(node), self.top.depth, self.top.path, keep),
            Root::Wide(wide) => wide.retain(self.top, keep),
        };
        self.len -= removed;
        if removed > 0 {
            self.settle();
            self.lower_root();
        }
        removed
    }

    fn retain_at(node: &mut Node<V>, depth: usize, path: u128, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let mut removed = node.retain_prefixes(keep);
        let octets: Vec<usize> = node.child_bits.ones().collect();
        for o in octets {
            let Some(at) = node.child_pos(o) else { continue };
            match &mut node.children[at].child {
                Child::Leaf(leaf) => {
                    if !keep(&leaf.value) {
                        node.remove_child(o);
                        removed += 1;
                    }
                }
                Child::Node(next) => {
                    let child_path = path | ((o as u128) << (120 - 8 * depth));
                    removed += Self::retain_at(Arc::make_mut(next), depth + 1, child_path, keep);
                    Self::compact_child(node, o, child_path, depth + 1);
                }
            }
        }
        removed
    }

    /// Every (key, len, value).
    pub fn entries(&self) -> Vec<(u128, u8, V)> {
        let mut out = Vec::with_capacity(self.len);
        match &self.root {
            Root::Narrow(node) => Self::entries_at(node, self.top.depth, self.top.path, &mut out),
            Root::Wide(wide) => wide.entries(self.top, &mut out),
        }
        out
    }

    fn prefixes_at(node: &Node<V>, depth: usize, path: u128, out: &mut Vec<(u128, u8, V)>) {
        for (index, value) in node.prefix_bits.ones().zip(&node.prefixes) {
            let (key, len) = prefix_key(path, depth, index);
            out.push((key, len, value.clone()));
        }
    }

    fn entries_at(node: &Node<V>, depth: usize, path: u128, out: &mut Vec<(u128, u8, V)>) {
        Self::prefixes_at(node, depth, path, out);
        for (o, slot) in node.child_bits.ones().zip(&node.children) {
            match &slot.child {
                Child::Leaf(leaf) => out.push((leaf.key(), leaf.len, leaf.value.clone())),
                Child::Node(next) => Self::entries_at(next, depth + 1, path | ((o as u128) << (120 - 8 * depth)), out),
            }
        }
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
        assert_eq!(t.retain(&mut |v| *v == 1), 2);
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
            if round % 4 == 3 {
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
