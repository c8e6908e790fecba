//! The door for handshake messages. The thread that receives one (the side socket's reader,
//! `serve_side`, where the kernel steers them; a worker where it cannot) checks an
//! initiation's or response's mac1 and, while the device is under load, answers one without a
//! valid mac2 with a cookie reply itself. A flood then costs a MAC and a small AEAD there and
//! never reaches the control thread's queue, its wake-ups or its cache; what passes goes to
//! the control thread marked with how far it was checked.
//!
//! "Under load" is the kernel's rule: the control thread's queue holds `UNDER_LOAD_QUEUED`
//! messages or more (so arrivals outrun the DH work it can do), seen by it or by a worker
//! passing it a message; the device then stays under load for `UNDER_LOAD_STICKY`. While the
//! workers answer a flood the queue drains; when the load lifts, the flood fills it again
//! within a few milliseconds, and the control thread answers what queued with cookies too
//! (it checks mac2 again under load), so a flood buys no DH work either way.

use std::net::SocketAddr;
use std::time::Instant;

use super::shared::{bump, Counting, HandshakeCounters, HandshakePacket, Screening, Shared, WorkerCounters};
use crate::constants::{MAC_LEN, UNDER_LOAD_QUEUED};
use crate::io::SendBatch;
use crate::noise::messages::{
    Initiation, Response, COOKIE_REPLY_LEN, INITIATION_LEN, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE,
    RESPONSE_LEN,
};
use crate::noise::ratelimiter::{Over, ReplyCaps, TokenBucket};
use crate::noise::CookieChecker;

/// The exact size of a handshake message of type `t`, None for other types.
fn handshake_len(t: u32) -> Option<usize> {
    match t {
        MESSAGE_INITIATION => Some(INITIATION_LEN),
        MESSAGE_RESPONSE => Some(RESPONSE_LEN),
        MESSAGE_COOKIE_REPLY => Some(COOKIE_REPLY_LEN),
        _ => None,
    }
}

/// A datagram of a type other than transport, its reserved bytes already found zero: sized
/// before anything is copied (a wrong size is never a handshake), screened by `gate`, and
/// queued for the control thread.
pub fn take_handshake(shared: &Shared, gate: &mut Gate, datagram: &[u8], src: SocketAddr, now: Instant) {
    let kind = datagram.first().map_or(0, |&k| u32::from(k));
    if handshake_len(kind) != Some(datagram.len()) {
        bump(&shared.drops(gate.counting).malformed);
        return;
    }
    let Some(screening) = gate.admit(shared, datagram, src, now) else { return };
    let msg = HandshakePacket { packet: datagram.to_vec(), src, screening };
    if shared.handshake_tx.try_send(msg).is_err() {
        bump(&shared.drops(gate.counting).handshake_queue_full);
    }
}

/// Where mac1 and mac2 of a handshake message of type `kind` sit, and its sender index.
fn layout(kind: u8, msg: &[u8]) -> Option<(usize, usize, u32)> {
    let (mac1_at, mac2_at) = match (u32::from(kind), msg.len()) {
        (MESSAGE_INITIATION, INITIATION_LEN) => (Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET),
        (MESSAGE_RESPONSE, RESPONSE_LEN) => (Response::MAC1_OFFSET, Response::MAC2_OFFSET),
        _ => return None,
    };
    let sender = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
    Some((mac1_at, mac2_at, sender))
}

/// Counts an initiation or response (`msg`, exact size) as received and checks its mac1.
/// False for anything else or a bad mac1 (counted as such).
pub fn check_mac1(checker: &CookieChecker, counters: &HandshakeCounters, msg: &[u8]) -> bool {
    let Some(kind) = msg.first().copied() else { return false };
    let Some((mac1_at, _, _)) = layout(kind, msg) else { return false };
    count_and_verify_mac1(checker, counters, kind, mac1_at, msg)
}

/// `check_mac1` for a message whose layout is known.
fn count_and_verify_mac1(
    checker: &CookieChecker,
    counters: &HandshakeCounters,
    kind: u8,
    mac1_at: usize,
    msg: &[u8],
) -> bool {
    bump(if u32::from(kind) == MESSAGE_INITIATION {
        &counters.initiations_received
    } else {
        &counters.responses_received
    });
    if checker.verify_mac1(msg, mac1_at) {
        return true;
    }
    bump(&counters.invalid_mac1);
    false
}

/// Under load: None if `msg` (an initiation or response whose mac1 passed) carries a valid
/// mac2 for `src`, else the cookie reply that answers it.
pub fn cookie_unless_mac2(
    checker: &CookieChecker,
    msg: &[u8],
    src: &SocketAddr,
    now: Instant,
) -> Option<[u8; COOKIE_REPLY_LEN]> {
    let (mac1_at, mac2_at, sender) = layout(*msg.first()?, msg)?;
    if checker.verify_mac2(msg, mac2_at, src, now) {
        return None;
    }
    Some(cookie_reply(checker, msg, mac1_at, sender, src, now))
}

fn cookie_reply(
    checker: &CookieChecker,
    msg: &[u8],
    mac1_at: usize,
    sender: u32,
    src: &SocketAddr,
    now: Instant,
) -> [u8; COOKIE_REPLY_LEN] {
    let mut mac1 = [0u8; MAC_LEN];
    mac1.copy_from_slice(&msg[mac1_at..mac1_at + MAC_LEN]);
    checker.create_reply(sender, &mac1, src, now).to_bytes()
}

/// Appends a cookie reply for `dst` to `replies`, which the caller keeps from filling up.
pub fn queue_reply(replies: &mut SendBatch, reply: &[u8; COOKIE_REPLY_LEN], dst: SocketAddr) {
    let (_, space) = replies.reserve(reply.len());
    space[..reply.len()].copy_from_slice(reply);
    replies.commit(reply.len(), dst);
}

/// Cookie replies one gate (the side socket's reader, or a worker where there is none) sends
/// per second under load, and its burst. Messages beyond this that would need one are refused
/// (counted as `handshake_queue_full`) before any MAC is computed, as the kernel drops what its
/// queue cannot hold; a message with a valid mac2 is never refused. At about 2 us a reply
/// (MACs, AEAD, the send), this bounds a flood's cost to under half a core per gate, and it is
/// above what a one-core flooder without batching sends (flood.py: 145,000/s), so a real peer
/// behind such a flood is answered at once (the `test-dos.sh` case; 50,000/s left it one
/// chance in three per attempt).
const UNDER_LOAD_PER_SECOND: u64 = 200_000;
pub(super) const UNDER_LOAD_BURST: u64 = 4_096;
const UNDER_LOAD_COST_NS: u64 = 1_000_000_000 / UNDER_LOAD_PER_SECOND;
const UNDER_LOAD_MAX_NS: u64 = UNDER_LOAD_COST_NS * UNDER_LOAD_BURST;

/// Cookie replies passed to the control thread per second per gate, at most: a real one
/// answers a handshake message we sent to a peer under load, so they come no faster than our
/// own initiations and responses (a rekey storm of 100,000 peers retried every 5 s is
/// 20,000/s); each costs the control thread a lookup and an XChaCha20-Poly1305 open.
const COOKIE_REPLIES_PER_SECOND: u64 = 20_000;
const COOKIE_REPLY_BURST: u64 = 2_000;
const COOKIE_REPLY_COST_NS: u64 = 1_000_000_000 / COOKIE_REPLIES_PER_SECOND;
const COOKIE_REPLY_MAX_NS: u64 = COOKIE_REPLY_COST_NS * COOKIE_REPLY_BURST;

/// What a source over its cap may still have of the budget: only the credit beyond this
/// reserve, which stays for sources within their caps. So a flood that spoofs a real peer's
/// address shares what the budget has left over with that peer, as every source shares the
/// kernel's queue, instead of leaving the peer nothing; the kernel thins the address only once
/// the leftover is gone too.
const UNDER_LOAD_RESERVE_NS: u64 = UNDER_LOAD_MAX_NS / 2;

/// mac2 checks under load per second per gate, at most: a message with a non-zero mac2 is
/// checked (a BLAKE2s, about 0.35 us) and spared the refused-round shortcut only within this
/// budget; past it a mac2 is worth nothing, so junk mac2s cost a flooder's share, not a core.
const MAC2_CHECKS_PER_SECOND: u64 = 100_000;
const MAC2_CHECKS_BURST: u64 = 10_000;
const MAC2_CHECK_COST_NS: u64 = 1_000_000_000 / MAC2_CHECKS_PER_SECOND;
const MAC2_CHECKS_MAX_NS: u64 = MAC2_CHECK_COST_NS * MAC2_CHECKS_BURST;

/// A worker's side of the door: its budget under load and the cookie replies of the round.
pub struct Gate {
    /// Whose drop counters this gate bumps.
    counting: Counting,
    budget: TokenBucket,
    /// mac2 checks under load, and how many were done (for tests and the log).
    mac2_checks: TokenBucket,
    pub mac2_checked: u64,
    /// Cookie replies (type 3) let through to the control thread.
    cookie_replies: TokenBucket,
    /// The round (its clock) in which the budget ran out: the rest of that round's handshake
    /// messages are refused at the cost of a comparison, so a worker drains a flood's GRO
    /// trains fast enough that its socket never fills and starves a tunnel that shares it.
    refused_round: Option<Instant>,
    /// Per-endpoint and per-address caps on cookie replies (the rest of the budget stays for
    /// the others).
    caps: ReplyCaps,
    /// The round in which a source was over its cap, and which cap the last message was over.
    capped_round: Option<Instant>,
    source_capped: Option<Over>,
    /// Cookie replies sent in the current spell of load since it was last renewed.
    answered: usize,
    /// Refused over budget / over a source's cap since the last `flush_counts` (one shared
    /// counter add per round, not per message).
    refused: u64,
    limited: u64,
    /// Sent by the worker after its receives (and before, when full).
    pub replies: SendBatch,
}

impl Gate {
    pub fn new(gso: bool, counting: Counting) -> Gate {
        // One chunk holds a thousand replies; more than a round of receives can ask for.
        Gate {
            counting,
            budget: TokenBucket::default(),
            mac2_checks: TokenBucket::default(),
            mac2_checked: 0,
            cookie_replies: TokenBucket::default(),
            refused_round: None,
            caps: ReplyCaps::default(),
            capped_round: None,
            source_capped: None,
            answered: 0,
            refused: 0,
            limited: 0,
            replies: SendBatch::new(1, 1024, gso),
        }
    }

    /// Adds what was refused to the device's counters (once per round).
    pub fn flush_counts(&mut self, shared: &Shared) {
        if self.refused > 0 {
            WorkerCounters::add(&shared.drops(self.counting).handshake_queue_full, self.refused);
            self.refused = 0;
        }
        if self.limited > 0 {
            WorkerCounters::add(&shared.handshakes.rate_limited, self.limited);
            self.limited = 0;
        }
    }

    /// Whether the round of `now` refused messages over the budget or over a source's cap:
    /// the reader then skims its next receive.
    pub fn refusing(&self, now: Instant) -> bool {
        self.refused_round == Some(now) || self.capped_round == Some(now)
    }

    /// Which cap the last message admitted was refused for, if any (and clears it).
    pub fn take_source_capped(&mut self) -> Option<Over> {
        self.source_capped.take()
    }

    /// Counts `n` messages of a capped source refused without being looked at.
    pub fn count_limited(&mut self, n: u64) {
        self.limited += n;
    }

    /// Counts `n` messages refused without being looked at (a skimmed train's tail).
    pub fn count_refused(&mut self, n: u64) {
        self.refused += n;
    }

    /// Room for another reply? (Else the worker sends what is queued first.)
    pub fn has_room(&self) -> bool {
        self.replies.has_room(COOKIE_REPLY_LEN)
    }

    /// A cookie reply has no MAC the gate could check (only the peer it answers can open
    /// it), so it is bounded instead: at a rate, and never into a queue an eighth full, where
    /// it would take the room of initiations that carry a valid mac2.
    fn admit_cookie_reply(&mut self, shared: &Shared, now: Instant) -> Option<Screening> {
        if shared.handshake_tx.len() >= UNDER_LOAD_QUEUED
            || !self.cookie_replies.take(now, COOKIE_REPLY_COST_NS, COOKIE_REPLY_MAX_NS)
        {
            bump(&shared.drops(self.counting).cookie_reply_refused);
            return None;
        }
        Some(Screening::Unchecked)
    }

    /// Takes a handshake message (any type, sized by the caller) that arrived from `src`:
    /// Some(screening) to pass it to the control thread, None if it was dropped or answered.
    pub fn admit(&mut self, shared: &Shared, msg: &[u8], src: SocketAddr, now: Instant) -> Option<Screening> {
        let kind = msg.first().copied()?;
        if u32::from(kind) == MESSAGE_COOKIE_REPLY {
            return self.admit_cookie_reply(shared, now);
        }
        let Some((mac1_at, mac2_at, sender)) = layout(kind, msg) else {
            // Cookie replies (and anything odd) are the control thread's to judge.
            return Some(Screening::Unchecked);
        };
        // Only a message with a mac2 may be one that must get through a refused round, and
        // only while mac2 checks are within their budget.
        let no_mac2 = msg[mac2_at..mac2_at + MAC_LEN].iter().all(|&b| b == 0);
        let mut mac2_claim: Option<bool> = None;
        if self.refused_round == Some(now) {
            let claim = !no_mac2 && self.mac2_checks.take(now, MAC2_CHECK_COST_NS, MAC2_CHECKS_MAX_NS);
            if !claim {
                self.refused += 1;
                return None;
            }
            mac2_claim = Some(claim);
        }
        let guard = shared.cookies.load();
        let Some(checker) = guard.as_deref() else {
            // No private key yet: nothing can be checked, and the control thread drops it.
            return Some(Screening::Unchecked);
        };
        let counters = &shared.handshakes;
        let stamp = shared.stamp(now);
        if shared.handshake_tx.len() >= UNDER_LOAD_QUEUED {
            shared.mark_under_load(stamp);
        }
        if !shared.under_load(stamp) {
            self.answered = 0;
            return count_and_verify_mac1(checker, counters, kind, mac1_at, msg).then_some(Screening::Mac1);
        }
        // Under load a valid mac2 proves the source (the control thread's per-source limiter
        // then applies); everything else costs a cookie reply, which the budget bounds.
        let claim = mac2_claim
            .unwrap_or_else(|| !no_mac2 && self.mac2_checks.take(now, MAC2_CHECK_COST_NS, MAC2_CHECKS_MAX_NS));
        self.mac2_checked += u64::from(claim);
        let proven = claim && checker.verify_mac2(msg, mac2_at, &src, now);
        let mut paid = false;
        if !proven {
            if let Err(over) = self.caps.allow(src, now) {
                // Over its own cap: only what the budget has left over beyond the reserve.
                if !self.budget.take_above(now, UNDER_LOAD_COST_NS, UNDER_LOAD_MAX_NS, UNDER_LOAD_RESERVE_NS) {
                    self.capped_round = Some(now);
                    self.source_capped = Some(over);
                    self.limited += 1;
                    return None;
                }
                paid = true;
            }
        }
        if !proven && !paid && !self.budget.take(now, UNDER_LOAD_COST_NS, UNDER_LOAD_MAX_NS) {
            self.refused_round = Some(now);
            self.refused += 1;
            return None;
        }
        if !count_and_verify_mac1(checker, counters, kind, mac1_at, msg) {
            return None;
        }
        if proven {
            return Some(Screening::Mac1AndMac2);
        }
        if !self.has_room() {
            bump(&shared.drops(self.counting).handshake_queue_full);
            return None;
        }
        queue_reply(&mut self.replies, &cookie_reply(checker, msg, mac1_at, sender, &src, now), src);
        bump(&counters.cookie_replies_sent);
        // A flood the workers answer keeps the device under load, as a flood that keeps the
        // kernel's queue 1/8 full does: without this the load would lift every second and the
        // control thread do DH work until its queue refilled.
        self.answered += 1;
        if self.answered >= UNDER_LOAD_QUEUED {
            shared.mark_under_load(stamp);
            self.answered = 0;
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::constants::{HANDSHAKE_QUEUE, UNDER_LOAD_STICKY};
    use crate::dataplane::shared::{HandshakePacket, TestChannels};
    use crate::keys::{PrivateKey, PublicKey};
    use crate::noise::messages::CookieReply;
    use crate::noise::CookieGenerator;
    use std::time::Duration;

    pub(crate) fn initiation(generator: &mut CookieGenerator, sender: u32, now: Instant) -> [u8; INITIATION_LEN] {
        let mut msg = [7u8; INITIATION_LEN];
        msg[..4].copy_from_slice(&MESSAGE_INITIATION.to_le_bytes());
        msg[4..8].copy_from_slice(&sender.to_le_bytes());
        generator.stamp(&mut msg, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, now);
        msg
    }

    /// A device with a key, a fresh gate, and the device's public key.
    pub(crate) fn keyed() -> (Shared, TestChannels, Gate, PublicKey) {
        let us = PrivateKey::generate().public_key();
        let (shared, channels) = Shared::for_tests();
        shared.cookies.store(Some(std::sync::Arc::new(CookieChecker::new(&us))));
        (shared, channels, Gate::new(true, Counting::Worker(0)), us)
    }

    /// While the control thread keeps up, everything with a good mac1 passes; once its queue
    /// backs up the device is under load, and messages without mac2 get cookie replies from
    /// the worker (one each, for the right sender index) even after the queue drained; a
    /// sender that took its cookie gets through; a second after the last sign the load lifts.
    /// A flood of cookie replies (no MAC to check) is bounded: it never fills the control
    /// thread's queue past an eighth, nor passes faster than its rate, so an initiation with a
    /// valid mac2 still finds room.
    #[test]
    fn a_cookie_reply_flood_cannot_crowd_out_initiations() {
        let (shared, channels, mut gate, us) = keyed();
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let now = Instant::now();
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        reply[0] = MESSAGE_COOKIE_REPLY as u8;
        for i in 0..3 * HANDSHAKE_QUEUE as u32 {
            reply[4..8].copy_from_slice(&i.to_le_bytes());
            take_handshake(&shared, &mut gate, &reply, src, now);
        }
        let queued = shared.handshake_tx.len();
        assert!(queued <= UNDER_LOAD_QUEUED, "{queued} cookie replies queued");
        assert_eq!(shared.drop_totals().cookie_reply_refused, 3 * HANDSHAKE_QUEUE as u64 - queued as u64);
        assert_eq!(shared.drop_totals().handshake_queue_full, 0);
        // Drained at once, the queue no longer binds: the rate does, its burst and then
        // 20,000 a second.
        let later = now + Duration::from_millis(10);
        let mut passed = 0u64; // the first drain counts the replies queued above
        for _ in 0..5 * COOKIE_REPLY_BURST {
            take_handshake(&shared, &mut gate, &reply, src, later);
            while channels.handshake.try_recv().is_ok() {
                passed += 1;
            }
        }
        assert!(passed <= COOKIE_REPLY_BURST + COOKIE_REPLIES_PER_SECOND / 100 + 1, "{passed} passed in 10 ms");
        assert!(passed >= COOKIE_REPLY_BURST, "a burst of real ones passes: {passed}");
        // An initiation with a valid mac2 (the device under load) is still queued.
        shared.mark_under_load(shared.stamp(later));
        let mut generator = CookieGenerator::new(&us);
        let first = initiation(&mut generator, 9, later);
        take_handshake(&shared, &mut gate, &first, src, later);
        let answer = gate.replies.groups().last().map(|g| gate.replies.bytes(g).to_vec()).expect("a cookie reply");
        generator.consume_reply(&CookieReply::parse(&answer).unwrap(), later).unwrap();
        let proven = initiation(&mut generator, 10, later);
        let queued_before = shared.handshake_tx.len();
        take_handshake(&shared, &mut gate, &proven, src, later);
        assert_eq!(shared.handshake_tx.len(), queued_before + 1, "the proven initiation is queued");
    }

    #[test]
    fn a_backed_up_queue_makes_the_worker_answer_with_cookies() {
        let (shared, channels, mut gate, us) = keyed();
        let mut generator = CookieGenerator::new(&us);
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let now = Instant::now();

        let mut bad = initiation(&mut generator, 1, now);
        bad[Initiation::MAC1_OFFSET] ^= 1;
        assert_eq!(gate.admit(&shared, &bad, src, now), None);
        assert_eq!(value(&shared.handshakes.invalid_mac1), 1);

        let queue = |shared: &Shared| {
            let packet = HandshakePacket { packet: vec![1], src, screening: Screening::Mac1 };
            shared.handshake_tx.send(packet).unwrap();
        };
        for i in 0..UNDER_LOAD_QUEUED as u32 - 1 {
            let msg = initiation(&mut generator, i, now);
            assert_eq!(gate.admit(&shared, &msg, src, now), Some(Screening::Mac1), "message {i}");
            queue(&shared);
        }
        assert!(gate.replies.is_empty());
        assert!(!shared.under_load(shared.stamp(now)));
        queue(&shared);

        for i in 0..50u32 {
            let msg = initiation(&mut generator, 1000 + i, now);
            assert_eq!(gate.admit(&shared, &msg, src, now), None);
            // The control thread catching up does not end the load.
            let _ = channels.handshake.try_recv();
        }
        assert!(shared.under_load(shared.stamp(now)));
        assert_eq!(value(&shared.handshakes.cookie_replies_sent), 50);
        assert_eq!(value(&shared.handshakes.initiations_received), 1 + UNDER_LOAD_QUEUED as u64 - 1 + 50);
        assert_eq!(gate.replies.datagram_count(), 50);
        let replies: Vec<Vec<u8>> =
            gate.replies.groups().iter().flat_map(|g| gate.replies.datagrams(g).map(<[u8]>::to_vec)).collect();
        assert_eq!(replies.len(), 50);
        assert!(gate.replies.groups().iter().all(|g| g.addr == src));
        let last = CookieReply::parse(&replies[49]).unwrap();
        assert_eq!(last.receiver, 1049, "the reply answers the last message's sender index");
        generator.consume_reply(&last, now).unwrap();

        let proven = initiation(&mut generator, 2000, now);
        assert_eq!(gate.admit(&shared, &proven, src, now), Some(Screening::Mac1AndMac2));
        let elsewhere: SocketAddr = "192.0.2.8:4000".parse().unwrap();
        assert_eq!(gate.admit(&shared, &proven, elsewhere, now), None, "a cookie is bound to its source");

        // Responses are screened the same way; cookie replies pass unchecked.
        let mut response = [0u8; RESPONSE_LEN];
        response[0] = MESSAGE_RESPONSE as u8;
        assert_eq!(gate.admit(&shared, &response, src, now), None, "bad mac1");
        let cookie = [3u8, 0, 0, 0].iter().copied().chain([0u8; COOKIE_REPLY_LEN - 4]).collect::<Vec<_>>();
        assert_eq!(gate.admit(&shared, &cookie, src, now), Some(Screening::Unchecked));

        while channels.handshake.try_recv().is_ok() {}
        // A flood that goes on (UNDER_LOAD_QUEUED replies within the spell) renews the load.
        let mid = now + UNDER_LOAD_STICKY / 2;
        let mut stranger = CookieGenerator::new(&us);
        for i in 0..UNDER_LOAD_QUEUED as u32 {
            if !gate.has_room() {
                gate.replies.clear();
            }
            let msg = initiation(&mut stranger, 5000 + i, mid);
            assert_eq!(gate.admit(&shared, &msg, src, mid), None);
        }
        let renewed = mid + UNDER_LOAD_STICKY / 2;
        assert!(shared.under_load(shared.stamp(renewed)), "renewed by the flood it answered");
        let later = mid + UNDER_LOAD_STICKY;
        let msg = initiation(&mut stranger, 3000, later);
        assert_eq!(gate.admit(&shared, &msg, src, later), Some(Screening::Mac1), "the load lifted");
    }

    /// Under load a worker takes on a burst of UNDER_LOAD_BURST messages, then the rate; the
    /// rest is dropped and counted before any MAC is computed (a bad mac1 is not even seen).
    #[test]
    fn under_load_the_work_is_budgeted() {
        let (shared, _channels, mut gate, us) = keyed();
        let mut generator = CookieGenerator::new(&us);
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        // A flood from 64 addresses, each under its own cap: the budget is what binds.
        let spread = |n: u64| SocketAddr::from(([10, 0, 0, (n % 64) as u8], 4000));
        let now = Instant::now();
        shared.mark_under_load(shared.stamp(now));
        let msg = initiation(&mut generator, 1, now);
        let mut answered = 0u64;
        for n in 0..UNDER_LOAD_BURST + 100 {
            if !gate.has_room() {
                gate.replies.clear();
            }
            assert_eq!(gate.admit(&shared, &msg, spread(n), now), None);
        }
        gate.flush_counts(&shared);
        answered += value(&shared.handshakes.cookie_replies_sent);
        assert_eq!(answered, UNDER_LOAD_BURST);
        assert_eq!(shared.drop_totals().handshake_queue_full, 100);
        assert_eq!(value(&shared.handshakes.initiations_received), UNDER_LOAD_BURST, "dropped before mac1");
        // A millisecond later the rate has earned a millisecond's worth more.
        let later = now + Duration::from_millis(1);
        let per_ms = UNDER_LOAD_PER_SECOND / 1000;
        for n in 0..per_ms + 100 {
            if !gate.has_room() {
                gate.replies.clear();
            }
            assert_eq!(gate.admit(&shared, &msg, spread(n), later), None);
        }
        gate.flush_counts(&shared);
        assert_eq!(value(&shared.handshakes.cookie_replies_sent), UNDER_LOAD_BURST + per_ms);
        assert_eq!(shared.drop_totals().handshake_queue_full, 100 + 100);
        assert_eq!(value(&shared.handshakes.rate_limited), 0, "no source was over its cap");
        assert!(gate.refusing(later));

        // A sender that proves its address with mac2 gets through a refused round.
        let mut peer = CookieGenerator::new(&us);
        let first = initiation(&mut peer, 7, later);
        let reply = {
            let guard = shared.cookies.load();
            let checker = guard.as_deref().unwrap();
            cookie_unless_mac2(checker, &first, &src, later).unwrap()
        };
        peer.consume_reply(&CookieReply::parse(&reply).unwrap(), later).unwrap();
        let proven = initiation(&mut peer, 8, later);
        assert_eq!(gate.admit(&shared, &msg, src, later), None, "the round is still refused");
        assert_eq!(gate.admit(&shared, &proven, src, later), Some(Screening::Mac1AndMac2));
    }

    /// Under load one endpoint gets its cap's cookie replies and what the budget has left
    /// over beyond its reserve; past that, its messages cost a comparison and the reserve stays
    /// for the others, a real peer's first message among them.
    #[test]
    fn under_load_one_source_is_capped_and_the_others_answered() {
        let (shared, _channels, mut gate, us) = keyed();
        let mut generator = CookieGenerator::new(&us);
        let flooder: SocketAddr = "192.0.2.66:4000".parse().unwrap();
        let now = Instant::now();
        shared.mark_under_load(shared.stamp(now));
        let msg = initiation(&mut generator, 1, now);
        let mut capped = 0;
        for _ in 0..10_000 {
            if !gate.has_room() {
                gate.replies.clear();
            }
            assert_eq!(gate.admit(&shared, &msg, flooder, now), None);
            capped += u64::from(gate.take_source_capped() == Some(Over::Endpoint));
        }
        gate.flush_counts(&shared);
        let answered = value(&shared.handshakes.cookie_replies_sent);
        // At one instant: the whole budget less its reserve (the cap's 500 within it).
        assert_eq!(answered, UNDER_LOAD_BURST - UNDER_LOAD_BURST / 2, "{answered} replies to one source at once");
        assert_eq!(capped, 10_000 - answered);
        assert_eq!(value(&shared.handshakes.rate_limited), capped);
        assert_eq!(shared.drop_totals().handshake_queue_full, 0, "the budget's reserve was not touched");
        assert!(gate.refusing(now), "the reader skims after a capped round");
        // Its v4-mapped form is the same endpoint.
        let same: SocketAddr = "[::ffff:192.0.2.66]:4000".parse().unwrap();
        assert_eq!(gate.admit(&shared, &msg, same, now), None);
        assert_eq!(gate.take_source_capped(), Some(Over::Endpoint));
        // A real peer elsewhere, or behind the flooder's address on a port of its own, in the
        // same round, gets its cookie reply.
        for peer in ["198.51.100.2:51820", "192.0.2.66:51820"] {
            gate.replies.clear();
            assert_eq!(gate.admit(&shared, &msg, peer.parse().unwrap(), now), None);
            assert_eq!(gate.take_source_capped(), None, "{peer}");
        }
        gate.flush_counts(&shared);
        assert_eq!(value(&shared.handshakes.cookie_replies_sent), answered + 2);
    }

    /// A flood that spoofs a real peer's exact endpoint, at 150,000 a second (below the
    /// budget, as `flood.py` sends flat out): past the endpoint's cap its messages share the
    /// leftover budget, so the peer's own messages among them are answered, every one; capping
    /// them strictly would answer one in thirty.
    #[test]
    fn a_flood_spoofing_a_peer_leaves_it_the_leftover_budget() {
        let (shared, _channels, mut gate, us) = keyed();
        let mut flood_gen = CookieGenerator::new(&us);
        let mut peer_gen = CookieGenerator::new(&us);
        let victim: SocketAddr = "192.0.2.7:51821".parse().unwrap();
        let start = Instant::now();
        let flood = initiation(&mut flood_gen, 1, start);
        let mut answered_peer = 0;
        for ms in 0..1000u64 {
            let now = start + Duration::from_millis(ms);
            shared.mark_under_load(shared.stamp(now));
            for _ in 0..150 {
                gate.replies.clear();
                let _ = gate.admit(&shared, &flood, victim, now);
                let _ = gate.take_source_capped();
            }
            if ms % 50 == 25 {
                gate.replies.clear();
                let own = initiation(&mut peer_gen, 1000 + ms as u32, now);
                assert_eq!(gate.admit(&shared, &own, victim, now), None);
                answered_peer += usize::from(gate.replies.datagram_count() == 1);
            }
        }
        assert_eq!(answered_peer, 20, "the peer got a cookie reply to each of its 20 initiations");
        gate.flush_counts(&shared);
        assert_eq!(value(&shared.handshakes.rate_limited), 0, "nothing was capped: the leftover sufficed");
    }

    /// Junk mac2s (non-zero, never valid) are checked at most at their budget's rate: past it
    /// a mac2 is worth nothing, and in a refused round such messages cost a comparison.
    #[test]
    fn junk_mac2s_cost_no_more_than_their_budget() {
        let (shared, _channels, mut gate, us) = keyed();
        let mut generator = CookieGenerator::new(&us);
        let now = Instant::now();
        shared.mark_under_load(shared.stamp(now));
        let mut msg = initiation(&mut generator, 1, now);
        msg[Initiation::MAC2_OFFSET] = 0xaa; // a mac2 that proves nothing
                                             // Use up the budget so the round refuses.
        let mut i = 0u32;
        while !gate.refusing(now) {
            gate.replies.clear();
            let src = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1000));
            let _ = gate.admit(&shared, &initiation(&mut generator, i, now), src, now);
            i += 1;
        }
        gate.flush_counts(&shared);
        let refused_before = shared.drop_totals().handshake_queue_full;
        let checked_before = gate.mac2_checked;
        for k in 0..50_000u32 {
            let src = SocketAddr::from(([172, 16, (k >> 8) as u8, k as u8], 2000));
            assert_eq!(gate.admit(&shared, &msg, src, now), None);
        }
        gate.flush_counts(&shared);
        let refused = shared.drop_totals().handshake_queue_full - refused_before;
        // At most the mac2 burst got past the shortcut to a check; the rest were refused.
        assert!(refused >= 50_000 - MAC2_CHECKS_BURST, "{refused} of 50,000 refused at a comparison");
        let checked = gate.mac2_checked - checked_before;
        assert!(checked <= MAC2_CHECKS_BURST, "{checked} junk mac2s checked at one instant");
    }

    /// Without a private key nothing is checked here; the control thread drops it.
    #[test]
    fn without_a_key_messages_pass_unchecked() {
        let (shared, _rx) = Shared::for_tests();
        let mut gate = Gate::new(false, Counting::Worker(0));
        let mut generator = CookieGenerator::new(&PrivateKey::generate().public_key());
        let now = Instant::now();
        let msg = initiation(&mut generator, 1, now);
        assert_eq!(gate.admit(&shared, &msg, "192.0.2.1:1".parse().unwrap(), now), Some(Screening::Unchecked));
        assert_eq!(value(&shared.handshakes.initiations_received), 0);
    }

    pub(crate) fn value(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(std::sync::atomic::Ordering::Relaxed)
    }
}
