//! Handshake messages on the control thread: what the gate passed is parsed, checked for
//! mac1 (unless the gate did) and, under load, for mac2 (else a cookie reply), rate limited,
//! and turned into a response or a session; and our own initiations.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{debug, info, warn};

use super::control::{Control, COOKIE_BATCH};
use crate::constants::UNDER_LOAD_QUEUED;
use crate::dataplane::gate::{check_mac1, cookie_unless_mac2, queue_reply};
use crate::dataplane::shared::{bump, Counting, HandshakePacket, Screening};
use crate::keys::PublicKey;
use crate::noise::messages::{Initiation, Response};
use crate::noise::{consume_initiation, Packet, StaticIdentity, Tai64N};
use crate::session::Keypair;

impl Control {
    pub(super) fn send_initiation(&mut self, pk: &PublicKey, retry: bool, now: Instant) {
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

    /// The kernel's rule: a backed-up queue is load (and so is a flood a worker saw, `gate`).
    pub(super) fn under_load(&self, now: Instant) -> bool {
        let stamp = self.shared.stamp(now);
        if self.handshake_rx.len() >= UNDER_LOAD_QUEUED {
            self.shared.mark_under_load(stamp);
        }
        self.shared.under_load(stamp)
    }

    /// Handles `first` and whatever else waits in the handshake queue (up to a batch), then
    /// sends the cookie replies they earned together. A flood is drained in bursts: one wake-up
    /// and one send per burst.
    pub(super) fn on_handshake_burst(&mut self, first: HandshakePacket) {
        self.on_handshake_packet(first);
        for _ in 1..COOKIE_BATCH {
            match self.handshake_rx.try_recv() {
                Ok(msg) => self.on_handshake_packet(msg),
                Err(_) => break,
            }
        }
        self.flush_cookie_replies();
    }

    pub(super) fn flush_cookie_replies(&mut self) {
        if self.cookie_replies.is_empty() {
            return;
        }
        match self.socket() {
            Some(sock) => {
                if let Err(e) = sock.send_batch(&mut self.batcher, &mut self.cookie_replies) {
                    debug!("cookie replies: {e}");
                }
            }
            None => self.cookie_replies.clear(),
        }
    }

    pub(super) fn on_handshake_packet(&mut self, msg: HandshakePacket) {
        let now = Instant::now();
        let (Some(identity), Some(checker)) = (self.identity.clone(), self.shared.cookies.load_full()) else { return };
        let bytes = &msg.packet;
        let counters = &self.shared.handshakes;
        let packet = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                bump(&self.shared.drops(Counting::Control).malformed);
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

    pub(super) fn on_initiation(
        &mut self,
        identity: &StaticIdentity,
        init: &Initiation,
        src: SocketAddr,
        now: Instant,
    ) {
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

    pub(super) fn on_response(&mut self, identity: &StaticIdentity, resp: &Response, src: SocketAddr, now: Instant) {
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
}
