//! The receiver-index table: which keypair of which peer a transport message's receiver index
//! names. Workers look an index up per datagram without a lock; the control thread inserts
//! and removes one entry in O(1), never copying the table (it used to copy a `HashMap` of every
//! index on each handshake, which at 100,000 peers rekeying every two minutes is a copy of
//! 100,000 entries 800 times a second).
//!
//! An index is a slot in a two-level array (chunks allocated on first use) in its low 22 bits
//! and a tag in its high 10: random at a slot's first use, then one more at each reuse, so a
//! stale index misses instead of naming the new keypair, and one full index comes back only
//! after its slot was reused 1,024 times. Freed slots are reused oldest first. So within the
//! microseconds between a helper decrypting a datagram and its owner accepting it, an index
//! names the same keypair.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwapOption, Guard};
use rand::Rng;

use super::shared::IndexEntry;

const SLOT_BITS: u32 = 22;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const CHUNK_BITS: u32 = 12;
const CHUNK_SLOTS: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = 1 << (SLOT_BITS - CHUNK_BITS);
const TAG_MASK: u32 = (1 << (32 - SLOT_BITS)) - 1;

/// `CHUNK_SLOTS` slots, allocated the first time one of them is used.
type Chunk = Box<[ArcSwapOption<IndexEntry>]>;

/// The table the workers read.
pub struct IndexTable {
    chunks: Box<[OnceLock<Chunk>]>,
}

impl Default for IndexTable {
    fn default() -> Self {
        IndexTable { chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect() }
    }
}

impl IndexTable {
    /// The entry for `index`, if it is live. Lock-free: an atomic load or two.
    pub fn get(&self, index: u32) -> Option<Guard<Option<Arc<IndexEntry>>>> {
        let slot = (index & SLOT_MASK) as usize;
        let chunk = self.chunks.get(slot >> CHUNK_BITS)?.get()?;
        let entry = chunk.get(slot & (CHUNK_SLOTS - 1))?.load();
        entry.as_ref().is_some_and(|e| e.keypair.local_index == index).then_some(entry)
    }

    fn slot(&self, slot: usize) -> &ArcSwapOption<IndexEntry> {
        let chunk =
            self.chunks[slot >> CHUNK_BITS].get_or_init(|| (0..CHUNK_SLOTS).map(|_| ArcSwapOption::empty()).collect());
        &chunk[slot & (CHUNK_SLOTS - 1)]
    }
}

/// The control thread's side: which slots are taken and by which index.
pub struct IndexAllocator {
    table: Arc<IndexTable>,
    /// The index holding each slot ever used (0: free), grown as slots are first used.
    owners: Vec<u32>,
    /// The tag each slot was last given.
    tags: Vec<u32>,
    free: VecDeque<u32>,
    live: usize,
}

impl IndexAllocator {
    pub fn new(table: Arc<IndexTable>) -> IndexAllocator {
        IndexAllocator { table, owners: Vec::new(), tags: Vec::new(), free: VecDeque::new(), live: 0 }
    }

    pub fn table(&self) -> &Arc<IndexTable> {
        &self.table
    }

    /// Indices taken (reserved or holding an entry).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// A fresh index, reserved until `release`d; None when all 2^22 slots are taken.
    pub fn allocate(&mut self) -> Option<u32> {
        let slot = match self.free.pop_front() {
            Some(s) => s,
            None if self.owners.len() <= SLOT_MASK as usize => {
                self.owners.push(0);
                self.tags.push(rand::thread_rng().gen::<u32>() & TAG_MASK);
                (self.owners.len() - 1) as u32
            }
            None => return None,
        };
        let s = slot as usize;
        self.tags[s] = (self.tags[s] + 1) & TAG_MASK;
        if self.tags[s] == 0 && slot == 0 {
            self.tags[s] = 1; // index 0 marks a free slot
        }
        let index = self.tags[s] << SLOT_BITS | slot;
        self.owners[s] = index;
        self.live += 1;
        Some(index)
    }

    /// Whether `index` is reserved or holds an entry.
    pub fn is_taken(&self, index: u32) -> bool {
        index != 0 && self.owners.get((index & SLOT_MASK) as usize) == Some(&index)
    }

    /// Publishes `entry` under its keypair's index, which `allocate` gave. False otherwise.
    pub fn insert(&mut self, entry: IndexEntry) -> bool {
        let index = entry.keypair.local_index;
        if !self.is_taken(index) {
            return false;
        }
        self.table.slot((index & SLOT_MASK) as usize).store(Some(Arc::new(entry)));
        true
    }

    /// Frees `index` (its entry, if any, disappears for the workers at once).
    pub fn release(&mut self, index: u32) {
        if !self.is_taken(index) {
            return;
        }
        let slot = index & SLOT_MASK;
        self.owners[slot as usize] = 0;
        if self.table.chunks[slot as usize >> CHUNK_BITS].get().is_some() {
            self.table.slot(slot as usize).store(None);
        }
        self.free.push_back(slot);
        self.live -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::shared::PeerShared;
    use crate::keys::PrivateKey;
    use crate::noise::SessionKeys;
    use crate::session::Keypair;
    use std::time::Instant;

    fn entry(index: u32) -> IndexEntry {
        thread_local! {
            static PEER: Arc<PeerShared> = Arc::new(PeerShared::new(PrivateKey::generate().public_key()));
        }
        let keys =
            SessionKeys { local_index: index, remote_index: 1, send: [1; 32], recv: [2; 32], is_initiator: true };
        IndexEntry { keypair: Arc::new(Keypair::new(&keys, Instant::now())), peer: PEER.with(Arc::clone) }
    }

    #[test]
    fn insert_get_release_and_stale_indices_miss() {
        let mut a = IndexAllocator::new(Arc::new(IndexTable::default()));
        let i = a.allocate().unwrap();
        assert!(a.table().get(i).is_none(), "reserved, not yet published");
        assert!(a.insert(entry(i)));
        assert_eq!(a.table().get(i).unwrap().as_ref().unwrap().keypair.local_index, i);
        assert!(a.table().get(i ^ (1 << 31)).is_none(), "same slot, other tag");
        assert!(!a.insert(entry(i ^ (1 << 30))), "an index not allocated is refused");
        a.release(i);
        assert!(a.table().get(i).is_none());
        assert_eq!(a.len(), 0);
        a.release(i); // twice is harmless
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn freed_slots_are_reused_oldest_first_with_new_tags() {
        let mut a = IndexAllocator::new(Arc::new(IndexTable::default()));
        let first: Vec<u32> = (0..10).map(|_| a.allocate().unwrap()).collect();
        for &i in &first {
            a.insert(entry(i));
        }
        a.release(first[3]);
        a.release(first[7]);
        let again = a.allocate().unwrap();
        assert_eq!(again & SLOT_MASK, first[3] & SLOT_MASK, "the oldest free slot");
        assert_eq!(again >> SLOT_BITS, ((first[3] >> SLOT_BITS) + 1) & TAG_MASK, "the next tag");
        assert!(!a.is_taken(first[3]) && a.table().get(first[3]).is_none(), "the old index misses");
        assert_eq!(a.len(), 9);
        assert_eq!(a.allocate().map(|i| i & SLOT_MASK), Some(first[7] & SLOT_MASK));
        // One slot reused over and over: its old indices come back only after 1,024 uses.
        let mut seen = std::collections::HashSet::new();
        let mut i = again;
        for _ in 0..1023 {
            assert!(seen.insert(i), "index {i:#x} came back early");
            a.release(i);
            i = a.allocate().unwrap();
            assert_eq!(i & SLOT_MASK, again & SLOT_MASK);
        }
        // Many indices: all distinct, all found.
        let many: Vec<u32> = (0..20_000).map(|_| a.allocate().unwrap()).collect();
        for &i in &many {
            assert!(a.insert(entry(i)));
        }
        let mut sorted = many.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), many.len());
        assert!(many.iter().all(|&i| a.table().get(i).is_some()));
    }
}
