//! Timers on the control thread: each peer's timers are fed the stamps the workers wrote and
//! fire handshakes, keepalives and key zeroing; peers are looked at only when they moved or
//! are due. Also what a new session sends first: the staged packets, or a keepalive.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info};

use super::control::Control;
use crate::constants::REKEY_TIMEOUT;
use crate::dataplane::shared::bump;
use crate::io::Socket;
use crate::keys::PublicKey;
use crate::noise::messages::TRANSPORT_HEADER_LEN;
use crate::peer::TimerAction;
use crate::session::Keypair;

/// When a peer whose stamps moved is looked at again (one timer tick).
const RECHECK_AFTER: Duration = Duration::from_millis(100);

impl Control {
    /// Seals and sends whatever waited for a session; a keepalive if nothing did.
    pub(super) fn send_staged(&mut self, pk: &PublicKey, keepalive_if_empty: bool, now: Instant) {
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
        let (Some(endpoint), Some(socket)) = (shared.endpoint.load_full(), self.socket()) else {
            debug!("peer {pk}: no endpoint, not sending");
            return;
        };
        let Some(first) = keypair.reserve_counters(packets.len() as u64, now) else { return };
        // Sealed into one batch and sent together (GSO where the sizes allow), as a worker
        // sends: a full staged queue is a few syscalls, not one per packet.
        let mut sent = 0;
        for (counter, p) in (first..).zip(&packets) {
            let len = Keypair::sealed_len(p.len(), mtu);
            if !self.staged_out.has_room(len) {
                sent += self.flush_staged(&socket);
            }
            let (_, space) = self.staged_out.reserve(len);
            space[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + p.len()].copy_from_slice(p);
            if let Ok(n) = keypair.seal_padded(counter, space, p.len(), mtu) {
                self.staged_out.commit(n, *endpoint);
            }
        }
        sent += self.flush_staged(&socket);
        if sent > 0 {
            shared.tx_bytes.fetch_add(sent as u64, Ordering::Relaxed);
            shared.last_sent.store(self.shared.stamp(now), Ordering::Relaxed);
        }
        if data {
            shared.last_data_sent.store(self.shared.stamp(now), Ordering::Relaxed);
        }
        self.touch(pk);
    }

    /// Sends what `staged_out` holds; returns the bytes that went out.
    fn flush_staged(&mut self, socket: &Socket) -> usize {
        let bytes: usize = self.staged_out.groups().iter().map(|g| self.staged_out.bytes(g).len()).sum();
        match socket.send_batch(&mut self.batcher, &mut self.staged_out) {
            Ok(()) => bytes,
            Err(e) => {
                debug!("staged packets: send failed: {e}");
                self.staged_out.clear();
                0
            }
        }
    }

    pub(super) fn send_keepalive(&mut self, pk: &PublicKey, now: Instant) {
        let Some(peer) = self.peers.get(pk) else { return };
        let usable = peer.shared.keypairs.load().current.as_ref().is_some_and(|k| k.usable_for_receive(now));
        if usable {
            self.send_staged(pk, true, now);
        } else {
            self.send_initiation(pk, false, now);
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
    pub(super) fn confirm_if_promoted(&mut self, pk: &PublicKey, now: Instant) {
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
    pub(super) fn touch(&mut self, pk: &PublicKey) {
        self.touched.push(*pk);
    }

    /// Feeds the workers' stamps to one peer's timers, fires what is due, and schedules the
    /// next look.
    pub(super) fn run_peer_timers(&mut self, pk: &PublicKey, now: Instant) {
        let (actions, moved, lost_request) = {
            let shared = &self.shared;
            let Some(peer) = self.peers.get_mut(pk) else { return };
            let moved = peer.take_stamps(|stamp| shared.instant(stamp).unwrap_or(now));
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
    pub(super) fn schedule(&mut self, pk: &PublicKey, extra: Option<Instant>) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let requested = peer.handshake_requested_at.map(|t| t + REKEY_TIMEOUT);
        let Some(next) = [peer.timers.next_deadline(), requested, extra].into_iter().flatten().min() else { return };
        if peer.scheduled.is_some_and(|s| s <= next) {
            return; // an earlier look is queued; it reschedules
        }
        peer.scheduled = Some(next);
        self.deadlines.push(Reverse((next, *pk)));
    }
}
