//! State the control thread publishes and the workers read without locks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_channel::Sender;

use super::pool::CryptoPool;
use crate::config::uapi::Request;
use crate::io::Socket;
use crate::keys::PublicKey;
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
        }
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

/// Messages for the control thread that carry handshake work (bounded: its fill level is
/// the "under load" signal).
pub struct HandshakePacket {
    pub packet: Vec<u8>,
    pub src: SocketAddr,
}

pub enum ControlMsg {
    /// A packet for a peer without a usable session: keep it and start a handshake.
    Staged {
        peer: Arc<PeerShared>,
        packet: Vec<u8>,
    },
    /// The current keypair is due for renewal (REKEY_AFTER_TIME / _MESSAGES).
    WantHandshake(Arc<PeerShared>),
    /// A responder's `next` keypair got its first packet and is now current.
    Confirmed(Arc<PeerShared>),
    Uapi(Request, Sender<String>),
}

/// Per-reason drop counters, kept per device (the workers bump them, `LOG_LEVEL=debug` shows them).
#[derive(Default)]
pub struct DropCounters {
    pub malformed: AtomicU64,
    pub unknown_index: AtomicU64,
    pub decrypt_failed: AtomicU64,
    pub replayed: AtomicU64,
    pub source_not_allowed: AtomicU64,
    pub no_peer_for_destination: AtomicU64,
    pub no_endpoint: AtomicU64,
    pub handshake_queue_full: AtomicU64,
    /// Worker loops restarted after a panic (see `worker::supervise`).
    pub worker_restarts: AtomicU64,
}

impl DropCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn summary(&self) -> String {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "malformed={} unknown_index={} decrypt_failed={} replayed={} source_not_allowed={} \
             no_peer_for_destination={} no_endpoint={} handshake_queue_full={} worker_restarts={}",
            l(&self.malformed),
            l(&self.unknown_index),
            l(&self.decrypt_failed),
            l(&self.replayed),
            l(&self.source_not_allowed),
            l(&self.no_peer_for_destination),
            l(&self.no_endpoint),
            l(&self.handshake_queue_full),
            l(&self.worker_restarts)
        )
    }
}

pub struct Shared {
    pub epoch: Instant,
    pub routing: ArcSwap<AllowedIps<Arc<PeerShared>>>,
    pub indices: ArcSwap<HashMap<u32, IndexEntry>>,
    pub sockets: ArcSwap<Vec<Arc<Socket>>>,
    pub mtu: AtomicUsize,
    pub handshake_tx: Sender<HandshakePacket>,
    pub control_tx: Sender<ControlMsg>,
    pub stop: AtomicBool,
    /// Set with `stop` when a worker gave up (the daemon then exits with an error).
    pub failed: AtomicBool,
    pub drops: DropCounters,
    /// Seal jobs any worker may take (ordered parallel AEAD for one flow).
    pub crypto_pool: CryptoPool,
}

impl Shared {
    pub fn stamp(&self, now: Instant) -> Stamp {
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }
    pub fn instant(&self, stamp: Stamp) -> Option<Instant> {
        (stamp != 0).then(|| self.epoch + Duration::from_nanos(stamp - 1))
    }
    /// Stops the device because something broke for good.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}
