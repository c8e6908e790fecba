//! The control thread: applies configuration, runs handshakes and timers, publishes the
//! routing snapshot, index table and keypairs the workers read.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use rand::Rng;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::config::uapi::{self, Request, ERRNO_IO, ERRNO_PORT_IN_USE, ERRNO_TOO_MANY_PEERS};
use crate::config::{DeviceChange, DeviceStatus, PeerStatus};
use crate::constants::REKEY_TIMEOUT;
use crate::dataplane::gate::{check_mac1, cookie_unless_mac2, queue_reply, Screening, UNDER_LOAD_QUEUED};
use crate::dataplane::indices::IndexAllocator;
use crate::dataplane::shared::{
    bump, ControlMsg, DeviceReport, HandshakePacket, IndexEntry, PeerReport, PeerShared, Shared,
};
use crate::io::syscalls::BatchSender;
use crate::io::{Network, SendBatch, Socket};
use crate::keys::{PresharedKey, PublicKey};
use crate::noise::messages::{Initiation, Response, MESSAGE_TRANSPORT, TRANSPORT_HEADER_LEN};
use crate::noise::ratelimiter::RateLimiter;
use crate::noise::{consume_initiation, CookieChecker, Handshake, Packet, StaticIdentity, Tai64N};
use crate::peer::{TimerAction, Timers};
use crate::routing::{AllowedIps, IpNet};
use crate::session::{Keypair, Keypairs};

/// Peers one device may have: the kernel's MAX_PEERS_PER_DEVICE.
pub const MAX_PEERS: usize = 1 << 20;
/// Handshake messages handled per wake-up, and cookie replies per batched send (64 bytes
/// each: one 64 KiB chunk).
const COOKIE_BATCH: usize = 1024;
/// When a peer whose stamps moved is looked at again (one timer tick).
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Last values of a peer's worker-written stamps that the timers have seen.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    sent: u64,
    received: u64,
    data_sent: u64,
    data_received: u64,
}

struct PeerState {
    shared: Arc<PeerShared>,
    /// This peer's allowed IPs in the order given (the kernel's per-peer list), so removing a
    /// peer or replacing its prefixes costs its own prefixes, and `get` lists them without
    /// walking the table.
    allowed_ips: Vec<IpNet>,
    /// Receiver indices of this peer in the index table (at most its three slots plus one
    /// just displaced), so pruning after a handshake does not scan the table.
    indices: Vec<u32>,
    handshake: Handshake,
    timers: Timers,
    last_handshake: Option<SystemTime>,
    seen: Seen,
    handshake_requested_at: Option<Instant>,
    /// The local index of our initiation in flight, also in `Control::pending`.
    pending_index: Option<u32>,
    /// The deadline this peer's live entry in `Control::deadlines` has.
    scheduled: Option<Instant>,
    /// The index of the responder keypair a worker has yet to see confirmed (promote from
    /// `next` to `current` on its first packet).
    awaiting_confirmation: Option<u32>,
}

pub struct Control {
    shared: Arc<Shared>,
    identity: Option<StaticIdentity>,
    listen_port: u16,
    fwmark: u32,
    network: Network,
    workers: usize,
    peers: HashMap<PublicKey, PeerState>,
    allowed: AllowedIps<Arc<PeerShared>>,
    /// Local indices of initiations in flight.
    pending: HashMap<u32, PublicKey>,
    /// The receiver indices: which are taken, in the table the workers read.
    indices: IndexAllocator,
    ratelimiter: RateLimiter,
    /// `MAX_PEERS`, lowered by tests.
    pub(super) peer_limit: usize,
    handshake_rx: Receiver<HandshakePacket>,
    control_rx: Receiver<ControlMsg>,
    /// Peers the workers stamped since the last tick.
    active_rx: Receiver<Arc<PeerShared>>,
    /// Peers by the time their timers next need a look. A peer has at most one entry that
    /// matches its `scheduled`; others are stale and skipped. A wake-up that comes early
    /// finds nothing due and reschedules.
    deadlines: BinaryHeap<Reverse<(Instant, PublicKey)>>,
    /// Peers whose timers this thread changed since the last tick.
    touched: Vec<PublicKey>,
    /// Cookie replies of the handshake messages being drained, sent together (a flood from
    /// one source becomes a few GSO sends, not a syscall per reply).
    cookie_replies: SendBatch,
    sender: BatchSender,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        network: Network,
        workers: usize,
        handshake_rx: Receiver<HandshakePacket>,
        control_rx: Receiver<ControlMsg>,
        active_rx: Receiver<Arc<PeerShared>>,
    ) -> Self {
        let table = shared.indices.clone();
        Control {
            shared,
            identity: None,
            listen_port: 0,
            fwmark: 0,
            network,
            workers,
            peers: HashMap::new(),
            allowed: AllowedIps::default(),
            pending: HashMap::new(),
            indices: IndexAllocator::new(table),
            ratelimiter: RateLimiter::default(),
            peer_limit: MAX_PEERS,
            handshake_rx,
            control_rx,
            active_rx,
            deadlines: BinaryHeap::new(),
            touched: Vec::new(),
            cookie_replies: SendBatch::new(1, COOKIE_BATCH, true),
            sender: BatchSender::default(),
        }
    }

    /// Handles whatever arrives until `deadline`, then returns so the caller can run timers.
    pub fn run_until(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            crossbeam_channel::select! {
                recv(self.handshake_rx) -> msg => if let Ok(msg) = msg { self.on_handshake_burst(msg) },
                recv(self.control_rx) -> msg => if let Ok(msg) = msg { self.on_control(msg) },
                default(deadline - now) => return,
            }
            if self.shared.stopping() {
                return;
            }
        }
    }

    fn socket(&self) -> Option<Arc<Socket>> {
        self.shared.sockets.load().first().cloned()
    }

    /// True if the datagram went out.
    fn send_to_peer(&self, peer: &PeerShared, bytes: &[u8], now: Instant) -> bool {
        let Some(endpoint) = peer.endpoint.load_full() else {
            debug!("peer {}: no endpoint, not sending", peer.public_key);
            return false;
        };
        let Some(sock) = self.socket() else { return false };
        match sock.send_to(bytes, *endpoint) {
            Ok(_) => {
                peer.tx_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                peer.last_sent.store(self.shared.stamp(now), Ordering::Relaxed);
                true
            }
            Err(e) => {
                debug!("peer {}: send to {endpoint} failed: {e}", peer.public_key);
                false
            }
        }
    }

    fn publish_routing(&self) {
        self.shared.routing.store(Arc::new(self.allowed.clone()));
    }

    /// Puts a new keypair in the peer's slots and the index table, and forgets the indices of
    /// this peer's keypairs that are no longer in a slot (displaced now, or rotated out by a
    /// worker confirming a `next`). `rcu` because a worker may rotate the slots concurrently.
    fn install_keypair(&mut self, pk: &PublicKey, keypair: Arc<Keypair>) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        peer.shared.keypairs.rcu(|cur| Arc::new(cur.with_new(keypair.clone())));
        peer.shared.handshake_requested.store(false, Ordering::Relaxed);
        peer.handshake_requested_at = None;
        peer.indices.push(keypair.local_index);
        peer.awaiting_confirmation = (!keypair.is_initiator).then_some(keypair.local_index);
        let shared = peer.shared.clone();
        if !self.indices.insert(IndexEntry { keypair, peer: shared }) {
            warn!("peer {pk}: a keypair under an index that was not allocated");
        }
        self.prune_indices(pk);
    }

    /// Frees the peer's indices whose keypair left its slots.
    fn prune_indices(&mut self, pk: &PublicKey) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let slots = peer.shared.keypairs.load();
        let table = self.indices.table().clone();
        let mut dead = Vec::new();
        peer.indices.retain(|&i| {
            let live = table.get(i).is_some_and(|g| g.as_ref().is_some_and(|e| slots.contains(&e.keypair)));
            if !live {
                dead.push(i);
            }
            live
        });
        for i in dead {
            self.indices.release(i);
        }
    }

    /// Forgets the peer's keypairs, its handshake and the indices of both.
    fn clear_keypairs(&mut self, pk: &PublicKey) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        peer.shared.keypairs.store(Arc::new(Keypairs::default()));
        peer.handshake.clear();
        for i in peer.indices.drain(..) {
            self.indices.release(i);
        }
        if let Some(i) = peer.pending_index.take() {
            self.pending.remove(&i);
            self.indices.release(i);
        }
    }

    fn send_initiation(&mut self, pk: &PublicKey, retry: bool, now: Instant) {
        let Some(identity) = self.identity.clone() else { return };
        let Some(peer) = self.peers.get_mut(pk) else { return };
        if peer.shared.endpoint.load().is_none() {
            return;
        }
        if !peer.timers.permit_initiation(retry, now) {
            return;
        }
        let Some(index) = self.indices.allocate() else {
            warn!("peer {pk}: no receiver index left");
            return;
        };
        let msg = match peer.handshake.create_initiation(&identity, index, Tai64N::now(), now) {
            Ok(m) => m,
            Err(e) => {
                warn!("peer {pk}: cannot create initiation: {e}");
                self.indices.release(index);
                return;
            }
        };
        if let Some(old) = peer.pending_index.replace(index) {
            self.pending.remove(&old);
            self.indices.release(old);
        }
        self.pending.insert(index, *pk);
        peer.timers.handshake_initiated(now);
        debug!("peer {pk}: sending handshake initiation (retry: {retry})");
        let shared = peer.shared.clone();
        if self.send_to_peer(&shared, &msg, now) {
            bump(&self.shared.handshakes.initiations_sent);
        }
        self.touch(pk);
    }

    /// Seals and sends whatever waited for a session; a keepalive if nothing did.
    fn send_staged(&mut self, pk: &PublicKey, keepalive_if_empty: bool, now: Instant) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let keypairs = peer.shared.keypairs.load_full();
        let Some(keypair) = keypairs.current.clone() else { return };
        let mut packets = peer.shared.take_staged();
        let data = !packets.is_empty();
        if packets.is_empty() && keepalive_if_empty {
            packets.push_back(Vec::new());
        }
        let mtu = self.shared.mtu.load(Ordering::Relaxed);
        let shared = peer.shared.clone();
        for p in packets {
            let Some(counter) = keypair.reserve_counters(1, now) else { return };
            let mut buf = vec![0u8; Keypair::sealed_len(p.len(), mtu)];
            buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + p.len()].copy_from_slice(&p);
            if let Ok(n) = keypair.seal_padded(counter, &mut buf, p.len(), mtu) {
                self.send_to_peer(&shared, &buf[..n], now);
            }
        }
        if data {
            shared.last_data_sent.store(self.shared.stamp(now), Ordering::Relaxed);
        }
        self.touch(pk);
    }

    fn send_keepalive(&mut self, pk: &PublicKey, now: Instant) {
        let Some(peer) = self.peers.get(pk) else { return };
        let usable = peer.shared.keypairs.load().current.as_ref().is_some_and(|k| k.usable_for_receive(now));
        if usable {
            self.send_staged(pk, true, now);
        } else {
            self.send_initiation(pk, false, now);
        }
    }

    /// The kernel's rule: a backed-up queue is load (and so is a flood a worker saw, `gate`).
    fn under_load(&self, now: Instant) -> bool {
        let stamp = self.shared.stamp(now);
        if self.handshake_rx.len() >= UNDER_LOAD_QUEUED {
            self.shared.mark_under_load(stamp);
        }
        self.shared.under_load(stamp)
    }

    /// Handles `first` and whatever else waits in the handshake queue (up to a batch), then
    /// sends the cookie replies they earned together. A flood is drained in bursts: one wake-up
    /// and one send per burst.
    fn on_handshake_burst(&mut self, first: HandshakePacket) {
        self.on_handshake_packet(first);
        for _ in 1..COOKIE_BATCH {
            match self.handshake_rx.try_recv() {
                Ok(msg) => self.on_handshake_packet(msg),
                Err(_) => break,
            }
        }
        self.flush_cookie_replies();
    }

    fn flush_cookie_replies(&mut self) {
        if self.cookie_replies.is_empty() {
            return;
        }
        match self.socket() {
            Some(sock) => {
                if let Err(e) = sock.send_batch(&mut self.sender, &mut self.cookie_replies) {
                    debug!("cookie replies: {e}");
                }
            }
            None => self.cookie_replies.clear(),
        }
    }

    fn on_handshake_packet(&mut self, msg: HandshakePacket) {
        let now = Instant::now();
        let (Some(identity), Some(checker)) = (self.identity.clone(), self.shared.cookies.load_full()) else { return };
        let bytes = &msg.packet;
        let counters = &self.shared.handshakes;
        let packet = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                bump(&self.shared.drops.malformed);
                debug!("from {}: {e}", msg.src);
                return;
            }
        };
        if let Packet::CookieReply(c) = &packet {
            bump(&counters.cookie_replies_received);
            // It may answer our initiation (a pending index) or our response (the index of
            // the keypair that response made), as the kernel looks up both.
            let owner = self.pending.get(&c.receiver).copied().or_else(|| {
                let entry = self.indices.table().get(c.receiver)?;
                entry.as_ref().map(|e| e.peer.public_key)
            });
            if let Some(peer) = owner.and_then(|pk| self.peers.get_mut(&pk)) {
                let pk = peer.shared.public_key;
                match peer.handshake.cookies.consume_reply(c, now) {
                    Ok(()) => debug!("peer {pk}: got a cookie reply"),
                    Err(e) => {
                        bump(&counters.rejected);
                        debug!("peer {pk}: {e}")
                    }
                }
            } else {
                bump(&counters.rejected);
            }
            return;
        }
        // mac1 first (cheap, proves the sender knows our public key), then the cookie under
        // load; the worker that received it did what it could (`gate`).
        if msg.screening == Screening::Unchecked && !check_mac1(&checker, counters, bytes) {
            debug!("from {}: handshake message with invalid mac1", msg.src);
            return;
        }
        let under_load = self.under_load(now);
        if under_load && msg.screening != Screening::Mac1AndMac2 {
            if let Some(reply) = cookie_unless_mac2(&checker, bytes, &msg.src, now) {
                if !self.cookie_replies.has_room(reply.len()) {
                    self.flush_cookie_replies();
                }
                queue_reply(&mut self.cookie_replies, &reply, msg.src);
                bump(&self.shared.handshakes.cookie_replies_sent);
                debug!("from {}: under load, sent a cookie reply", msg.src);
                return;
            }
        }
        // Under load even a source that proved its address gets a bounded share of DH work.
        if under_load && !self.ratelimiter.allow(msg.src.ip(), now) {
            bump(&counters.rate_limited);
            debug!("from {}: handshake rate limited", msg.src);
            return;
        }
        match packet {
            Packet::Initiation(init) => self.on_initiation(&identity, &init, msg.src, now),
            Packet::Response(resp) => self.on_response(&identity, &resp, msg.src, now),
            _ => {}
        }
    }

    fn on_initiation(&mut self, identity: &StaticIdentity, init: &Initiation, src: SocketAddr, now: Instant) {
        let rejected = &self.shared.handshakes.rejected;
        let for_us = match consume_initiation(identity, init) {
            Ok(f) => f,
            Err(e) => {
                bump(rejected);
                debug!("from {src}: {e}");
                return;
            }
        };
        let pk = for_us.remote_static;
        let Some(peer) = self.peers.get_mut(&pk) else {
            bump(rejected);
            debug!("from {src}: initiation from unknown peer {pk}");
            return;
        };
        peer.handshake.ensure_static_static(identity);
        if let Err(e) = peer.handshake.consume_initiation(for_us, now) {
            bump(rejected);
            debug!("peer {pk} at {src}: {e}");
            return;
        }
        let Some(index) = self.indices.allocate() else {
            warn!("peer {pk}: no receiver index left");
            return;
        };
        let (response, keys) = match peer.handshake.create_response(index, now) {
            Ok(r) => r,
            Err(e) => {
                debug!("peer {pk}: {e}");
                self.indices.release(index);
                return;
            }
        };
        peer.shared.set_endpoint_if_changed(src);
        peer.shared.last_received.store(self.shared.stamp(now), Ordering::Relaxed);
        peer.timers.session_derived(now);
        let shared = peer.shared.clone();
        self.install_keypair(&pk, Arc::new(Keypair::new(&keys, now)));
        debug!("peer {pk}: answered handshake initiation from {src}");
        if let Some(peer) = self.peers.get_mut(&pk) {
            peer.timers.response_sent(now);
        }
        if self.send_to_peer(&shared, &response, now) {
            bump(&self.shared.handshakes.responses_sent);
        }
        self.touch(&pk);
    }

    fn on_response(&mut self, identity: &StaticIdentity, resp: &Response, src: SocketAddr, now: Instant) {
        let rejected = &self.shared.handshakes.rejected;
        let Some(pk) = self.pending.get(&resp.receiver).copied() else {
            bump(rejected);
            debug!("from {src}: response to no initiation of ours");
            return;
        };
        let Some(peer) = self.peers.get_mut(&pk) else { return };
        let keys = match peer.handshake.consume_response(identity, resp) {
            Ok(k) => k,
            Err(e) => {
                bump(rejected);
                debug!("peer {pk} at {src}: {e}");
                return;
            }
        };
        self.pending.remove(&resp.receiver);
        peer.pending_index = None;
        peer.shared.set_endpoint_if_changed(src);
        peer.shared.last_received.store(self.shared.stamp(now), Ordering::Relaxed);
        peer.timers.handshake_complete(now);
        peer.timers.session_derived(now);
        peer.last_handshake = Some(SystemTime::now());
        bump(&self.shared.handshakes.completed_as_initiator);
        self.install_keypair(&pk, Arc::new(Keypair::new(&keys, now)));
        info!("peer {pk}: handshake complete (we initiated), endpoint {src}");
        // The initiator confirms the session at once: staged packets, or a keepalive.
        self.send_staged(&pk, true, now);
    }

    fn on_control(&mut self, msg: ControlMsg) {
        let now = Instant::now();
        match msg {
            ControlMsg::Wake => {}
            ControlMsg::Staged(peer) => {
                let pk = peer.public_key;
                // Packets staged from now on ask again (and retry the initiation, rate-limited
                // by the timers, as the kernel retries on every packet it stages).
                peer.stage_notice_lost();
                let Some(state) = self.peers.get_mut(&pk) else { return };
                // A session may have appeared since the worker looked.
                let ready = state.shared.keypairs.load().current.as_ref().is_some_and(|k| k.usable_for_receive(now));
                if ready {
                    self.send_staged(&pk, false, now);
                } else {
                    self.send_initiation(&pk, false, now);
                }
            }
            ControlMsg::WantHandshake(peer) => {
                let pk = peer.public_key;
                if let Some(state) = self.peers.get_mut(&pk) {
                    state.handshake_requested_at = Some(now);
                }
                self.send_initiation(&pk, false, now);
                self.touch(&pk);
            }
            ControlMsg::Confirmed(peer) => self.confirm_if_promoted(&peer.public_key, now),
            ControlMsg::Uapi(request, reply) => {
                let text = match request {
                    Request::Get => {
                        let mut text = uapi::format_get(&self.status());
                        text.push_str("errno=0\n\n");
                        text
                    }
                    Request::Set(change) => Zeroizing::new(match self.apply(change, now) {
                        Ok(()) => "errno=0\n\n".to_string(),
                        Err(errno) => format!("errno={errno}\n\n"),
                    }),
                };
                let _ = reply.send(text);
            }
            ControlMsg::Report(reply) => {
                let _ = reply.send(self.report());
            }
        }
    }

    /// Runs the timers of the peers that need it: those the workers stamped, those this
    /// thread changed, and those whose deadline passed. Idle peers cost nothing.
    pub fn run_timers(&mut self) {
        let now = Instant::now();
        let mut due = std::mem::take(&mut self.touched);
        while let Ok(peer) = self.active_rx.try_recv() {
            peer.clear_active();
            due.push(peer.public_key);
        }
        while let Some(Reverse((at, pk))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(peer) = self.peers.get_mut(&pk) {
                if peer.scheduled == Some(at) {
                    peer.scheduled = None;
                    due.push(pk);
                }
            }
        }
        due.sort_unstable();
        due.dedup();
        for pk in due {
            self.run_peer_timers(&pk, now);
        }
    }

    /// A worker promoted the responder keypair we installed (its first packet arrived): the
    /// handshake is complete. Called for the worker's message and again from the timers (the
    /// message may have been lost to a full channel); it acts once.
    fn confirm_if_promoted(&mut self, pk: &PublicKey, now: Instant) {
        let Some(state) = self.peers.get_mut(pk) else { return };
        let Some(index) = state.awaiting_confirmation else { return };
        let promoted = state.shared.keypairs.load().current.as_ref().is_some_and(|k| k.local_index == index);
        if !promoted {
            return;
        }
        state.awaiting_confirmation = None;
        state.timers.handshake_complete(now);
        state.last_handshake = Some(SystemTime::now());
        bump(&self.shared.handshakes.completed_as_responder);
        info!("peer {pk}: handshake complete (they initiated)");
        self.prune_indices(pk);
        self.send_staged(pk, false, now);
        self.touch(pk);
    }

    /// A change to a peer's timers made here: look at it at the next tick.
    fn touch(&mut self, pk: &PublicKey) {
        self.touched.push(*pk);
    }

    /// Feeds the workers' stamps to one peer's timers, fires what is due, and schedules the
    /// next look.
    fn run_peer_timers(&mut self, pk: &PublicKey, now: Instant) {
        let (actions, moved, lost_request) = {
            let Some(peer) = self.peers.get_mut(pk) else { return };
            let s = &peer.shared;
            let cur = Seen {
                sent: s.last_sent.load(Ordering::Relaxed),
                received: s.last_received.load(Ordering::Relaxed),
                data_sent: s.last_data_sent.load(Ordering::Relaxed),
                data_received: s.last_data_received.load(Ordering::Relaxed),
            };
            let at = |stamp| self.shared.instant(stamp).unwrap_or(now);
            if cur.data_sent != peer.seen.data_sent {
                peer.timers.data_sent(at(cur.data_sent));
            }
            if cur.sent != peer.seen.sent {
                peer.timers.any_authenticated_packet_sent(at(cur.sent));
                peer.timers.any_authenticated_packet_traversal(at(cur.sent));
            }
            if cur.data_received != peer.seen.data_received {
                peer.timers.data_received(at(cur.data_received));
            }
            if cur.received != peer.seen.received {
                peer.timers.any_authenticated_packet_received(at(cur.received));
                peer.timers.any_authenticated_packet_traversal(at(cur.received));
            }
            let moved = cur != peer.seen;
            peer.seen = cur;
            // A worker's request for a handshake may be repeated after REKEY_TIMEOUT.
            if peer.handshake_requested_at.is_some_and(|t| now.saturating_duration_since(t) >= REKEY_TIMEOUT) {
                peer.handshake_requested_at = None;
                peer.shared.handshake_requested.store(false, Ordering::Relaxed);
            }
            // A worker asked for a handshake but its message never came (the channel was
            // full): the flag it set is the request.
            let lost_request =
                peer.handshake_requested_at.is_none() && peer.shared.handshake_requested.load(Ordering::Relaxed);
            if lost_request {
                peer.handshake_requested_at = Some(now);
            }
            (peer.timers.handle_timeout(now), moved, lost_request)
        };
        if lost_request {
            self.send_initiation(pk, false, now);
        }
        self.confirm_if_promoted(pk, now);
        for action in actions {
            match action {
                TimerAction::SendInitiation { retry } => self.send_initiation(pk, retry, now),
                TimerAction::SendKeepalive => self.send_keepalive(pk, now),
                TimerAction::GiveUp => {
                    if let Some(peer) = self.peers.get_mut(pk) {
                        debug!(
                            "peer {pk}: handshake did not complete after {} attempts",
                            peer.timers.handshake_attempts()
                        );
                        peer.shared.take_staged();
                    }
                }
                TimerAction::ZeroKeyMaterial => {
                    debug!("peer {pk}: zeroing keys after 3 x REJECT_AFTER_TIME");
                    self.clear_keypairs(pk);
                }
            }
        }
        // Stamps that moved may have raced with a worker's relaxed `mark_active`: look once
        // more a tick later; a peer that stays still is not looked at again.
        let recheck = moved.then(|| now + RECHECK_AFTER);
        self.schedule(pk, recheck);
    }

    /// Queues the peer's next look: its timers' next deadline, a pending handshake request's
    /// expiry, or `extra`, whichever is first.
    fn schedule(&mut self, pk: &PublicKey, extra: Option<Instant>) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let requested = peer.handshake_requested_at.map(|t| t + REKEY_TIMEOUT);
        let Some(next) = [peer.timers.next_deadline(), requested, extra].into_iter().flatten().min() else { return };
        if peer.scheduled.is_some_and(|s| s <= next) {
            return; // an earlier look is queued; it reschedules
        }
        peer.scheduled = Some(next);
        self.deadlines.push(Reverse((next, *pk)));
    }

    pub fn status(&self) -> DeviceStatus {
        let peers = self
            .peers
            .values()
            .map(|p| PeerStatus {
                public_key: p.shared.public_key,
                preshared_key: p.handshake.preshared_key().clone(),
                endpoint: p.shared.endpoint.load().as_deref().copied(),
                last_handshake: p
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| (d.as_secs(), d.subsec_nanos())),
                tx_bytes: p.shared.tx_bytes.load(Ordering::Relaxed),
                rx_bytes: p.shared.rx_bytes.load(Ordering::Relaxed),
                persistent_keepalive: p.timers.persistent_keepalive_interval(),
                allowed_ips: p.allowed_ips.clone(),
            })
            .collect();
        DeviceStatus {
            private_key: self.identity.as_ref().map(|i| i.private.clone()),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers,
        }
    }

    /// The peers for a metrics scrape: pointers and public values only.
    pub fn report(&self) -> DeviceReport {
        DeviceReport {
            public_key: self.identity.as_ref().map(|i| i.public),
            peers: self
                .peers
                .values()
                .map(|p| PeerReport {
                    shared: p.shared.clone(),
                    allowed_ips: p.allowed_ips.clone(),
                    last_handshake: p.last_handshake,
                })
                .collect(),
        }
    }

    fn rebind(&mut self, port: u16) -> Result<(), i32> {
        // Transport messages (type 4) spread over the workers by receiver index; handshake
        // messages and anything else to a socket of their own (`dataplane::gate::serve_side`),
        // so a flood cannot fill the socket a tunnel is received on.
        let bound = self.network.bind(port, self.fwmark, self.workers, Some(MESSAGE_TRANSPORT as u8)).map_err(|e| {
            warn!("cannot listen on UDP port {port}: {e}");
            if e.kind() == std::io::ErrorKind::AddrInUse {
                ERRNO_PORT_IN_USE
            } else {
                ERRNO_IO
            }
        })?;
        self.listen_port = bound.sockets.first().and_then(|s| s.local_port().ok()).ok_or(ERRNO_IO)?;
        let old = self.shared.sockets.swap(Arc::new(bound.sockets));
        for s in old.iter() {
            s.shutdown();
        }
        if let Some(old) = self.shared.side_socket.swap(bound.side) {
            old.shutdown();
        }
        info!("listening on UDP port {}", self.listen_port);
        Ok(())
    }

    fn remove_peer(&mut self, pk: &PublicKey) {
        self.clear_keypairs(pk);
        if let Some(mut peer) = self.peers.remove(pk) {
            self.remove_allowed_ips(&mut peer);
            debug!("peer {pk}: removed");
        }
    }

    /// Takes a peer's prefixes out of the table: its own, not a walk of the table.
    fn remove_allowed_ips(&mut self, peer: &mut PeerState) {
        for net in peer.allowed_ips.drain(..) {
            self.allowed.remove(net);
        }
    }

    /// Gives `net` to peer `pk`; a peer that had it loses it from its list (the kernel moves
    /// a prefix the same way).
    fn add_allowed_ip(&mut self, pk: &PublicKey, net: IpNet) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let previous = self.allowed.insert(net, peer.shared.clone());
        match previous {
            Some(owner) if Arc::ptr_eq(&owner, &peer.shared) => {}
            Some(owner) => {
                peer.allowed_ips.push(net);
                if let Some(old) = self.peers.get_mut(&owner.public_key) {
                    if let Some(at) = old.allowed_ips.iter().position(|n| *n == net) {
                        old.allowed_ips.remove(at);
                    }
                }
            }
            None => peer.allowed_ips.push(net),
        }
    }

    /// Applies a `set`: the checks that can fail first (the peer cap, then the port), so a
    /// refused request leaves the device as it was; then everything else.
    pub fn apply(&mut self, change: DeviceChange, now: Instant) -> Result<(), i32> {
        let kept = if change.replace_peers { 0 } else { self.peers.len() };
        let new: std::collections::HashSet<&PublicKey> = change
            .peers
            .iter()
            .filter(|p| {
                !p.remove && !p.update_only && (change.replace_peers || !self.peers.contains_key(&p.public_key))
            })
            .map(|p| &p.public_key)
            .collect();
        if kept + new.len() > self.peer_limit {
            warn!("refused: {} peers would exceed the limit of {}", kept + new.len(), self.peer_limit);
            return Err(ERRNO_TOO_MANY_PEERS);
        }
        if let Some(port) = change.listen_port {
            if port != self.listen_port || port == 0 {
                self.rebind(port)?;
            }
        }
        if let Some(mark) = change.fwmark {
            self.fwmark = mark;
            for s in self.shared.sockets.load().iter() {
                if let Err(e) = s.set_fwmark(mark) {
                    warn!("cannot set fwmark {mark}: {e}");
                }
            }
        }
        if let Some(key) = change.private_key {
            let new_identity = key.map(StaticIdentity::new);
            let same = match (&self.identity, &new_identity) {
                (Some(a), Some(b)) => a.private == b.private,
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.identity = new_identity;
                self.shared.cookies.store(self.identity.as_ref().map(|i| Arc::new(CookieChecker::new(&i.public))));
                let keys: Vec<PublicKey> = self.peers.keys().copied().collect();
                for pk in keys {
                    self.clear_keypairs(&pk);
                    if let Some(peer) = self.peers.get_mut(&pk) {
                        peer.handshake.identity_changed();
                    }
                }
                // A peer with our own public key cannot exist (the kernel removes it too).
                if let Some(own) = self.identity.as_ref().map(|i| i.public) {
                    self.remove_peer(&own);
                }
            }
        }
        if change.replace_peers {
            let keys: Vec<PublicKey> = self.peers.keys().copied().collect();
            for pk in keys {
                self.remove_peer(&pk);
            }
        }
        for pc in change.peers {
            let pk = pc.public_key;
            self.touch(&pk);
            if pc.remove {
                self.remove_peer(&pk);
                continue;
            }
            if self.identity.as_ref().is_some_and(|i| i.public == pk) {
                debug!("ignoring peer with our own public key");
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = self.peers.entry(pk) {
                if pc.update_only {
                    continue;
                }
                slot.insert(PeerState {
                    shared: Arc::new(PeerShared::new(pk)),
                    handshake: Handshake::new_lazy(pk, PresharedKey::default()),
                    timers: Timers::new(rand::thread_rng().gen()),
                    last_handshake: None,
                    seen: Seen::default(),
                    handshake_requested_at: None,
                    pending_index: None,
                    scheduled: None,
                    awaiting_confirmation: None,
                    allowed_ips: Vec::new(),
                    indices: Vec::new(),
                });
                debug!("peer {pk}: added");
            }
            let Some(peer) = self.peers.get_mut(&pk) else { continue };
            if let Some(psk) = pc.preshared_key {
                peer.handshake.set_preshared_key(psk);
            }
            if let Some(ep) = pc.endpoint {
                peer.shared.endpoint.store(Some(Arc::new(crate::addr::canonical(ep))));
            }
            if pc.replace_allowed_ips {
                let mut nets = std::mem::take(&mut peer.allowed_ips);
                for net in nets.drain(..) {
                    self.allowed.remove(net);
                }
                if let Some(peer) = self.peers.get_mut(&pk) {
                    peer.allowed_ips = nets; // keeps the allocation
                }
            }
            for net in pc.allowed_ips {
                self.add_allowed_ip(&pk, net);
            }
            if let Some(interval) = pc.persistent_keepalive {
                let Some(peer) = self.peers.get_mut(&pk) else { continue };
                let was = peer.timers.persistent_keepalive_interval();
                peer.timers.set_persistent_keepalive(interval, now);
                if was == interval && interval > 0 {
                    // Unchanged: no need for the immediate keepalive a new interval gets.
                    peer.timers.any_authenticated_packet_traversal(now);
                }
            }
        }
        self.publish_routing();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Device, DeviceIo};
    use super::*;
    use crate::io::twin::TwinNet;
    use crate::keys::PrivateKey;

    /// A device "B" on a twin network with one peer "A" whose keys the test holds, and A's
    /// address (nothing listens there; what B sends is recorded).
    struct Setup {
        device: Device,
        net: Arc<TwinNet>,
        a: StaticIdentity,
        a_addr: SocketAddr,
        b_public: PublicKey,
    }

    fn setup() -> Setup {
        let net = TwinNet::new();
        let (io, _hosts) = DeviceIo::twin(&net, 1, false, crate::dataplane::pool::ParallelCrypto::Off);
        let mut device = Device::start(io).unwrap();
        let b = PrivateKey::generate();
        let b_public = b.public_key();
        let a = StaticIdentity::new(PrivateKey::generate());
        let text = format!("set=1\nprivate_key={}\npublic_key={}\n", b.to_hex(), a.public.to_hex());
        let Ok(Request::Set(change)) = uapi::parse_request(&text) else { panic!("a set") };
        device.control.apply(change, Instant::now()).unwrap();
        net.recording.store(true, Ordering::Relaxed);
        Setup { device, net, a, a_addr: "127.0.0.1:9".parse().unwrap(), b_public }
    }

    /// What B sent to A so far, of message type `kind`.
    fn sent(s: &Setup, kind: u8) -> Vec<Vec<u8>> {
        s.net.take_recorded().into_iter().filter(|(_, to, d)| *to == s.a_addr && d[0] == kind).map(|r| r.2).collect()
    }

    /// A initiates; B (the device) answers. Returns B's response.
    fn handshake_from_a(s: &mut Setup) -> Response {
        let mut hs = Handshake::new(&s.a, s.b_public, PresharedKey::default());
        let init = hs.create_initiation(&s.a, 7, Tai64N::now(), Instant::now()).unwrap();
        s.device.control.on_handshake_packet(HandshakePacket {
            packet: init.to_vec(),
            src: s.a_addr,
            screening: Screening::Unchecked,
        });
        let responses = sent(s, 2);
        assert_eq!(responses.len(), 1, "B answered");
        Response::parse(&responses[0]).unwrap()
    }

    /// Under load (the handshake queue past 1/8), a drained burst of initiations without
    /// mac2 gets one cookie reply each, sent together after the burst; A, holding the cookie
    /// from the last reply, then gets through with mac2 while B is still under load.
    #[test]
    fn under_load_a_burst_gets_cookie_replies_and_mac2_gets_through() {
        let mut s = setup();
        let flood = UNDER_LOAD_QUEUED + 300;
        let mut cookies = crate::noise::CookieGenerator::new(&s.b_public);
        let mut hs = Handshake::new(&s.a, s.b_public, PresharedKey::default());
        let now = Instant::now();
        for i in 0..flood {
            let mut init = hs.create_initiation(&s.a, i as u32, Tai64N::now(), now).unwrap().to_vec();
            cookies.stamp(&mut init, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, now);
            s.device
                .shared
                .handshake_tx
                .try_send(HandshakePacket { packet: init, src: s.a_addr, screening: Screening::Unchecked })
                .unwrap();
        }
        let first = s.device.control.handshake_rx.try_recv().unwrap();
        s.device.control.on_handshake_burst(first);
        let replies = sent(&s, 3);
        assert_eq!(replies.len(), flood.min(COOKIE_BATCH), "one cookie reply per message drained");
        assert_eq!(sent(&s, 2).len(), 0, "no DH work under load");
        assert!(s.device.shared.under_load(s.device.shared.stamp(Instant::now())));
        let counted = s.device.shared.handshakes.cookie_replies_sent.load(Ordering::Relaxed);
        assert_eq!(counted as usize, replies.len());
        // The last reply answers the last initiation A stamped: A takes the cookie.
        let last = crate::noise::messages::CookieReply::parse(replies.last().unwrap()).unwrap();
        cookies.consume_reply(&last, now).unwrap();
        let mut init = hs.create_initiation(&s.a, 9999, Tai64N::now(), now).unwrap().to_vec();
        cookies.stamp(&mut init, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, now);
        s.device.control.on_handshake_burst(HandshakePacket {
            packet: init,
            src: s.a_addr,
            screening: Screening::Unchecked,
        });
        assert_eq!(sent(&s, 2).len(), 1, "with a valid mac2, B answers even under load");
    }

    /// A cookie reply may answer B's *response* (A under load): B must take the cookie, so its
    /// next handshake message to A carries a mac2. The kernel looks up both index kinds.
    #[test]
    fn a_cookie_reply_to_our_response_is_taken() {
        let mut s = setup();
        let response = handshake_from_a(&mut s);
        let b_addr = TwinNet::address(s.device.control.listen_port);
        let reply =
            CookieChecker::new(&s.a.public).create_reply(response.sender, &response.mac1, &b_addr, Instant::now());
        s.device.control.on_handshake_packet(HandshakePacket {
            packet: reply.to_bytes().to_vec(),
            src: s.a_addr,
            screening: Screening::Unchecked,
        });
        // B answered A just now; its own initiation may follow REKEY_TIMEOUT later.
        s.device.control.send_initiation(&s.a.public, false, Instant::now() + REKEY_TIMEOUT);
        let inits = sent(&s, 1);
        assert_eq!(inits.len(), 1);
        let mac2 = &inits[0][Initiation::MAC2_OFFSET..Initiation::MAC2_OFFSET + 16];
        assert_ne!(mac2, [0u8; 16], "B's initiation carries the cookie's mac2");
        s.device.stop();
    }

    /// The worker's `Confirmed` message can be lost to a full channel; the handshake must
    /// still be completed (timers, last handshake) when the control thread next looks at the
    /// peer, which the worker queued.
    #[test]
    fn a_lost_confirmation_is_caught_by_the_timers() {
        let mut s = setup();
        handshake_from_a(&mut s);
        let peer = s.device.control.peers[&s.a.public].shared.clone();
        assert!(s.device.control.status().peers[0].last_handshake.is_none());
        // What a worker does on the first packet under `next`, without its message.
        let next = peer.keypairs.load().next.clone().expect("a responder keypair awaits confirmation");
        peer.keypairs.rcu(|cur| cur.confirmed(&next).map(Arc::new).unwrap_or_else(|| cur.clone()));
        peer.mark_active(&s.device.shared.active_tx);
        s.device.control.run_timers();
        assert!(s.device.control.status().peers[0].last_handshake.is_some(), "the handshake counts as complete");
        s.device.stop();
    }

    /// The worker's `WantHandshake` can be lost too: the flag it set is the request.
    #[test]
    fn a_lost_handshake_request_is_caught_by_the_timers() {
        let mut s = setup();
        handshake_from_a(&mut s);
        let peer = s.device.control.peers[&s.a.public].shared.clone();
        // B's response went out a REKEY_TIMEOUT ago (it rate-limits B's own initiations).
        let earlier = Instant::now().checked_sub(REKEY_TIMEOUT).expect("the clock is past 5 s");
        s.device.control.peers.get_mut(&s.a.public).expect("A is B's peer").timers.response_sent(earlier);
        assert!(!peer.handshake_requested.swap(true, Ordering::Relaxed));
        peer.mark_active(&s.device.shared.active_tx);
        s.device.control.run_timers();
        assert_eq!(sent(&s, 1).len(), 1, "B initiated a handshake");
        s.device.stop();
    }
}
