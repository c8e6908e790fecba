//! The trie's nodes: 8 bits of key per node, prefixes as a popcount-compressed complete
//! binary tree, children as a popcount-compressed array, leaves for path compression, and the
//! walks over them that the narrow root and the wide one (`wide`) share.

use std::sync::Arc;

use super::super::mask;

/// A fixed-size bitmap with rank (set bits below a position), for the compressed arrays. It
/// keeps, for each word, how many bits are set in the words before it, so a rank is one
/// popcount: the default x86-64 target has no popcount instruction, and four or eight software
/// popcounts per level were most of a lookup's arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Bits<const W: usize> {
    pub(super) words: [u64; W],
    pub(super) before: [u16; W],
}

impl<const W: usize> Default for Bits<W> {
    fn default() -> Self {
        Bits { words: [0; W], before: [0; W] }
    }
}

impl<const W: usize> Bits<W> {
    pub(super) fn test(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }
    pub(super) fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
        self.recount();
    }
    pub(super) fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
        self.recount();
    }
    pub(super) fn recount(&mut self) {
        let mut total = 0;
        for (before, word) in self.before.iter_mut().zip(self.words) {
            *before = total;
            total += word.count_ones() as u16;
        }
    }
    /// How many set bits come before `i`: the position of `i`'s entry in its array.
    pub(super) fn rank(&self, i: usize) -> usize {
        let (word, below) = (i / 64, (1u64 << (i % 64)) - 1);
        self.before[word] as usize + (self.words[word] & below).count_ones() as usize
    }
    /// The highest position set in both.
    pub(super) fn highest_common(&self, other: &[u64; W]) -> Option<usize> {
        (0..W).rev().find_map(|w| {
            let both = self.words[w] & other[w];
            (both != 0).then(|| w * 64 + 63 - both.leading_zeros() as usize)
        })
    }
    pub(super) fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..W * 64).filter(|&i| self.test(i))
    }
}

/// Position of a prefix of `rel` bits (0..=8) of `octet` in a node's prefix tree.
pub(super) fn prefix_index(octet: usize, rel: u32) -> usize {
    (1 << rel) + (octet >> (8 - rel))
}

/// For each octet, the positions of every prefix in a node that covers it: the octet's
/// /8 position and its ancestors up to the node's /0.
static COVERING: [[u64; 8]; 256] = covering();

pub(super) const fn covering() -> [[u64; 8]; 256] {
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
pub(super) fn octet(key: u128, depth: usize) -> usize {
    ((key >> (120 - 8 * depth)) & 0xff) as usize
}

/// The depth of the node a prefix of `len` bits lives in: /1-/8 at the root, /9-/16 one level
/// down, ...; /0 at the root too.
pub(super) fn home_depth(len: u8) -> usize {
    (len as usize).saturating_sub(1) / 8
}

/// A prefix stored in its parent's child array: it alone lives in that subtree. The key is two
/// words, not a `u128`, so that a slot is 8-byte aligned and 40 bytes rather than 48.
#[derive(Clone, Debug)]
pub(super) struct Leaf<V> {
    pub(super) key: [u64; 2],
    pub(super) value: V,
    pub(super) len: u8,
}

impl<V> Leaf<V> {
    pub(super) fn new(key: u128, len: u8, value: V) -> Self {
        Leaf { key: [(key >> 64) as u64, key as u64], value, len }
    }
    pub(super) fn key(&self) -> u128 {
        (self.key[0] as u128) << 64 | self.key[1] as u128
    }
    pub(super) fn is(&self, key: u128, len: u8) -> bool {
        self.key() == key && self.len == len
    }
}

#[derive(Clone, Debug)]
pub(super) enum Child<V> {
    Node(Arc<Node<V>>),
    Leaf(Leaf<V>),
}

/// An entry of a node's child array: the subtree, and the longest prefix of this node that
/// covers all of it. A lookup keeps the last fallback it passed, so a walk that ends below
/// (a leaf that does not match, or a node with nothing for the address) has its answer without
/// going back up to read the prefix tables of the nodes it passed.
#[derive(Clone, Debug)]
pub(super) struct Slot<V> {
    pub(super) child: Child<V>,
    pub(super) fallback: Option<V>,
}

/// What a lookup reads on its way down (the child bitmap and the child array) is the first
/// cache line; the prefixes are read only when the walk ends in a node with no child for the
/// address. Boxed slices, not `Vec`s: no spare capacity, and 16 bytes each.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub(super) struct Node<V> {
    pub(super) child_bits: Bits<4>,
    pub(super) children: Box<[Slot<V>]>,
    pub(super) prefix_bits: Bits<8>,
    pub(super) prefixes: Box<[V]>,
}

/// `slice` with `item` inserted at `at` (a change reallocates: arrays here hold at most 256
/// or 511 entries, and a tight allocation is what keeps a million prefixes small).
pub(super) fn insert_into<T>(slice: &mut Box<[T]>, at: usize, item: T) {
    let mut v = std::mem::take(slice).into_vec();
    v.reserve_exact(1);
    v.insert(at, item);
    *slice = v.into_boxed_slice();
}

pub(super) fn remove_from<T>(slice: &mut Box<[T]>, at: usize) -> T {
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
pub(super) fn best_of<'a, V>(prefix_bits: &Bits<8>, prefixes: &'a [V], octet: usize) -> Option<&'a V> {
    let index = prefix_bits.highest_common(&COVERING[octet])?;
    prefixes.get(prefix_bits.rank(index))
}

/// The octets a prefix at `index` of a node covers.
pub(super) fn octets_under(index: usize) -> std::ops::Range<usize> {
    let rel = usize::BITS - 1 - index.leading_zeros();
    let first = (index - (1 << rel)) << (8 - rel);
    first..first + (1 << (8 - rel))
}

impl<V: Clone> Node<V> {
    pub(super) fn child(&self, octet: usize) -> Option<&Child<V>> {
        self.slot(octet).map(|slot| &slot.child)
    }

    pub(super) fn slot(&self, octet: usize) -> Option<&Slot<V>> {
        if self.child_bits.test(octet) {
            self.children.get(self.child_bits.rank(octet))
        } else {
            None
        }
    }

    pub(super) fn child_pos(&self, octet: usize) -> Option<usize> {
        self.child_bits.test(octet).then(|| self.child_bits.rank(octet))
    }

    pub(super) fn insert_child(&mut self, octet: usize, child: Child<V>) {
        let at = self.child_bits.rank(octet);
        self.child_bits.set(octet);
        let fallback = self.best(octet).cloned();
        insert_into(&mut self.children, at, Slot { child, fallback });
    }

    pub(super) fn remove_child(&mut self, octet: usize) -> Option<Child<V>> {
        let at = self.child_pos(octet)?;
        self.child_bits.clear(octet);
        Some(remove_from(&mut self.children, at).child)
    }

    pub(super) fn set_prefix(&mut self, index: usize, value: V) -> Option<V> {
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

    pub(super) fn remove_prefix(&mut self, index: usize) -> Option<V> {
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
    pub(super) fn refresh_fallbacks(&mut self, octets: std::ops::Range<usize>) {
        let Node { child_bits, children, prefixes, prefix_bits } = self;
        let first = child_bits.rank(octets.start);
        let with_child = octets.filter(|&o| child_bits.test(o));
        for (slot, o) in children[first..].iter_mut().zip(with_child) {
            slot.fallback = best_of(prefix_bits, prefixes, o).cloned();
        }
    }

    /// The value of the prefix at `index`, if there is one.
    pub(super) fn prefix(&self, index: usize) -> Option<&V> {
        self.prefix_bits.test(index).then(|| self.prefixes.get(self.prefix_bits.rank(index))).flatten()
    }

    /// Replaces the children with `children` (by ascending octet), their fallbacks worked out.
    pub(super) fn set_children(&mut self, children: Vec<(usize, Child<V>)>) {
        self.child_bits = Bits::default();
        for (o, _) in &children {
            self.child_bits.set(*o);
        }
        let slots = children.into_iter().map(|(o, child)| Slot { fallback: self.best(o).cloned(), child });
        self.children = slots.collect();
    }

    /// The longest prefix here that covers `octet`.
    pub(super) fn best(&self, octet: usize) -> Option<&V> {
        best_of(&self.prefix_bits, &self.prefixes, octet)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.children.is_empty()
    }

    /// What this node, which lost entries, becomes in its parent: nothing if it is empty
    /// (`Some(None)`), a leaf if it holds one entry a leaf can stand for (`path` and `depth`
    /// are its own), and `None` if it stays.
    pub(super) fn shrunk(&self, path: u128, depth: usize) -> Option<Option<Leaf<V>>> {
        if self.is_empty() {
            Some(None)
        } else {
            self.as_leaf(path, depth).map(Some)
        }
    }

    /// Two prefixes now share the subtree of `leaf`: the node at `depth` that holds both.
    pub(super) fn of_two(leaf: &Leaf<V>, depth: usize, key: u128, len: u8, value: V) -> Node<V> {
        let mut node = Node::default();
        Node::insert_at(&mut node, depth, leaf.key(), leaf.len, leaf.value.clone());
        Node::insert_at(&mut node, depth, key, len, value);
        node
    }

    /// A node with a single entry that a leaf can stand for: its one prefix (rebuilt from the
    /// node's path), or its one child if that is a leaf.
    pub(super) fn as_leaf(&self, path: u128, depth: usize) -> Option<Leaf<V>> {
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
pub(super) fn prefix_key(path: u128, depth: usize, index: usize) -> (u128, u8) {
    let rel = usize::BITS - 1 - index.leading_zeros();
    let bits = (index - (1 << rel)) as u128;
    let start = 8 * depth as u32;
    let key = if rel == 0 { path } else { path | (bits << (128 - start - rel)) };
    (key, (start + rel) as u8)
}

pub(super) fn covers(key: u128, prefix: u128, len: u8) -> bool {
    (key ^ prefix) & mask(len) == 0
}

/// Where the root sits: its depth (octets above it) and the key bits of its path, with the
/// mask of those bits kept rather than worked out on every lookup.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Top {
    pub(super) depth: usize,
    pub(super) path: u128,
    pub(super) mask: u128,
}

impl Top {
    pub(super) fn new(depth: usize, key: u128) -> Self {
        let mask = mask(8 * depth as u8);
        Top { depth, path: key & mask, mask }
    }
    /// Whether `key/len` lives at or below the root.
    pub(super) fn holds(&self, key: u128, len: u8) -> bool {
        home_depth(len) >= self.depth && (key ^ self.path) & self.mask == 0
    }
}

impl<V: Clone> Node<V> {
    pub(super) fn insert_at(node: &mut Node<V>, depth: usize, key: u128, len: u8, value: V) -> Option<V> {
        if home_depth(len) == depth {
            return node.set_prefix(prefix_index(octet(key, depth), len as u32 - 8 * depth as u32), value);
        }
        let o = octet(key, depth);
        let Some(at) = node.child_pos(o) else {
            node.insert_child(o, Child::Leaf(Leaf::new(key, len, value)));
            return None;
        };
        Node::insert_below(&mut node.children[at].child, depth + 1, key, len, value)
    }

    /// Inserts into the subtree `child` whose node is (or would be) at `depth`.
    pub(super) fn insert_below(child: &mut Child<V>, depth: usize, key: u128, len: u8, value: V) -> Option<V> {
        match child {
            Child::Node(next) => Node::insert_at(Arc::make_mut(next), depth, key, len, value),
            Child::Leaf(leaf) if leaf.is(key, len) => Some(std::mem::replace(&mut leaf.value, value)),
            Child::Leaf(leaf) => {
                *child = Child::Node(Arc::new(Node::of_two(leaf, depth, key, len, value)));
                None
            }
        }
    }

    /// The walk down from `node`, whose octet of the key is the top byte of `rest`. `above` is
    /// the fallback of the last slot passed: the longest prefix above that covers the key (a
    /// deeper node's prefixes are longer than every prefix above it).
    pub(super) fn walk<'a>(
        mut node: &'a Node<V>,
        mut rest: u128,
        key: u128,
        mut above: Option<&'a V>,
    ) -> Option<&'a V> {
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

    pub(super) fn exact_in(mut node: &Node<V>, mut depth: usize, key: u128, len: u8) -> Option<&V> {
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

    pub(super) fn remove_at(node: &mut Node<V>, depth: usize, key: u128, len: u8) -> Option<V> {
        if home_depth(len) == depth {
            return node.remove_prefix(prefix_index(octet(key, depth), len as u32 - 8 * depth as u32));
        }
        let o = octet(key, depth);
        let at = node.child_pos(o)?;
        let removed = match &mut node.children[at].child {
            Child::Leaf(leaf) if leaf.is(key, len) => None,
            Child::Leaf(_) => return None,
            Child::Node(next) => Some(Node::remove_at(Arc::make_mut(next), depth + 1, key, len)),
        };
        match removed {
            None => match node.remove_child(o) {
                Some(Child::Leaf(leaf)) => Some(leaf.value),
                _ => None,
            },
            Some(value) => {
                let path = key & mask(8 * (depth as u8 + 1));
                Node::compact_child(node, o, path, depth + 1);
                value
            }
        }
    }

    /// The child node at `octet` (path `path`, at `depth`) lost an entry: an empty node goes,
    /// and a node with one entry a leaf can hold becomes that leaf.
    pub(super) fn compact_child(node: &mut Node<V>, o: usize, path: u128, depth: usize) {
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

    pub(super) fn prefixes_at(node: &Node<V>, depth: usize, path: u128, out: &mut Vec<(u128, u8, V)>) {
        for (index, value) in node.prefix_bits.ones().zip(&node.prefixes) {
            let (key, len) = prefix_key(path, depth, index);
            out.push((key, len, value.clone()));
        }
    }

    pub(super) fn entries_at(node: &Node<V>, depth: usize, path: u128, out: &mut Vec<(u128, u8, V)>) {
        Node::prefixes_at(node, depth, path, out);
        for (o, slot) in node.child_bits.ones().zip(&node.children) {
            match &slot.child {
                Child::Leaf(leaf) => out.push((leaf.key(), leaf.len, leaf.value.clone())),
                Child::Node(next) => Node::entries_at(next, depth + 1, path | ((o as u128) << (120 - 8 * depth)), out),
            }
        }
    }
}
