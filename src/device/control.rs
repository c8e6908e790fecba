//! The control thread's state and its loop: it takes the workers' messages, handshake
//! messages and the device's requests, and publishes the routing snapshot, index table and
//! keypairs the workers read. Its work is split as the kernel splits it: handshake dispatch
//! and cookie replies (`handshakes.rs`, the kernel's receive.c/cookie.c part), timers and
//! staged sending (`timers.rs`, timers.c/send.c), applying a configuration (`apply.rs`,
//! netlink.c); each is an `impl Control` of its own.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use tracing::{debug, warn};

use super::requests::DeviceRequest;
use crate::config::uapi::{Reply, Request};
use crate::dataplane::indices::IndexAllocator;
use crate::dataplane::shared::{HandshakePacket, IndexEntry, PeerShared, Shared, WorkerMsg};
use crate::io::{Network, SendBatch, Socket, SocketBatcher};
use crate::keys::PublicKey;
use crate::noise::ratelimiter::RateLimiter;
use crate::noise::StaticIdentity;
use crate::peer::PeerState;
use crate::routing::AllowedIps;
use crate::session::{Keypair, Keypairs};

/// Peers one device may have: the kernel's MAX_PEERS_PER_DEVICE.
pub const MAX_PEERS: usize = 1 << 20;
/// Handshake messages handled per wake-up, and cookie replies per batched send (64 bytes
/// each: one 64 KiB chunk).
pub(super) const COOKIE_BATCH: usize = 1024;

pub struct Control {
    pub(super) shared: Arc<Shared>,
    pub(super) identity: Option<StaticIdentity>,
    pub(super) listen_port: u16,
    pub(super) fwmark: u32,
    pub(super) network: Network,
    pub(super) workers: usize,
    pub(super) peers: HashMap<PublicKey, PeerState>,
    pub(super) allowed: AllowedIps<Arc<PeerShared>>,
    /// Local indices of initiations in flight.
    pub(super) pending: HashMap<u32, PublicKey>,
    /// The receiver indices: which are taken, in the table the workers read.
    pub(super) indices: IndexAllocator<IndexEntry>,
    pub(super) ratelimiter: RateLimiter,
    /// `MAX_PEERS`, lowered by tests.
    pub(super) peer_limit: usize,
    pub(super) handshake_rx: Receiver<HandshakePacket>,
    pub(super) worker_rx: Receiver<WorkerMsg>,
    pub(super) requests_rx: Receiver<DeviceRequest>,
    /// Peers the workers stamped since the last tick.
    pub(super) active_rx: Receiver<Arc<PeerShared>>,
    /// Peers by the time their timers next need a look. A peer has at most one entry that
    /// matches its `scheduled`; others are stale and skipped. A wake-up that comes early
    /// finds nothing due and reschedules.
    pub(super) deadlines: BinaryHeap<Reverse<(Instant, PublicKey)>>,
    /// Peers whose timers this thread changed since the last tick.
    pub(super) touched: Vec<PublicKey>,
    /// Cookie replies of the handshake messages being drained, sent together (a flood from
    /// one source becomes a few GSO sends, not a syscall per reply).
    pub(super) cookie_replies: SendBatch,
    /// Staged packets sealed at the end of a handshake, sent as one batch.
    pub(super) staged_out: SendBatch,
    pub(super) batcher: SocketBatcher,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        network: Network,
        workers: usize,
        handshake_rx: Receiver<HandshakePacket>,
        worker_rx: Receiver<WorkerMsg>,
        requests_rx: Receiver<DeviceRequest>,
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
            worker_rx,
            requests_rx,
            active_rx,
            deadlines: BinaryHeap::new(),
            touched: Vec::new(),
            cookie_replies: SendBatch::new(1, COOKIE_BATCH, true),
            staged_out: SendBatch::new(1, COOKIE_BATCH, true),
            batcher: SocketBatcher::default(),
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
                recv(self.worker_rx) -> msg => if let Ok(msg) = msg { self.on_worker_msg(msg) },
                recv(self.requests_rx) -> msg => if let Ok(msg) = msg { self.on_request(msg) },
                default(deadline - now) => return,
            }
            if self.shared.stopping() {
                return;
            }
        }
    }

    pub(super) fn on_worker_msg(&mut self, msg: WorkerMsg) {
        let now = Instant::now();
        match msg {
            WorkerMsg::Wake => {}
            WorkerMsg::Staged(peer) => {
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
            WorkerMsg::WantHandshake(peer) => {
                let pk = peer.public_key;
                if let Some(state) = self.peers.get_mut(&pk) {
                    state.handshake_requested_at = Some(now);
                }
                self.send_initiation(&pk, false, now);
                self.touch(&pk);
            }
            WorkerMsg::Confirmed(peer) => self.confirm_if_promoted(&peer.public_key, now),
        }
    }

    pub(super) fn on_request(&mut self, request: DeviceRequest) {
        match request {
            DeviceRequest::Uapi(request, reply) => {
                let answer = match request {
                    Request::Get => Reply::Got(crate::config::uapi::format_get(&self.status())),
                    Request::Set(change) => Reply::Set(self.apply(change, Instant::now())),
                };
                let _ = reply.send(answer);
            }
            DeviceRequest::Report(reply) => {
                let _ = reply.send(self.report());
            }
        }
    }

    pub(super) fn socket(&self) -> Option<Arc<Socket>> {
        self.shared.sockets.load().first().cloned()
    }

    /// True if the datagram went out.
    pub(super) fn send_to_peer(&self, peer: &PeerShared, bytes: &[u8], now: Instant) -> bool {
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

    pub(super) fn publish_routing(&self) {
        self.shared.routing.store(Arc::new(self.allowed.clone()));
    }

    /// Puts a new keypair in the peer's slots and the index table, and forgets the indices of
    /// this peer's keypairs that are no longer in a slot (displaced now, or rotated out by a
    /// worker confirming a `next`). `rcu` because a worker may rotate the slots concurrently.
    pub(super) fn install_keypair(&mut self, pk: &PublicKey, keypair: Arc<Keypair>) {
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
    pub(super) fn prune_indices(&mut self, pk: &PublicKey) {
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
    pub(super) fn clear_keypairs(&mut self, pk: &PublicKey) {
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
}

#[cfg(test)]
mod tests {
    use super::super::{Device, DeviceIo};
    use super::*;
    use crate::config::uapi;
    use crate::constants::{REKEY_TIMEOUT, UNDER_LOAD_QUEUED};
    use crate::dataplane::shared::Screening;
    use crate::io::twin::TwinNet;
    use crate::keys::PresharedKey;
    use crate::keys::PrivateKey;
    use crate::noise::messages::{Initiation, Response};
    use crate::noise::{CookieChecker, Handshake, Tai64N};
    use std::net::SocketAddr;

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
