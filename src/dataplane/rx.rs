//! Inbound: datagrams (several per receive with UDP GRO) are opened in place, checked against
//! the replay window and the peer's allowed IPs, and queued for the TUN (TCP segments of a
//! flow coalesced into one write). Handshake messages go to the control thread.
//!
//! Opening is split as the kernel splits it: the decryption of a whole receive (a GRO train of
//! one flow) may run on any worker (`OpenJob`); the owner then takes the datagrams in arrival
//! order, moves the replay window and checks everything else (`RxRound::datagram_with`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use tracing::error;

use super::gate::{take_handshake, Gate};
use super::packet::ip;
use super::pool::{CryptoPool, Job};
use super::shared::{bump, DropCounters, IndexEntry, Indices, PeerShared, Shared, WorkerMsg};
use crate::io::{Buf, UDP_BUF};
use crate::noise::messages::{TransportHeader, MESSAGE_TRANSPORT, TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN};
use crate::routing::AllowedIps;
use crate::session::SessionError;

pub struct RxRound<'a> {
    pub shared: &'a Shared,
    pub indices: &'a Indices,
    pub routing: &'a AllowedIps<Arc<PeerShared>>,
    pub now: Instant,
    pub stamp: u64,
    /// The worker's own drop counters.
    pub drops: &'a DropCounters,
}

/// What was done to a datagram before the owner took it in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decrypted {
    /// Nothing: not a transport message of a known index, or not handed off.
    #[default]
    Untouched,
    /// Authentic; counter and padded plaintext length, and which of its receive's entries
    /// (`Opened::entries`) it was opened with. The replay window has not moved yet.
    Ok {
        counter: u64,
        len: usize,
        entry: usize,
    },
    Failed(SessionError),
}

/// One receive, decrypted: what was done to each datagram, and the index entries they were
/// opened with, each looked up once per receive (a GRO train is one source's, so usually one),
/// and handed to the owner so it does not look them up again.
#[derive(Default)]
pub struct Opened {
    results: Vec<Decrypted>,
    entries: Vec<Arc<IndexEntry>>,
}

/// Decrypts one datagram if it is a transport message of an index in `indices`; the entry it
/// names is taken from `entries` if this receive met it before, else looked up and added.
fn decrypt(indices: &Indices, datagram: &mut [u8], entries: &mut Vec<Arc<IndexEntry>>, now: Instant) -> Decrypted {
    if datagram.len() < TRANSPORT_MIN_LEN || datagram[..4] != MESSAGE_TRANSPORT.to_le_bytes() {
        return Decrypted::Untouched;
    }
    let Ok(header) = TransportHeader::parse(datagram) else { return Decrypted::Untouched };
    let at = match entries.iter().rposition(|e| e.keypair.local_index == header.receiver) {
        Some(at) => at,
        None => {
            let Some(found) = indices.get(header.receiver) else { return Decrypted::Untouched };
            let Some(entry) = found.as_ref() else { return Decrypted::Untouched };
            entries.push(entry.clone());
            entries.len() - 1
        }
    };
    match entries[at].keypair.decrypt(datagram, now) {
        Ok((counter, len)) => Decrypted::Ok { counter, len, entry: at },
        Err(e) => Decrypted::Failed(e),
    }
}

/// The datagrams of one receive, decrypted on whichever worker takes the job.
pub struct OpenJob {
    owner: usize,
    /// The owner's round it belongs to: a reply from an earlier round (a helper that came
    /// back after the owner gave up on it) is not this round's.
    round: u64,
    /// Where the receive sits in the owner's round.
    slot: usize,
    buf: Buf,
    opened: Opened,
    indices: Arc<Indices>,
    now: Instant,
    reply: Sender<OpenJob>,
}

impl Job for OpenJob {
    fn owner(&self) -> usize {
        self.owner
    }

    fn run(mut self: Box<Self>) {
        decrypt_all(&self.indices, &mut self.buf, &mut self.opened, self.now);
        let reply = self.reply.clone();
        let _ = reply.send(*self);
    }
}

fn decrypt_all(indices: &Indices, buf: &mut Buf, opened: &mut Opened, now: Instant) {
    opened.results.clear();
    opened.entries.clear();
    let stride = buf.stride.max(1);
    for datagram in buf.filled_mut().chunks_mut(stride) {
        opened.results.push(decrypt(indices, datagram, &mut opened.entries, now));
    }
}

/// A receive worth handing to another worker: a GRO train of at least this many datagrams.
const HAND_OFF_MIN_DATAGRAMS: usize = 8;
/// How long an owner waits for a receive a helper took (only a helper's panic, a bug, makes
/// it wait that long).
const HELPER_TIMEOUT: Duration = Duration::from_secs(1);

/// One worker's side of parallel opening: per receive of the round, what was decrypted.
pub struct Opener {
    worker: usize,
    round: u64,
    results: Vec<Opened>,
    /// Which receives of the round are out with a job.
    handed: Vec<bool>,
    out: usize,
    reply_tx: Sender<OpenJob>,
    reply_rx: Receiver<OpenJob>,
}

impl Opener {
    pub fn new(worker: usize) -> Opener {
        let (reply_tx, reply_rx) = unbounded();
        Opener { worker, round: 0, results: Vec::new(), handed: Vec::new(), out: 0, reply_tx, reply_rx }
    }

    /// Decrypts the transport datagrams of `bufs`: receives after the first that carry a GRO
    /// train go to the pool, the rest are done here, and every one is back in its place on
    /// return (nothing goes to the pool unless `share`). `result(i, k)` then says what was
    /// done to datagram k of receive i.
    pub fn decrypt(&mut self, pool: &CryptoPool, share: bool, indices: &Arc<Indices>, bufs: &mut [Buf], now: Instant) {
        self.round = self.round.wrapping_add(1);
        self.results.resize_with(bufs.len(), Opened::default);
        self.handed.clear();
        self.handed.resize(bufs.len(), false);
        for (slot, buf) in bufs.iter_mut().enumerate() {
            let datagrams = buf.len.div_ceil(buf.stride.max(1));
            if slot > 0 && share && datagrams >= HAND_OFF_MIN_DATAGRAMS {
                let job = OpenJob {
                    owner: self.worker,
                    round: self.round,
                    slot,
                    buf: std::mem::replace(buf, Buf::new(0)),
                    opened: std::mem::take(&mut self.results[slot]),
                    indices: indices.clone(),
                    now,
                    reply: self.reply_tx.clone(),
                };
                pool.submit(Box::new(job), self.worker);
                self.handed[slot] = true;
                self.out += 1;
            }
        }
        for (slot, buf) in bufs.iter_mut().enumerate() {
            if !self.handed[slot] {
                decrypt_all(indices, buf, &mut self.results[slot], now);
            }
        }
        if self.out == 0 {
            return;
        }
        pool.help(self.worker);
        while self.out > 0 {
            match self.reply_rx.recv_timeout(HELPER_TIMEOUT) {
                Ok(job) if job.round != self.round || !self.handed.get(job.slot).copied().unwrap_or(false) => {
                    // Late, from a round given up on: its buffer and results are dropped here,
                    // never put in this round's place (nor its buffer in the receive pool).
                    error!("worker {}: a helper returned a receive of an earlier round; dropped", self.worker);
                }
                Ok(job) => {
                    self.handed[job.slot] = false;
                    bufs[job.slot] = job.buf;
                    self.results[job.slot] = job.opened;
                    self.out -= 1;
                }
                Err(_) => {
                    error!("worker {}: a helper never returned a receive; its datagrams are lost", self.worker);
                    for (slot, buf) in bufs.iter_mut().enumerate() {
                        if self.handed[slot] {
                            self.handed[slot] = false;
                            *buf = Buf::new(UDP_BUF); // len 0: nothing of it is delivered
                            self.results[slot] = Opened::default();
                        }
                    }
                    self.out = 0;
                }
            }
        }
    }

    /// What was done to datagram `k` of receive `slot`, and the index entry it was opened with.
    pub fn result(&self, slot: usize, k: usize) -> (Decrypted, Option<&Arc<IndexEntry>>) {
        let Some(opened) = self.results.get(slot) else { return (Decrypted::Untouched, None) };
        let pre = opened.results.get(k).copied().unwrap_or_default();
        let entry = match pre {
            Decrypted::Ok { entry, .. } => opened.entries.get(entry),
            _ => None,
        };
        (pre, entry)
    }
}

impl RxRound<'_> {
    /// Handles one datagram, whose decryption `pre` may already have done; returns the length
    /// of an inner packet to deliver, found at `datagram[16..16 + len]`. Handshake messages
    /// pass `gate` on their way to the control thread.
    pub fn datagram_with(
        &self,
        datagram: &mut [u8],
        src: SocketAddr,
        pre: Decrypted,
        opened_with: Option<&Arc<IndexEntry>>,
        gate: &mut Gate,
    ) -> Option<usize> {
        let drops = self.drops;
        if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
            bump(&drops.malformed);
            return None;
        }
        let kind = u32::from(datagram[0]);
        if kind != MESSAGE_TRANSPORT {
            take_handshake(self.shared, gate, datagram, src, self.now);
            return None;
        }
        let Ok(header) = TransportHeader::parse(datagram) else {
            bump(&drops.malformed);
            return None;
        };
        let found;
        let entry = match opened_with {
            Some(entry) => entry,
            None => {
                found = self.indices.get(header.receiver);
                let Some(entry) = found.as_ref().and_then(|g| g.as_ref()) else {
                    bump(&drops.unknown_index);
                    return None;
                };
                entry
            }
        };
        let peer = &entry.peer;
        let keypairs = peer.keypairs.load();
        if !keypairs.contains(&entry.keypair) {
            bump(&drops.unknown_index);
            return None;
        }
        let wire_len = datagram.len() as u64;
        let opened = match pre {
            Decrypted::Untouched => entry.keypair.open(datagram, self.now),
            Decrypted::Ok { counter, len, .. } => entry.keypair.accept(counter).map(|()| (counter, len)),
            Decrypted::Failed(e) => Err(e),
        };
        let len = match opened {
            Ok((_, len)) => len,
            Err(SessionError::Replayed(_)) => {
                bump(&drops.replayed);
                return None;
            }
            Err(_) => {
                bump(&drops.decrypt_failed);
                return None;
            }
        };
        // Authenticated: now (and only now) the packet may move state.
        if keypairs.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, &entry.keypair)) {
            let used = entry.keypair.clone();
            peer.keypairs.rcu(|cur| cur.confirmed(&used).map(Arc::new).unwrap_or_else(|| cur.clone()));
            let _ = self.shared.control_tx.try_send(WorkerMsg::Confirmed(peer.clone()));
        }
        peer.set_endpoint_if_changed(src);
        peer.rx_bytes.fetch_add(wire_len, Ordering::Relaxed);
        peer.last_received.store(self.stamp, Ordering::Relaxed);
        peer.mark_active(&self.shared.active_tx);
        // Keep the key fresh: an initiator whose current keypair nears REJECT_AFTER_TIME
        // rekeys, once per keypair (a packet on the previous keypair asks nothing).
        if keypairs.current.as_ref().is_some_and(|current| current.wants_lastminute_handshake(self.now))
            && !peer.handshake_requested.swap(true, Ordering::Relaxed)
        {
            let _ = self.shared.control_tx.try_send(WorkerMsg::WantHandshake(peer.clone()));
        }
        if len == 0 {
            return None; // keepalive
        }
        let plaintext = &datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        let Some(inner) = ip::parse(plaintext) else {
            bump(&drops.malformed);
            return None;
        };
        // Cryptokey routing as an access list: the inner source must be this peer's.
        if !self.routing.lookup(inner.src).is_some_and(|owner| Arc::ptr_eq(owner, peer)) {
            bump(&drops.source_not_allowed);
            return None;
        }
        peer.last_data_received.store(self.stamp, Ordering::Relaxed);
        Some(inner.total_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::pool::ParallelCrypto;
    use crate::io::Doorbell;

    /// A GRO train of `n` datagrams of 100 bytes (not decryptable: no index is live).
    fn train(n: usize) -> Buf {
        let mut b = Buf::new(UDP_BUF);
        b.len = n * 100;
        b.stride = 100;
        for (k, d) in b.data[..b.len].chunks_mut(100).enumerate() {
            d[0] = 4;
            d[4] = k as u8;
        }
        b
    }

    /// A helper that comes back after its owner gave up (a later round) must not be taken
    /// for the current round's: its buffer (here a zero-capacity placeholder, as one left by
    /// a timeout) never lands in the round, which gets its own receive back whole.
    #[test]
    fn a_late_reply_from_an_earlier_round_is_dropped() {
        let bells: Vec<Arc<Doorbell>> = (0..2).map(|_| Arc::new(Doorbell::twin())).collect();
        let pool = CryptoPool::new(bells, ParallelCrypto::Always);
        let indices = Arc::new(Indices::default());
        let mut opener = Opener::new(0);
        let now = Instant::now();
        let mut bufs = vec![train(1), train(10)];
        opener.decrypt(&pool, true, &indices, &mut bufs, now);
        assert_eq!(bufs[1].data.len(), UDP_BUF, "a round's own job comes back");
        // The late reply of that round, as a stalled helper would send it now.
        let late = OpenJob {
            owner: 0,
            round: opener.round,
            slot: 1,
            buf: Buf::new(0),
            opened: Opened::default(),
            indices: indices.clone(),
            now,
            reply: opener.reply_tx.clone(),
        };
        opener.reply_tx.send(late).unwrap();
        let mut bufs = vec![train(1), train(10)];
        opener.decrypt(&pool, true, &indices, &mut bufs, now);
        assert_eq!(bufs[1].data.len(), UDP_BUF, "the round's own receive is in its place");
        assert_eq!((bufs[1].len, bufs[1].data[4 + 100]), (1000, 1), "and whole");
        assert_eq!(opener.result(1, 9).0, Decrypted::Untouched);
        assert!(opener.reply_rx.is_empty(), "nothing left over for the next round");
    }

    /// A train of one keypair's datagrams is opened with one lookup of its index: every
    /// datagram carries the same entry to the owner.
    #[test]
    fn a_receive_looks_its_index_up_once() {
        use crate::dataplane::indices::IndexAllocator;
        use crate::keys::PrivateKey;
        use crate::noise::SessionKeys;
        use crate::session::Keypair;
        let now = Instant::now();
        let mut alloc = IndexAllocator::new(Arc::new(Indices::default()));
        let index = alloc.allocate().unwrap();
        let ours =
            SessionKeys { local_index: index, remote_index: 9, send: [1; 32], recv: [2; 32], is_initiator: true };
        let theirs =
            SessionKeys { local_index: 9, remote_index: index, send: [2; 32], recv: [1; 32], is_initiator: false };
        let peer = Arc::new(PeerShared::new(PrivateKey::generate().public_key()));
        assert!(alloc.insert(IndexEntry { keypair: Arc::new(Keypair::new(&ours, now)), peer }));
        let sender = Keypair::new(&theirs, now);
        let mut buf = Buf::new(UDP_BUF);
        let stride = Keypair::sealed_len(64, 1420);
        for counter in 0..10u64 {
            let d = &mut buf.data[buf.len..buf.len + stride];
            assert_eq!(sender.seal_padded(counter, d, 64, 1420).unwrap(), stride);
            buf.len += stride;
        }
        buf.stride = stride;
        let mut opened = Opened::default();
        decrypt_all(alloc.table(), &mut buf, &mut opened, now);
        assert_eq!(opened.entries.len(), 1, "one lookup for the train");
        assert!(opened.results.iter().all(|r| matches!(r, Decrypted::Ok { entry: 0, .. })), "{:?}", opened.results);
        assert_eq!(opened.entries[0].keypair.local_index, index);
    }
}
