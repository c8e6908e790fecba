//! The receiver-index table: which entry (a keypair and its peer) a transport message's
//! receiver index names. Workers look an index up per datagram without a lock; the control
//! thread inserts and removes one entry in O(1), never copying the table (a copied map would
//! cost, at 100,000 peers rekeying every two minutes, 100,000 entries 800 times a second).
//!
//! Inside, an index is a slot in a two-level array (chunks allocated on first use) in its low
//! 22 bits and a tag in its high 10: random at a slot's first use, then one more at each
//! reuse, so a stale index misses instead of naming the new keypair, and one full index comes
//! back only after its slot was reused 1,024 times. Freed slots are reused oldest first. So
//! within the microseconds between a helper decrypting a datagram and its owner accepting it,
//! an index names the same keypair.
//!
//! On the wire an index is that slot and tag through a keyed permutation of 32-bit words
//! (`IndexCipher`, secret per device), so indices look random, as the whitepaper and the kernel
//! make them: slots are dense from 0, and without the permutation a sender of garbage that
//! aims at low slots would name a live index one time in 1,024 and buy an AEAD open each time;
//! with it, about N times in 2^32 for N live indices.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwapOption, Guard};
use rand::Rng;

/// What the table holds: anything that knows the wire index it was published under.
pub trait Indexed {
    fn index(&self) -> u32;
}

const SLOT_BITS: u32 = 22;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const CHUNK_BITS: u32 = 12;
const CHUNK_SLOTS: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = 1 << (SLOT_BITS - CHUNK_BITS);
const TAG_MASK: u32 = (1 << (32 - SLOT_BITS)) - 1;

/// `CHUNK_SLOTS` slots, allocated the first time one of them is used.
type Chunk<E> = Box<[ArcSwapOption<E>]>;

/// A keyed permutation of 32-bit words: a four-round balanced Feistel network whose round
/// function is the murmur3 finaliser of the half-word, the round and a round key. Not a
/// cipher for secrets: it hides which words are live indices from a remote sender that sees
/// only its own, at a few nanoseconds a lookup.
#[derive(Clone, Copy)]
pub struct IndexCipher {
    keys: [u32; 4],
}

fn mix(half: u32, round: u32, key: u32) -> u32 {
    let mut h = (half | round << 16) ^ key;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & 0xffff
}

impl IndexCipher {
    /// A cipher with a fresh random key.
    pub fn random() -> Self {
        let mut rng = rand::thread_rng();
        IndexCipher { keys: [rng.gen(), rng.gen(), rng.gen(), rng.gen()] }
    }

    pub fn encrypt(&self, word: u32) -> u32 {
        let (mut l, mut r) = (word >> 16, word & 0xffff);
        for (round, &key) in self.keys.iter().enumerate() {
            (l, r) = (r, l ^ mix(r, round as u32, key));
        }
        l << 16 | r
    }

    pub fn decrypt(&self, word: u32) -> u32 {
        let (mut l, mut r) = (word >> 16, word & 0xffff);
        for (round, &key) in self.keys.iter().enumerate().rev() {
            (l, r) = (r ^ mix(l, round as u32, key), l);
        }
        l << 16 | r
    }
}

/// The table the workers read.
pub struct IndexTable<E> {
    chunks: Box<[OnceLock<Chunk<E>>]>,
    cipher: IndexCipher,
}

impl<E> Default for IndexTable<E> {
    fn default() -> Self {
        IndexTable { chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(), cipher: IndexCipher::random() }
    }
}

impl<E: Indexed> IndexTable<E> {
    /// The entry for the wire index `index`, if it is live. Lock-free: a few multiplies, then
    /// an atomic load or two.
    pub fn get(&self, index: u32) -> Option<Guard<Option<Arc<E>>>> {
        let slot = (self.cipher.decrypt(index) & SLOT_MASK) as usize;
        let chunk = self.chunks.get(slot >> CHUNK_BITS)?.get()?;
        let entry = chunk.get(slot & (CHUNK_SLOTS - 1))?.load();
        entry.as_ref().is_some_and(|e| e.index() == index).then_some(entry)
    }

    fn slot(&self, slot: usize) -> &ArcSwapOption<E> {
        let chunk =
            self.chunks[slot >> CHUNK_BITS].get_or_init(|| (0..CHUNK_SLOTS).map(|_| ArcSwapOption::empty()).collect());
        &chunk[slot & (CHUNK_SLOTS - 1)]
    }
}

/// The control thread's side: which slots are taken and by which index.
pub struct IndexAllocator<E> {
    table: Arc<IndexTable<E>>,
    /// The (wire) index holding each slot ever used (0: free), grown as slots are first used.
    owners: Vec<u32>,
    /// The tag each slot was last given.
    tags: Vec<u32>,
    free: VecDeque<u32>,
    live: usize,
}

impl<E: Indexed> IndexAllocator<E> {
    pub fn new(table: Arc<IndexTable<E>>) -> IndexAllocator<E> {
        IndexAllocator { table, owners: Vec::new(), tags: Vec::new(), free: VecDeque::new(), live: 0 }
    }

    pub fn table(&self) -> &Arc<IndexTable<E>> {
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
        let mut index;
        loop {
            self.tags[s] = (self.tags[s] + 1) & TAG_MASK;
            index = self.table.cipher.encrypt(self.tags[s] << SLOT_BITS | slot);
            // Wire index 0 marks a free slot: that tag is skipped.
            if index != 0 {
                break;
            }
        }
        self.owners[s] = index;
        self.live += 1;
        Some(index)
    }

    fn slot_of(&self, index: u32) -> usize {
        (self.table.cipher.decrypt(index) & SLOT_MASK) as usize
    }

    /// Whether `index` is reserved or holds an entry.
    pub fn is_taken(&self, index: u32) -> bool {
        index != 0 && self.owners.get(self.slot_of(index)) == Some(&index)
    }

    /// Publishes `entry` under its index, which `allocate` gave. False otherwise.
    pub fn insert(&mut self, entry: E) -> bool {
        let index = entry.index();
        if !self.is_taken(index) {
            return false;
        }
        self.table.slot(self.slot_of(index)).store(Some(Arc::new(entry)));
        true
    }

    /// Frees `index` (its entry, if any, disappears for the workers at once).
    pub fn release(&mut self, index: u32) {
        if !self.is_taken(index) {
            return;
        }
        let slot = self.slot_of(index) as u32;
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

    /// An entry that is only its index.
    struct Entry(u32);
    impl Indexed for Entry {
        fn index(&self) -> u32 {
            self.0
        }
    }

    fn entry(index: u32) -> Entry {
        Entry(index)
    }

    #[test]
    fn insert_get_release_and_stale_indices_miss() {
        let mut a = IndexAllocator::<Entry>::new(Arc::new(IndexTable::default()));
        let i = a.allocate().unwrap();
        assert!(a.table().get(i).is_none(), "reserved, not yet published");
        assert!(a.insert(entry(i)));
        assert_eq!(a.table().get(i).unwrap().as_ref().unwrap().0, i);
        let c = a.table().cipher;
        let other_tag = c.encrypt(c.decrypt(i) ^ (1 << 31));
        assert!(a.table().get(other_tag).is_none(), "same slot, other tag");
        assert!(!a.insert(entry(c.encrypt(c.decrypt(i) ^ (1 << 30)))), "an index not allocated is refused");
        a.release(i);
        assert!(a.table().get(i).is_none());
        assert_eq!(a.len(), 0);
        a.release(i); // twice is harmless
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn freed_slots_are_reused_oldest_first_with_new_tags() {
        let mut a = IndexAllocator::<Entry>::new(Arc::new(IndexTable::default()));
        let first: Vec<u32> = (0..10).map(|_| a.allocate().unwrap()).collect();
        for &i in &first {
            a.insert(entry(i));
        }
        a.release(first[3]);
        a.release(first[7]);
        let c = a.table().cipher;
        let inner = |i: u32| c.decrypt(i);
        let again = a.allocate().unwrap();
        assert_eq!(inner(again) & SLOT_MASK, inner(first[3]) & SLOT_MASK, "the oldest free slot");
        assert_eq!(inner(again) >> SLOT_BITS, ((inner(first[3]) >> SLOT_BITS) + 1) & TAG_MASK, "the next tag");
        assert!(!a.is_taken(first[3]) && a.table().get(first[3]).is_none(), "the old index misses");
        assert_eq!(a.len(), 9);
        assert_eq!(a.allocate().map(|i| inner(i) & SLOT_MASK), Some(inner(first[7]) & SLOT_MASK));
        // One slot reused over and over: its old indices come back only after 1,024 uses.
        let mut seen = std::collections::HashSet::new();
        let mut i = again;
        for _ in 0..1023 {
            assert!(seen.insert(i), "index {i:#x} came back early");
            a.release(i);
            i = a.allocate().unwrap();
            assert_eq!(inner(i) & SLOT_MASK, inner(again) & SLOT_MASK);
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

    #[test]
    fn the_cipher_is_a_keyed_permutation() {
        let a = IndexCipher::random();
        let b = IndexCipher::random();
        let mut rng = rand::thread_rng();
        for _ in 0..100_000 {
            let w: u32 = rng.gen();
            assert_eq!(a.decrypt(a.encrypt(w)), w);
        }
        for w in [0u32, 1, 2, u32::MAX, 1 << 22] {
            assert_eq!(a.encrypt(a.decrypt(w)), w);
        }
        let same = (0..1000u32).filter(|&w| a.encrypt(w) == b.encrypt(w)).count();
        assert!(same < 5, "two keys give two permutations: {same} agree");
        // Neighbouring slots land far apart.
        let spread: Vec<u32> = (0..16u32).map(|s| a.encrypt(s) >> 28).collect();
        assert!(spread.iter().collect::<std::collections::HashSet<_>>().len() > 4, "{spread:?}");
    }

    /// A sender of garbage that knows the layout (dense slots from 0, a 10-bit tag) aims at
    /// live slots with random tags: without the permutation one probe in 1,024 named a live
    /// index; with it, about as often as a random word does (N in 2^32).
    #[test]
    fn probes_aimed_at_live_slots_miss() {
        let mut a = IndexAllocator::<Entry>::new(Arc::new(IndexTable::default()));
        let live: Vec<u32> = (0..10_000).map(|_| a.allocate().unwrap()).collect();
        for &i in &live {
            assert!(a.insert(entry(i)));
        }
        let mut rng = rand::thread_rng();
        let mut hits = 0;
        for _ in 0..1_000_000 {
            let slot = rng.gen_range(0..10_000u32);
            let tag = rng.gen::<u32>() & TAG_MASK;
            if a.table().get(tag << SLOT_BITS | slot).is_some() {
                hits += 1;
            }
        }
        // Expected about 2.3 (10^6 x 10^4 / 2^32); the unpermuted layout gave about 980.
        assert!(hits < 30, "{hits} of a million aimed probes named a live index");
        assert!(live.iter().all(|&i| a.table().get(i).is_some()), "every live index is found");
    }
}
