//! Ordered parallel sealing, on the kernel's `queueing.c` model: the worker that reads a flow
//! from its TUN queue (the owner) routes each packet, stamps its nonce and frames it in its
//! send batch in order; the ChaCha20-Poly1305 work may then run on any worker; the owner sends
//! the batch only once every datagram in it is sealed, so the wire order is the nonce order.
//!
//! The unit of work is one chunk of the send batch (`SEND_CHUNK`, about one GSO group): when
//! the owner moves on to the next chunk, the full one is moved (not copied, not shared) into a
//! job on the device's queue and an idle worker is woken. No lock is taken per packet: a job
//! crosses two channels, and the only per-packet work besides the seal is a slice index.
//!
//! Progress never depends on a helper: before waiting, the owner seals whatever is still
//! queued itself (its own jobs or another worker's), so a busy or parked helper only costs the
//! parallelism, never the batch. A round that fits in one chunk is sealed in place.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use tracing::error;

use super::packet::offload::PendingChecksum;
use super::pool::{CryptoPool, Job};
use crate::io::SendBatch;
use crate::noise::messages::TRANSPORT_HEADER_LEN;
use crate::session::Keypair;

/// How long an owner waits for a job a helper took before it gives the chunk up: only a
/// helper that panicked mid-seal (a bug) can make this happen.
const HELPER_TIMEOUT: Duration = Duration::from_secs(1);

/// A datagram framed in a chunk: where it is. Its header carries its counter.
#[derive(Clone, Copy)]
struct Framed {
    offset: u32,
    len: u32,
    /// A cut segment's L4 checksum, taken just before the seal, and the segment's length.
    checksum: Option<(PendingChecksum, u32)>,
}

/// The datagrams framed into one chunk, in runs of one keypair (so no reference count is
/// touched per packet).
#[derive(Default)]
pub struct ChunkWork {
    items: Vec<Framed>,
    runs: Vec<(usize, Arc<Keypair>)>,
}

impl ChunkWork {
    fn add(&mut self, keypair: &Arc<Keypair>, offset: usize, len: usize, checksum: Option<(PendingChecksum, u32)>) {
        if !self.runs.last().is_some_and(|(_, k)| Arc::ptr_eq(k, keypair)) {
            self.runs.push((self.items.len(), keypair.clone()));
        }
        self.items.push(Framed { offset: offset as u32, len: len as u32, checksum });
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Seals every datagram in `chunk`; returns how many could not be (never, for datagrams
    /// `Keypair::frame` made).
    fn seal(&self, chunk: &mut [u8]) -> u64 {
        let mut failed = 0;
        for (r, (first, keypair)) in self.runs.iter().enumerate() {
            let end = self.runs.get(r + 1).map_or(self.items.len(), |(next, _)| *next);
            for f in &self.items[*first..end] {
                let range = f.offset as usize..(f.offset + f.len) as usize;
                let sealed = chunk.get_mut(range).map(|msg| {
                    if let Some((pending, seg_len)) = f.checksum {
                        let plain = TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + seg_len as usize;
                        if let Some(seg) = msg.get_mut(plain) {
                            pending.fill(seg);
                        }
                    }
                    keypair.seal_framed(msg).is_ok()
                });
                failed += u64::from(sealed != Some(true));
            }
        }
        failed
    }

    fn clear(&mut self) {
        self.items.clear();
        self.runs.clear();
    }
}

/// A chunk on its way to be sealed by whichever worker takes it, and back to its owner.
pub struct SealJob {
    owner: usize,
    /// The owner's round it belongs to (see `Sealer::finish`).
    round: u64,
    index: usize,
    chunk: Vec<u8>,
    work: ChunkWork,
    failed: u64,
    reply: Sender<SealJob>,
}

impl Job for SealJob {
    fn owner(&self) -> usize {
        self.owner
    }

    fn run(mut self: Box<Self>) {
        self.failed = self.work.seal(&mut self.chunk);
        let reply = self.reply.clone();
        // The owner holds its receiver until every job it sent came back.
        let _ = reply.send(*self);
    }
}

/// One worker's side: what it framed into each chunk of its send batch, and its jobs out.
pub struct Sealer {
    worker: usize,
    /// Counts `finish` calls: a reply of an earlier round (a helper that came back after the
    /// owner gave up on it) is dropped, never put into this round's batch.
    round: u64,
    chunks: Vec<ChunkWork>,
    /// The chunk being filled.
    open: usize,
    /// Which chunks are out with a job.
    out: Vec<bool>,
    reply_tx: Sender<SealJob>,
    reply_rx: Receiver<SealJob>,
    /// Datagrams that could not be sealed (a bug if ever non-zero).
    pub failed: u64,
    /// Whether this round's full chunks go to the pool: what `CryptoPool::shares` said for
    /// the round (never, until told).
    sharing: bool,
}

impl Sealer {
    pub fn new(worker: usize, chunks: usize) -> Sealer {
        let (reply_tx, reply_rx) = unbounded();
        Sealer {
            worker,
            round: 0,
            chunks: (0..chunks).map(|_| ChunkWork::default()).collect(),
            open: 0,
            out: vec![false; chunks],
            reply_tx,
            reply_rx,
            failed: 0,
            sharing: false,
        }
    }

    /// Whether the chunks framed from now on may be sealed by other workers.
    pub fn set_sharing(&mut self, sharing: bool) {
        self.sharing = sharing;
    }

    /// Records a datagram `Keypair::frame` wrote at (`chunk`, `offset`). When the batch has
    /// moved on to a new chunk, the previous one is complete and goes to the pool.
    /// `checksum`: a cut segment's L4 checksum still to take, and the segment's length; it is
    /// taken right before the seal, by whichever worker seals the chunk.
    pub fn add(
        &mut self,
        pool: &CryptoPool,
        batch: &mut SendBatch,
        (chunk, offset): (usize, usize),
        len: usize,
        keypair: &Arc<Keypair>,
        checksum: Option<(PendingChecksum, u32)>,
    ) {
        if chunk != self.open {
            self.hand_off(pool, batch, self.open);
            self.open = chunk;
        }
        if let Some(work) = self.chunks.get_mut(chunk) {
            work.add(keypair, offset, len, checksum);
        }
    }

    fn hand_off(&mut self, pool: &CryptoPool, batch: &mut SendBatch, index: usize) {
        if !self.sharing || self.chunks.get(index).is_none_or(ChunkWork::is_empty) || self.out[index] {
            return;
        }
        let job = SealJob {
            owner: self.worker,
            round: self.round,
            index,
            chunk: batch.take_chunk(index),
            work: std::mem::take(&mut self.chunks[index]),
            failed: 0,
            reply: self.reply_tx.clone(),
        };
        self.out[index] = true;
        pool.submit(Box::new(job), self.worker);
    }

    /// Seals everything framed since the last call and brings every chunk home: after this
    /// the batch may be sent.
    pub fn finish(&mut self, pool: &CryptoPool, batch: &mut SendBatch) {
        for (i, work) in self.chunks.iter_mut().enumerate() {
            if !self.out[i] && !work.is_empty() {
                self.failed += work.seal(batch.chunk_mut(i));
                work.clear();
            }
        }
        self.open = 0;
        if self.out.contains(&true) {
            self.bring_home(pool, batch);
        }
        self.round = self.round.wrapping_add(1);
    }

    fn bring_home(&mut self, pool: &CryptoPool, batch: &mut SendBatch) {
        pool.help(self.worker);
        while self.out.contains(&true) {
            match self.reply_rx.recv_timeout(HELPER_TIMEOUT) {
                Ok(job) if job.round != self.round || !self.out.get(job.index).copied().unwrap_or(false) => {
                    error!("worker {}: a helper returned a chunk of an earlier round; dropped", self.worker);
                }
                Ok(mut job) => {
                    self.failed += job.failed;
                    batch.put_chunk(job.index, std::mem::take(&mut job.chunk));
                    job.work.clear();
                    self.out[job.index] = false;
                    self.chunks[job.index] = job.work;
                }
                Err(_) => {
                    error!("worker {}: a helper never returned a chunk; its datagrams are lost", self.worker);
                    for (i, out) in self.out.iter_mut().enumerate() {
                        if *out {
                            batch.put_chunk(i, vec![0u8; crate::io::batch::SEND_CHUNK]);
                            *out = false;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::pool::ParallelCrypto;
    use crate::io::Doorbell;
    use crate::noise::SessionKeys;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    fn keypair(initiator: bool) -> Arc<Keypair> {
        let keys =
            SessionKeys { local_index: 1, remote_index: 2, send: [7; 32], recv: [7; 32], is_initiator: initiator };
        Arc::new(Keypair::new(&keys, Instant::now()))
    }

    /// Frames `n` datagrams of 1400 bytes (byte i of datagram k is k), as the TX path does.
    fn frame_all(pool: &CryptoPool, sealer: &mut Sealer, batch: &mut SendBatch, k: &Arc<Keypair>, n: usize) {
        let to = SocketAddr::from(([127, 0, 0, 1], 9));
        let first = k.reserve_counters(n as u64, Instant::now()).unwrap();
        for i in 0..n {
            let total = Keypair::sealed_len(1400, 1420);
            assert!(batch.has_room(total));
            let (chunk, space) = batch.reserve(total);
            space[16..16 + 1400].fill(i as u8);
            let total = k.frame(first + i as u64, space, 1400, 1420).unwrap();
            let (chunk2, offset) = batch.commit(total, to);
            assert_eq!(chunk, chunk2);
            sealer.add(pool, batch, (chunk, offset), total, k, None);
        }
    }

    /// Every datagram opens at the receiver, in nonce order, whoever sealed it.
    fn check_in_order(batch: &SendBatch, n: usize) {
        let rx = keypair(false);
        let mut seen = 0;
        for g in batch.groups() {
            for d in batch.datagrams(g) {
                let mut d = d.to_vec();
                let (counter, _) = rx.open(&mut d, Instant::now()).expect("sealed and authentic");
                assert_eq!(counter, seen as u64, "wire order is nonce order");
                assert!(d[16..16 + 1400].iter().all(|&b| b == seen as u8));
                seen += 1;
            }
        }
        assert_eq!(seen, n);
    }

    #[test]
    fn a_helper_thread_seals_chunks_and_the_owner_keeps_the_order() {
        let bells: Vec<Arc<Doorbell>> = (0..2).map(|_| Arc::new(Doorbell::twin())).collect();
        let pool = Arc::new(CryptoPool::new(bells.clone(), ParallelCrypto::Always));
        let stop = Arc::new(AtomicBool::new(false));
        let helped = {
            let (pool, stop, bell) = (pool.clone(), stop.clone(), bells[1].clone());
            std::thread::spawn(move || {
                let mut helped = 0;
                while !stop.load(Ordering::Relaxed) {
                    if pool.park(1) {
                        let _ = bell.receiver().unwrap().recv_timeout(Duration::from_millis(20));
                    }
                    pool.unpark(1);
                    helped += pool.help(1);
                }
                helped
            })
        };
        let mut batch = SendBatch::new(64, 2048, true);
        let mut sealer = Sealer::new(0, 64);
        sealer.set_sharing(pool.shares(false));
        for round in 0..50 {
            let n = 200 + round * 13;
            let k = keypair(true); // counters from 0, as `check_in_order` expects
            frame_all(&pool, &mut sealer, &mut batch, &k, n);
            sealer.finish(&pool, &mut batch);
            check_in_order(&batch, n);
            batch.clear();
        }
        stop.store(true, Ordering::Relaxed);
        let helped = helped.join().unwrap();
        assert_eq!(sealer.failed, 0);
        assert!(helped > 0, "the helper sealed some chunks");
        assert_eq!(pool.jobs_helped(), helped as u64);
    }

    /// A helper that returns a chunk after its owner gave up on it (a later round) must not
    /// have it taken for the current round's: the stale chunk is dropped and the round's own
    /// datagrams go out sealed and in order.
    #[test]
    fn a_late_chunk_from_an_earlier_round_is_dropped() {
        let bells: Vec<Arc<Doorbell>> = (0..2).map(|_| Arc::new(Doorbell::twin())).collect();
        let pool = CryptoPool::new(bells, ParallelCrypto::Always);
        let mut batch = SendBatch::new(16, 2048, true);
        let mut sealer = Sealer::new(0, 16);
        sealer.set_sharing(pool.shares(false));
        let k = keypair(true);
        frame_all(&pool, &mut sealer, &mut batch, &k, 300);
        sealer.finish(&pool, &mut batch);
        batch.clear();
        // What a stalled helper of that round sends back now: chunk 0, garbage.
        let late = SealJob {
            owner: 0,
            round: sealer.round - 1,
            index: 0,
            chunk: vec![0xee; 64],
            work: ChunkWork::default(),
            failed: 0,
            reply: sealer.reply_tx.clone(),
        };
        sealer.reply_tx.send(late).unwrap();
        let k = keypair(true);
        frame_all(&pool, &mut sealer, &mut batch, &k, 300);
        sealer.finish(&pool, &mut batch);
        check_in_order(&batch, 300);
        assert!(sealer.reply_rx.is_empty());
    }

    #[test]
    fn without_a_helper_the_owner_seals_everything_itself() {
        let bells: Vec<Arc<Doorbell>> = (0..2).map(|_| Arc::new(Doorbell::twin())).collect();
        let pool = CryptoPool::new(bells, ParallelCrypto::Always);
        let k = keypair(true);
        let mut batch = SendBatch::new(16, 2048, true);
        let mut sealer = Sealer::new(0, 16);
        sealer.set_sharing(pool.shares(false));
        frame_all(&pool, &mut sealer, &mut batch, &k, 300);
        sealer.finish(&pool, &mut batch);
        check_in_order(&batch, 300);
        assert_eq!(sealer.failed, 0);
    }

    #[test]
    fn only_a_backlogged_round_hands_chunks_out() {
        let one: Vec<Arc<Doorbell>> = vec![Arc::new(Doorbell::twin())];
        assert_eq!(CryptoPool::new(one, ParallelCrypto::Always).mode(), ParallelCrypto::Off, "nobody to help");
        let bells: Vec<Arc<Doorbell>> = (0..2).map(|_| Arc::new(Doorbell::twin())).collect();
        let pool = CryptoPool::new(bells, ParallelCrypto::Backlogged);
        let mut batch = SendBatch::new(16, 2048, true);
        let mut sealer = Sealer::new(0, 16);
        // The owner kept up (its reads did not fill a batch): every chunk stays with it.
        sealer.set_sharing(pool.shares(false));
        frame_all(&pool, &mut sealer, &mut batch, &keypair(true), 300);
        assert_eq!(pool.help(1), 0, "nothing was handed out");
        sealer.finish(&pool, &mut batch);
        check_in_order(&batch, 300);
        batch.clear();
        // It fell behind: full chunks go out, another worker seals them, the order holds.
        sealer.set_sharing(pool.shares(true));
        frame_all(&pool, &mut sealer, &mut batch, &keypair(true), 300);
        assert!(pool.help(1) >= 4, "the full chunks of 300 datagrams were handed out");
        sealer.finish(&pool, &mut batch);
        check_in_order(&batch, 300);
        assert_eq!(sealer.failed, 0);
        assert!(pool.jobs_helped() >= 4);
    }
}
