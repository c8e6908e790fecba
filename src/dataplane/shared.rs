//! State the control thread publishes and the workers read without locks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_channel::Sender;

use super::indices::{IndexTable, Indexed};
use super::pool::CryptoPool;
use crate::constants::{MAX_STAGED_PACKETS, UNDER_LOAD_STICKY};
use crate::io::Socket;
use crate::keys::PublicKey;
use crate::noise::CookieChecker;
use crate::routing::AllowedIps;
use crate::session::{Keypair, Keypairs};

/// Nanoseconds since the device's epoch, 0 meaning "never".
pub type Stamp = u64;

/// The part of a peer the workers touch: all atomics and atomically swapped pointers.
pub struct PeerShared {
    pub public_key: PublicKey,
    pub endpoint: ArcSwapOption<SocketAddr>,
    pub keypairs: ArcSwap<Keypairs>,
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub last_sent: AtomicU64,
    pub last_received: AtomicU64,
    pub last_data_sent: AtomicU64,
    pub last_data_received: AtomicU64,
    /// Set by a worker that asked the control thread for a handshake, so it asks once.
    pub handshake_requested: AtomicBool,
    /// Packets waiting for a session (the kernel's staged queue, bounded the same way). A
    /// lock, not a channel: staging is rare, and an idle peer then costs a few words.
    staged: Mutex<VecDeque<Vec<u8>>>,
    /// The control thread was told there is something staged and has not drained it yet.
    staged_notified: AtomicBool,
    /// Queued for the control thread's timers since it last looked (see `mark_active`).
    active: AtomicBool,
}

impl PeerShared {
    pub fn new(public_key: PublicKey) -> Self {
        PeerShared {
            public_key,
            endpoint: ArcSwapOption::empty(),
            keypairs: ArcSwap::from_pointee(Keypairs::default()),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            last_sent: AtomicU64::new(0),
            last_received: AtomicU64::new(0),
            last_data_sent: AtomicU64::new(0),
            last_data_received: AtomicU64::new(0),
            handshake_requested: AtomicBool::new(false),
            staged: Mutex::new(VecDeque::new()),
            staged_notified: AtomicBool::new(false),
            active: AtomicBool::new(false),
        }
    }

    /// A worker stamped this peer: queue it once for the control thread's timers, which then
    /// visit only peers that moved or are due, never a sweep over all of them. The flag check
    /// is relaxed; a stamp that races with the control thread's read is caught by its
    /// re-check one tick later.
    pub fn mark_active(self: &Arc<Self>, active: &Sender<Arc<PeerShared>>) {
        if !self.active.load(Ordering::Relaxed) && !self.active.swap(true, Ordering::AcqRel) {
            let _ = active.send(self.clone());
        }
    }

    /// The control thread took the peer off the active queue.
    pub fn clear_active(&self) {
        self.active.store(false, Ordering::Release);
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues packets until a session exists, dropping the oldest beyond
    /// `MAX_STAGED_PACKETS`. True if the control thread should be told (once per drain).
    pub fn stage(&self, packets: impl IntoIterator<Item = Vec<u8>>) -> bool {
        let mut q = self.staged();
        for p in packets {
            if q.len() >= MAX_STAGED_PACKETS {
                q.pop_front();
            }
            q.push_back(p);
        }
        drop(q);
        !self.staged_notified.swap(true, Ordering::AcqRel)
    }

    /// The message telling the control thread was lost (its queue was full), or the control
    /// thread has taken it: the next staged packet tells it again.
    pub fn stage_notice_lost(&self) {
        self.staged_notified.store(false, Ordering::Release);
    }

    /// Everything staged, for the control thread to send.
    pub fn take_staged(&self) -> VecDeque<Vec<u8>> {
        self.staged_notified.store(false, Ordering::Release);
        std::mem::take(&mut *self.staged())
    }

    /// Roaming: remember the source of the latest authenticated packet (paper 2.1).
    pub fn set_endpoint_if_changed(&self, addr: SocketAddr) -> bool {
        if self.endpoint.load().as_deref() == Some(&addr) {
            return false;
        }
        self.endpoint.store(Some(Arc::new(addr)));
        true
    }
}

/// A receiver index: which keypair, of which peer.
#[derive(Clone)]
pub struct IndexEntry {
    pub keypair: Arc<Keypair>,
    pub peer: Arc<PeerShared>,
}

impl Indexed for IndexEntry {
    fn index(&self) -> u32 {
        self.keypair.local_index
    }
}

/// The receiver indices the workers look transport messages up in.
pub type Indices = IndexTable<IndexEntry>;

/// How far a handshake message was checked before it reached the control thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screening {
    /// Not at all (not counted either).
    Unchecked,
    /// Counted, and its mac1 is valid.
    Mac1,
    /// Counted, its mac1 is valid, and so is its mac2 (the device was under load).
    Mac1AndMac2,
}

/// Messages for the control thread that carry handshake work (bounded: its fill level is
/// the "under load" signal).
pub struct HandshakePacket {
    pub packet: Vec<u8>,
    pub src: SocketAddr,
    /// How far the worker that received it checked it.
    pub screening: Screening,
}

/// What the workers tell the control thread (the device's own requests, UAPI and metrics,
/// travel on a channel of the device's).
pub enum WorkerMsg {
    /// Packets for a peer without a usable session were staged: start a handshake.
    Staged(Arc<PeerShared>),
    /// The current keypair is due for renewal (REKEY_AFTER_TIME / _MESSAGES).
    WantHandshake(Arc<PeerShared>),
    /// A responder's `next` keypair got its first packet and is now current.
    Confirmed(Arc<PeerShared>),
    /// Look at the device's state now, not at the next tick: it is stopping (its interface
    /// was deleted), and a new daemon for the same name may be waiting for this one to go.
    Wake,
}

/// Who counts a drop: each thread has counters of its own (on a cache line of their own, so
/// workers dropping a flood never share one); they are summed when read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counting {
    Worker(usize),
    /// The side socket's reader.
    Side,
    /// The control thread.
    Control,
}

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Per-reason drop counters of one thread (the workers, the side socket's reader and
        /// the control thread bump them; `/metrics` and `LOG_LEVEL=debug` show their sums).
        #[derive(Default)]
        #[repr(align(128))]
        pub struct DropCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Worker loops restarted after a panic (see `worker::supervise`).
            pub worker_restarts: AtomicU64,
        }

        /// The sum of every thread's drop counters at one moment.
        #[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
        pub struct DropTotals {
            $(pub $name: u64,)*
            pub worker_restarts: u64,
        }

        impl DropTotals {
            fn add(&mut self, c: &DropCounters) {
                $(self.$name += c.$name.load(Ordering::Relaxed);)*
                self.worker_restarts += c.worker_restarts.load(Ordering::Relaxed);
            }

            /// Every drop reason with its count (worker restarts are not drops and are not here).
            pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }
        }
    };
}

drop_reasons! {
    malformed,
    unknown_index,
    decrypt_failed,
    replayed,
    source_not_allowed,
    no_peer_for_destination,
    no_endpoint,
    handshake_queue_full,
    /// Cookie replies refused before the control thread: over their rate, or arriving while
    /// its queue is an eighth full (they must never crowd out initiations).
    cookie_reply_refused,
    /// Receives of the side socket the kernel dropped (its filter thinning endpoints over
    /// their cookie cap, or its buffer full); a GRO train counts once.
    handshake_dropped_by_kernel,
}

/// Counts one event (relaxed: counters order nothing).
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl DropTotals {
    pub fn summary(&self) -> String {
        let mut s: Vec<String> = self.by_reason().iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        s.push(format!("worker_restarts={}", self.worker_restarts));
        s.join(" ")
    }
}

/// What was done with handshake messages (by the workers' gate and the control thread).
#[derive(Default)]
pub struct HandshakeCounters {
    pub initiations_received: AtomicU64,
    pub responses_received: AtomicU64,
    pub cookie_replies_received: AtomicU64,
    pub initiations_sent: AtomicU64,
    pub responses_sent: AtomicU64,
    /// Handshakes that made a session we initiated / they initiated.
    pub completed_as_initiator: AtomicU64,
    pub completed_as_responder: AtomicU64,
    /// Answers under load to messages without a valid mac2.
    pub cookie_replies_sent: AtomicU64,
    /// Messages with a valid mac2 refused by the per-source limiter under load.
    pub rate_limited: AtomicU64,
    /// Messages whose mac1 did not prove knowledge of our public key.
    pub invalid_mac1: AtomicU64,
    /// Messages that parsed and passed mac1 but failed later (unknown peer, bad AEAD, replayed
    /// TAI64N, no pending initiation).
    pub rejected: AtomicU64,
}

/// One worker's traffic, on a cache line of its own (each worker writes only its own).
#[derive(Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Packets read from the TUN (a TSO/USO super-packet counts once) and their bytes.
    pub tun_packets: AtomicU64,
    pub tun_bytes: AtomicU64,
    /// Datagrams received from UDP (each GRO segment counts) and their bytes.
    pub udp_datagrams: AtomicU64,
    pub udp_bytes: AtomicU64,
    /// Times the backend's TUN reads and UDP receives found their buffers all taken (the
    /// io_uring backend's provided buffer rings running dry); copied from it each round.
    pub tun_reads_ran_dry: AtomicU64,
    pub udp_reads_ran_dry: AtomicU64,
    /// When the worker last went round its loop (a `Stamp`; 0: not yet): a worker that stops
    /// moving stops the watchdog pings (`answering`).
    pub heartbeat: AtomicU64,
}

/// Whether every worker went round its loop within `limit` of `now` (all stamps).
pub fn answering(heartbeats: impl IntoIterator<Item = Stamp>, now: Stamp, limit: Duration) -> bool {
    let limit = limit.as_nanos() as u64;
    heartbeats.into_iter().all(|beat| beat != 0 && now.saturating_sub(beat) <= limit)
}

impl WorkerCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

pub struct Shared {
    pub epoch: Instant,
    pub routing: ArcSwap<AllowedIps<Arc<PeerShared>>>,
    pub indices: Arc<Indices>,
    pub sockets: ArcSwap<Vec<Arc<Socket>>>,
    /// The socket the kernel steers every non-transport datagram to (handshake messages,
    /// garbage), read by its own thread; None where steering is not available.
    pub side_socket: ArcSwapOption<Socket>,
    pub mtu: AtomicUsize,
    pub handshake_tx: Sender<HandshakePacket>,
    pub control_tx: Sender<WorkerMsg>,
    /// Peers whose stamps moved, for the control thread's timers (unbounded, but each peer is
    /// in it at most once).
    pub active_tx: Sender<Arc<PeerShared>>,
    pub stop: AtomicBool,
    /// Set with `stop` when a worker gave up (the daemon then exits with an error).
    pub failed: AtomicBool,
    /// Set with `stop` when the TUN said its interface is gone (deleted, wherever it lives).
    pub interface_gone: AtomicBool,
    /// One set per worker, then the side socket's reader's, then the control thread's.
    drops: Box<[DropCounters]>,
    pub handshakes: HandshakeCounters,
    /// One per worker, by index.
    pub workers: Vec<WorkerCounters>,
    /// Until when (a stamp) handshake messages without a valid mac2 get cookie replies instead
    /// of work (`gate`: set when the control thread's queue backs up or a worker sees a flood).
    pub under_load_until: AtomicU64,
    /// mac1/mac2 checks and cookie replies for our identity; None without a private key.
    /// Published by the control thread, used by the workers and by it.
    pub cookies: ArcSwapOption<CookieChecker>,
    /// Seal jobs any worker may take (ordered parallel AEAD for one flow).
    pub crypto_pool: CryptoPool,
}

impl Shared {
    pub fn new(
        workers: usize,
        crypto_pool: CryptoPool,
        handshake_tx: Sender<HandshakePacket>,
        control_tx: Sender<WorkerMsg>,
        active_tx: Sender<Arc<PeerShared>>,
    ) -> Shared {
        Shared {
            epoch: Instant::now(),
            routing: ArcSwap::from_pointee(AllowedIps::default()),
            indices: Arc::new(Indices::default()),
            sockets: ArcSwap::from_pointee(Vec::new()),
            side_socket: ArcSwapOption::empty(),
            mtu: AtomicUsize::new(crate::constants::DEFAULT_MTU as usize),
            handshake_tx,
            control_tx,
            active_tx,
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            interface_gone: AtomicBool::new(false),
            drops: (0..workers + 2).map(|_| DropCounters::default()).collect(),
            handshakes: HandshakeCounters::default(),
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
            under_load_until: AtomicU64::new(0),
            cookies: ArcSwapOption::empty(),
            crypto_pool,
        }
    }

    /// One worker's worth, with the receiving ends of its channels.
    #[cfg(test)]
    pub fn for_tests() -> (Shared, TestChannels) {
        let (handshake_tx, handshake) = crossbeam_channel::unbounded();
        let (control_tx, control) = crossbeam_channel::unbounded();
        let (active_tx, active) = crossbeam_channel::unbounded();
        let shared = Shared::new(
            1,
            CryptoPool::new(Vec::new(), super::pool::ParallelCrypto::Off),
            handshake_tx,
            control_tx,
            active_tx,
        );
        (shared, TestChannels { handshake, control, active })
    }

    /// The drop counters of one thread.
    pub fn drops(&self, who: Counting) -> &DropCounters {
        let workers = self.drops.len() - 2;
        let at = match who {
            Counting::Worker(i) => i.min(workers.saturating_sub(1)),
            Counting::Side => workers,
            Counting::Control => workers + 1,
        };
        &self.drops[at]
    }

    /// Every thread's drop counters, summed.
    pub fn drop_totals(&self) -> DropTotals {
        let mut totals = DropTotals::default();
        for c in self.drops.iter() {
            totals.add(c);
        }
        totals
    }

    /// Handshake messages without a valid mac2 are answered with cookies until `stamp`.
    pub fn under_load(&self, stamp: Stamp) -> bool {
        stamp < self.under_load_until.load(Ordering::Relaxed)
    }
    /// A sign of load at `stamp`: the device stays under load for `UNDER_LOAD_STICKY` more.
    pub fn mark_under_load(&self, stamp: Stamp) {
        let until = stamp.saturating_add(UNDER_LOAD_STICKY.as_nanos() as u64);
        self.under_load_until.fetch_max(until, Ordering::Relaxed);
    }
    pub fn stamp(&self, now: Instant) -> Stamp {
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }
    pub fn instant(&self, stamp: Stamp) -> Option<Instant> {
        (stamp != 0).then(|| self.epoch + Duration::from_nanos(stamp - 1))
    }
    /// Whether every worker went round its loop within `limit`.
    pub fn workers_answering(&self, now: Instant, limit: Duration) -> bool {
        answering(self.workers.iter().map(|w| w.heartbeat.load(Ordering::Relaxed)), self.stamp(now), limit)
    }

    /// Stops the device because something broke for good.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }
    /// The interface was deleted: the daemon stops.
    pub fn interface_deleted(&self) {
        self.interface_gone.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.control_tx.try_send(WorkerMsg::Wake);
    }
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub struct TestChannels {
    pub handshake: crossbeam_channel::Receiver<HandshakePacket>,
    pub control: crossbeam_channel::Receiver<WorkerMsg>,
    pub active: crossbeam_channel::Receiver<Arc<PeerShared>>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn workers_answer_only_while_every_one_moves() {
        let ms = |n: u64| n * 1_000_000 + 1;
        let limit = Duration::from_secs(5);
        assert!(answering([ms(9_000), ms(10_000)], ms(10_000), limit));
        assert!(answering([ms(5_000)], ms(10_000), limit), "exactly at the limit");
        assert!(!answering([ms(9_000), ms(4_999)], ms(10_000), limit), "one stalled worker is enough");
        assert!(!answering([0, ms(10_000)], ms(10_000), limit), "a worker that never started");
        assert!(answering([ms(10_001)], ms(10_000), limit), "a beat stamped after the look is fine");
    }

    use super::*;
    use crate::keys::PrivateKey;

    /// The staged queue keeps the newest MAX_STAGED_PACKETS, and the control thread is told
    /// once per drain (again if the notice was lost).
    #[test]
    fn staged_queue_is_bounded_and_notifies_once() {
        let peer = PeerShared::new(PrivateKey::generate().public_key());
        assert!(peer.stage([vec![0u8]]), "the first packet tells the control thread");
        assert!(!peer.stage((1..200u32).map(|i| i.to_be_bytes().to_vec())), "later ones do not");
        peer.stage_notice_lost();
        assert!(peer.stage([vec![9u8]]), "a lost notice is repeated");
        let q = peer.take_staged();
        assert_eq!(q.len(), MAX_STAGED_PACKETS);
        assert_eq!(q.back(), Some(&vec![9u8]), "the newest is kept");
        assert_eq!(q.front(), Some(&73u32.to_be_bytes().to_vec()), "the oldest were dropped");
        assert!(peer.take_staged().is_empty());
        assert!(peer.stage([vec![1u8]]), "after a drain the next packet tells again");
    }

    /// Each thread counts on its own line; a read sums them all.
    #[test]
    fn drops_are_counted_per_thread_and_summed() {
        let (shared, _channels) = Shared::for_tests();
        bump(&shared.drops(Counting::Worker(0)).malformed);
        bump(&shared.drops(Counting::Side).malformed);
        bump(&shared.drops(Counting::Control).malformed);
        bump(&shared.drops(Counting::Side).handshake_queue_full);
        assert!(!std::ptr::eq(shared.drops(Counting::Worker(0)), shared.drops(Counting::Side)));
        assert!(!std::ptr::eq(shared.drops(Counting::Side), shared.drops(Counting::Control)));
        let totals = shared.drop_totals();
        assert_eq!((totals.malformed, totals.handshake_queue_full), (3, 1));
        assert_eq!(totals.by_reason().len(), 10);
        assert!(totals.summary().starts_with("malformed=3 unknown_index=0"), "{}", totals.summary());
    }
}
