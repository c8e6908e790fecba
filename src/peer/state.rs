//! What the control thread keeps per peer: its handshake and timers, its prefixes and
//! indices, and the last worker stamps its timers saw. The workers' side of the peer (the
//! atomics they stamp) is `PeerShared`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::timers::Timers;
use crate::dataplane::shared::{PeerShared, Stamp};
use crate::keys::{PresharedKey, PublicKey};
use crate::noise::Handshake;
use crate::routing::IpNet;

/// Last values of a peer's worker-written stamps that the timers have seen.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub sent: Stamp,
    pub received: Stamp,
    pub data_sent: Stamp,
    pub data_received: Stamp,
}

pub struct PeerState {
    pub shared: Arc<PeerShared>,
    /// This peer's allowed IPs in the order given (the kernel's per-peer list), so removing a
    /// peer or replacing its prefixes costs its own prefixes, and `get` lists them without
    /// walking the table.
    pub allowed_ips: Vec<IpNet>,
    /// Receiver indices of this peer in the index table (at most its three slots plus one
    /// just displaced), so pruning after a handshake does not scan the table.
    pub indices: Vec<u32>,
    pub handshake: Handshake,
    pub timers: Timers,
    pub last_handshake: Option<SystemTime>,
    pub seen: Seen,
    pub handshake_requested_at: Option<Instant>,
    /// The local index of our initiation in flight, also in the control thread's `pending`.
    pub pending_index: Option<u32>,
    /// The deadline this peer's live entry in the control thread's deadlines has.
    pub scheduled: Option<Instant>,
    /// The index of the responder keypair a worker has yet to see confirmed (promote from
    /// `next` to `current` on its first packet).
    pub awaiting_confirmation: Option<u32>,
}

impl PeerState {
    /// A new peer; `jitter` seeds its timers' random jitter.
    pub fn new(public_key: PublicKey, jitter: u64) -> PeerState {
        PeerState {
            shared: Arc::new(PeerShared::new(public_key)),
            handshake: Handshake::new_lazy(public_key, PresharedKey::default()),
            timers: Timers::new(jitter),
            last_handshake: None,
            seen: Seen::default(),
            handshake_requested_at: None,
            pending_index: None,
            scheduled: None,
            awaiting_confirmation: None,
            allowed_ips: Vec::new(),
            indices: Vec::new(),
        }
    }

    /// Feeds the timers the stamps the workers wrote since the last look (`instant` turns a
    /// stamp into a time); true if any moved.
    pub fn take_stamps(&mut self, instant: impl Fn(Stamp) -> Instant) -> bool {
        let s = &self.shared;
        let cur = Seen {
            sent: s.last_sent.load(Ordering::Relaxed),
            received: s.last_received.load(Ordering::Relaxed),
            data_sent: s.last_data_sent.load(Ordering::Relaxed),
            data_received: s.last_data_received.load(Ordering::Relaxed),
        };
        if cur.data_sent != self.seen.data_sent {
            self.timers.data_sent(instant(cur.data_sent));
        }
        if cur.sent != self.seen.sent {
            self.timers.any_authenticated_packet_sent(instant(cur.sent));
            self.timers.any_authenticated_packet_traversal(instant(cur.sent));
        }
        if cur.data_received != self.seen.data_received {
            self.timers.data_received(instant(cur.data_received));
        }
        if cur.received != self.seen.received {
            self.timers.any_authenticated_packet_received(instant(cur.received));
            self.timers.any_authenticated_packet_traversal(instant(cur.received));
        }
        let moved = cur != self.seen;
        self.seen = cur;
        moved
    }
}
