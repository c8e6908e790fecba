//! A big table's root: the root node and the level under it as one array indexed by two
//! octets (a 16-bit stride), in 256 rows of 256 cells.
//!
//! With a million scattered prefixes the root and its 256 children are always walked, and each
//! is a bitmap, a rank and a load that depends on the one before; the array replaces the four
//! loads with two (the row, then the cell) and carries in each cell the longest prefix of those
//! two levels that covers it, so nothing there is searched. A cell holds the node below it by
//! value, so the walk's next bitmap is in the cell too. The array costs up to 16 MB (256 B a
//! cell; rows with nothing in them share one allocation), which a small table should not pay:
//! a trie turns wide at `WIDE_AT` entries, when most cells hold a node that would otherwise be
//! an allocation of its own, and back to narrow under half of that. Rows are shared between
//! snapshots like nodes, so a change copies the one row it touches, not the array.

use std::sync::Arc;

use super::node::{covers, home_depth, octet, octets_under, prefix_index, Child, Leaf, Node, Top};

/// How many entries make a trie wide.
pub(super) const WIDE_AT: usize = 262_144;

#[derive(Clone, Debug)]
pub(super) struct Wide<V> {
    rows: Box<[Arc<Row<V>>; 256]>,
    /// The prefixes of the root's own node (at the trie's top depth); it has no children here.
    /// Boxed: only changes read it, and a trie stays small.
    top: Box<Node<V>>,
    /// Prefixes of `top` and the rows' `mid`s plus cells that are not empty: at one, all the
    /// entries may lie under one cell, and the root can go down.
    filled: usize,
}

#[derive(Clone, Debug)]
struct Row<V> {
    cells: [Cell<V>; 256],
    /// The prefixes of the node one level down; its children are the cells.
    mid: Node<V>,
}

/// The subtree two levels down, if any, and the longest prefix of the two levels above that
/// covers it (which is the answer when the subtree has none).
#[derive(Clone, Debug)]
struct Cell<V> {
    child: Below<V>,
    fallback: Option<V>,
}

/// A cell's subtree. A node is held in the cell itself, not behind an `Arc`: the walk then
/// reads its bitmap from the cell's own cache lines, one dependent load fewer per lookup (a
/// row shared with a snapshot is copied whole on a change, nodes included: 100-200 KB).
#[derive(Clone, Debug)]
enum Below<V> {
    Empty,
    Leaf(Leaf<V>),
    Node(Node<V>),
}

impl<V: Clone> Below<V> {
    /// The same subtree as a narrow node's child.
    fn to_child(&self) -> Option<Child<V>> {
        match self {
            Below::Empty => None,
            Below::Leaf(leaf) => Some(Child::Leaf(leaf.clone())),
            Below::Node(node) => Some(Child::Node(Arc::new(node.clone()))),
        }
    }

    fn from_child(child: &Child<V>) -> Self {
        match child {
            Child::Leaf(leaf) => Below::Leaf(leaf.clone()),
            Child::Node(node) => Below::Node(Node::clone(node)),
        }
    }

    /// After a removal under it, what `Node::shrunk` says it becomes (`path` and `depth` are
    /// the node's).
    fn compact(&mut self, path: u128, depth: usize) {
        let Below::Node(node) = self else { return };
        match node.shrunk(path, depth) {
            None => {}
            Some(None) => *self = Below::Empty,
            Some(Some(leaf)) => *self = Below::Leaf(leaf),
        }
    }

    fn filled(&self) -> bool {
        !matches!(self, Below::Empty)
    }
}

/// Where `key/len` lives under a wide root at depth `d`: a prefix of the root's own node (its
/// index there), a prefix of a row's node, or the subtree of a cell.
enum Place {
    Top(usize),
    Mid(usize, usize),
    Cell(usize, usize),
}

impl Place {
    fn of(d: usize, key: u128, len: u8) -> Place {
        let (o1, o2) = (octet(key, d) as u8 as usize, octet(key, d + 1) as u8 as usize);
        match home_depth(len).saturating_sub(d) {
            0 => Place::Top(prefix_index(o1, len as u32 - 8 * d as u32)),
            1 => Place::Mid(o1, prefix_index(o2, len as u32 - 8 * (d as u32 + 1))),
            _ => Place::Cell(o1, o2),
        }
    }
}

impl<V: Clone> Row<V> {
    fn empty() -> Self {
        Row { cells: std::array::from_fn(|_| Cell { child: Below::Empty, fallback: None }), mid: Node::default() }
    }

    /// Works out the fallbacks of the cells at `o2s` again (row `o1`, under `top`).
    fn refresh(&mut self, top: &Node<V>, o1: usize, o2s: std::ops::Range<usize>) {
        let Row { cells, mid } = self;
        for o2 in o2s {
            if let Some(cell) = cells.get_mut(o2) {
                cell.fallback = mid.best(o2).or_else(|| top.best(o1)).cloned();
            }
        }
    }
}

/// A node that holds only the prefixes of `node`.
fn prefixes_of<V: Clone>(node: &Node<V>) -> Node<V> {
    Node { prefix_bits: node.prefix_bits, prefixes: node.prefixes.clone(), ..Node::default() }
}

impl<V: Clone> Wide<V> {
    /// The two levels of the narrow `root` at `top`.
    pub(super) fn from_narrow(root: &Node<V>, top: Top) -> Self {
        let d = top.depth;
        let top_node = Box::new(prefixes_of(root));
        // Rows with nothing in them share one allocation until a change copies it.
        let empty = Arc::new(Row::empty());
        let rows = Box::new(std::array::from_fn(|o1| {
            if root.child(o1).is_none() && top_node.best(o1).is_none() {
                return empty.clone();
            }
            let mut row = Row::empty();
            match root.child(o1) {
                None => {}
                Some(Child::Node(node)) => {
                    row.mid = prefixes_of(node);
                    for (o2, slot) in node.child_bits.ones().zip(node.children.iter()) {
                        if let Some(cell) = row.cells.get_mut(o2) {
                            cell.child = Below::from_child(&slot.child);
                        }
                    }
                }
                Some(Child::Leaf(leaf)) => {
                    let (key, len) = (leaf.key(), leaf.len);
                    if home_depth(len) == d + 1 {
                        row.mid.set_prefix(
                            prefix_index(octet(key, d + 1), len as u32 - 8 * (d as u32 + 1)),
                            leaf.value.clone(),
                        );
                    } else if let Some(cell) = row.cells.get_mut(octet(key, d + 1)) {
                        cell.child = Below::Leaf(leaf.clone());
                    }
                }
            }
            row.refresh(&top_node, o1, 0..256);
            Arc::new(row)
        }));
        let mut wide = Wide { rows, top: top_node, filled: 0 };
        wide.recount();
        wide
    }

    fn recount(&mut self) {
        let cells = self.rows.iter().flat_map(|row| row.cells.iter());
        let filled_cells = cells.filter(|cell| cell.child.filled()).count();
        let mids: usize = self.rows.iter().map(|row| row.mid.prefixes.len()).sum();
        self.filled = self.top.prefixes.len() + mids + filled_cells;
    }

    /// Whether every entry may lie under one cell (see `filled`).
    pub(super) fn may_go_down(&self) -> bool {
        self.filled <= 1
    }

    /// The same entries as a narrow root node at `top`.
    pub(super) fn into_narrow(self, top: Top) -> Node<V> {
        let d = top.depth;
        let mut children = Vec::new();
        for (o1, row) in self.rows.iter().enumerate() {
            let mut mid = prefixes_of(&row.mid);
            let cells = row.cells.iter().enumerate();
            mid.set_children(cells.filter_map(|(o2, cell)| Some((o2, cell.child.to_child()?))).collect());
            if mid.is_empty() {
                continue;
            }
            let path = top.path | ((o1 as u128) << (120 - 8 * d));
            children.push((o1, mid.as_leaf(path, d + 1).map_or_else(|| Child::Node(Arc::new(mid)), Child::Leaf)));
        }
        let mut root = *self.top;
        root.set_children(children);
        root
    }

    /// `key`'s longest match; `rest` is the key shifted so the root's octet is on top.
    pub(super) fn lookup(&self, key: u128, rest: u128) -> Option<&V> {
        let row = &self.rows[(rest >> 120) as u8 as usize];
        let cell = &row.cells[(rest >> 112) as u8 as usize];
        let above = cell.fallback.as_ref();
        match &cell.child {
            Below::Empty => above,
            Below::Leaf(leaf) => {
                if covers(key, leaf.key(), leaf.len) {
                    Some(&leaf.value)
                } else {
                    above
                }
            }
            Below::Node(next) => Node::walk(next, rest << 16, key, above),
        }
    }

    /// The value stored for exactly `key/len`, with the root at depth `d`.
    pub(super) fn exact(&self, d: usize, key: u128, len: u8) -> Option<&V> {
        match Place::of(d, key, len) {
            Place::Top(index) => self.top.prefix(index),
            Place::Mid(o1, index) => self.rows[o1].mid.prefix(index),
            Place::Cell(o1, o2) => match &self.rows[o1].cells[o2].child {
                Below::Empty => None,
                Below::Leaf(leaf) => leaf.is(key, len).then_some(&leaf.value),
                Below::Node(next) => Node::exact_in(next, d + 2, key, len),
            },
        }
    }

    /// Refreshes every cell of the rows at `o1s` after a prefix of the top node changed.
    fn refresh_rows(&mut self, o1s: std::ops::Range<usize>) {
        let Wide { rows, top, .. } = self;
        for o1 in o1s {
            if let Some(row) = rows.get_mut(o1) {
                Arc::make_mut(row).refresh(top, o1, 0..256);
            }
        }
    }

    pub(super) fn insert(&mut self, d: usize, key: u128, len: u8, value: V) -> Option<V> {
        let (old, filled_before, filled_after) = match Place::of(d, key, len) {
            Place::Top(index) => {
                let old = self.top.set_prefix(index, value);
                self.refresh_rows(octets_under(index));
                (old, 0, 1)
            }
            Place::Mid(o1, index) => {
                let row = Arc::make_mut(&mut self.rows[o1]);
                let old = row.mid.set_prefix(index, value);
                row.refresh(&self.top, o1, octets_under(index));
                (old, 0, 1)
            }
            Place::Cell(o1, o2) => {
                let cell = &mut Arc::make_mut(&mut self.rows[o1]).cells[o2];
                let before = cell.child.filled();
                let old = match &mut cell.child {
                    Below::Empty => {
                        cell.child = Below::Leaf(Leaf::new(key, len, value));
                        None
                    }
                    Below::Node(node) => Node::insert_at(node, d + 2, key, len, value),
                    Below::Leaf(leaf) if leaf.is(key, len) => Some(std::mem::replace(&mut leaf.value, value)),
                    Below::Leaf(leaf) => {
                        cell.child = Below::Node(Node::of_two(leaf, d + 2, key, len, value));
                        None
                    }
                };
                (old, usize::from(before), usize::from(cell.child.filled()))
            }
        };
        if old.is_none() {
            self.filled = (self.filled + filled_after).saturating_sub(filled_before);
        }
        old
    }

    pub(super) fn remove(&mut self, d: usize, key: u128, len: u8) -> Option<V> {
        let (removed, filled_after) = match Place::of(d, key, len) {
            Place::Top(index) => {
                let removed = self.top.remove_prefix(index);
                self.refresh_rows(octets_under(index));
                (removed, 0)
            }
            Place::Mid(o1, index) => {
                let row = Arc::make_mut(&mut self.rows[o1]);
                let removed = row.mid.remove_prefix(index);
                row.refresh(&self.top, o1, octets_under(index));
                (removed, 0)
            }
            Place::Cell(o1, o2) => {
                let cell = &mut Arc::make_mut(&mut self.rows[o1]).cells[o2];
                let removed = match &mut cell.child {
                    Below::Leaf(leaf) if leaf.is(key, len) => match std::mem::replace(&mut cell.child, Below::Empty) {
                        Below::Leaf(leaf) => Some(leaf.value),
                        _ => None,
                    },
                    Below::Node(node) => {
                        let removed = Node::remove_at(node, d + 2, key, len);
                        cell.child.compact(key & super::super::mask(8 * (d as u8 + 2)), d + 2);
                        removed
                    }
                    _ => None,
                };
                (removed, usize::from(cell.child.filled()))
            }
        };
        if removed.is_some() {
            // The place was filled before (it held the entry); count it out if it is empty now.
            self.filled = (self.filled + filled_after).saturating_sub(1);
        }
        removed
    }

    /// Every (key, len, value), with the root at `top`.
    pub(super) fn entries(&self, top: Top, out: &mut Vec<(u128, u8, V)>) {
        let d = top.depth;
        Node::prefixes_at(&self.top, d, top.path, out);
        for (o1, row) in self.rows.iter().enumerate() {
            let row_path = top.path | ((o1 as u128) << (120 - 8 * d));
            Node::prefixes_at(&row.mid, d + 1, row_path, out);
            for (o2, cell) in row.cells.iter().enumerate() {
                match &cell.child {
                    Below::Empty => {}
                    Below::Leaf(leaf) => out.push((leaf.key(), leaf.len, leaf.value.clone())),
                    Below::Node(node) => Node::entries_at(node, d + 2, row_path | ((o2 as u128) << (112 - 8 * d)), out),
                }
            }
        }
    }
}

/// For a test: the prefix-only nodes hold no children, and every cell's fallback is what the
/// two levels' prefixes say.
#[cfg(test)]
impl<V: Clone + PartialEq + std::fmt::Debug> Wide<V> {
    pub(super) fn check(&self) {
        let filled = self.filled;
        let mut counted = Wide { rows: self.rows.clone(), top: self.top.clone(), filled: 0 };
        counted.recount();
        assert_eq!(filled, counted.filled, "the count of filled places");
        assert!(self.top.children.is_empty());
        for (o1, row) in self.rows.iter().enumerate() {
            assert!(row.mid.children.is_empty());
            for (o2, cell) in row.cells.iter().enumerate() {
                assert_eq!(cell.fallback.as_ref(), row.mid.best(o2).or_else(|| self.top.best(o1)), "cell {o1}.{o2}");
            }
        }
    }
}
