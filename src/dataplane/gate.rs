//! The door for handshake messages. A worker checks each initiation's and response's mac1 on
//! the core it arrived on and, while the device is under load, answers one without a valid
//! mac2 with a cookie reply itself. A flood then costs a MAC and a small AEAD where it lands
//! and never reaches the control thread's queue, its wake-ups or its cache; what passes goes
//! to the control thread marked with how far it was checked.
//!
//! "Under load" is the kernel's rule (the control thread's queue backs up) or, since the queue
//! no longer fills while workers answer a flood, a worker seeing more mac1-valid handshake
//! messages than `LOAD_WINDOW_MESSAGES` in `LOAD_WINDOW`. Either holds the device under load
//! for `UNDER_LOAD_STICKY` after the last sign of it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::shared::{bump, HandshakeCounters, Shared};
use crate::io::SendBatch;
use crate::noise::messages::{
    Initiation, Response, COOKIE_REPLY_LEN, INITIATION_LEN, MESSAGE_INITIATION, MESSAGE_RESPONSE, RESPONSE_LEN,
};
use crate::noise::CookieChecker;

/// How long the device stays under load after the last sign of it (the kernel: one second).
pub const UNDER_LOAD_STICKY: Duration = Duration::from_secs(1);
const LOAD_WINDOW: Duration = Duration::from_millis(100);
/// 1,000 a second on one worker: a third of what the control thread answers with DH work, and
/// more than a gateway of 100,000 peers rekeying every two minutes sends (about 830 a second,
/// spread over the workers).
const LOAD_WINDOW_MESSAGES: u32 = 100;

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
    let mut mac1 = [0u8; 16];
    mac1.copy_from_slice(&msg[mac1_at..mac1_at + 16]);
    Some(checker.create_reply(sender, &mac1, src, now).to_bytes())
}

/// Appends a cookie reply for `dst` to `replies`, which the caller keeps from filling up.
pub fn queue_reply(replies: &mut SendBatch, reply: &[u8; COOKIE_REPLY_LEN], dst: SocketAddr) {
    let (_, space) = replies.reserve(reply.len());
    space[..reply.len()].copy_from_slice(reply);
    replies.commit(reply.len(), dst);
}

/// One worker's count of mac1-valid handshake messages in the current window.
#[derive(Default)]
struct LoadMeter {
    window_start: Option<Instant>,
    seen: u32,
}

impl LoadMeter {
    /// Counts one message; true once the window holds more than its share.
    fn saw(&mut self, now: Instant) -> bool {
        if self.window_start.is_none_or(|t| now.saturating_duration_since(t) >= LOAD_WINDOW) {
            self.window_start = Some(now);
            self.seen = 0;
        }
        self.seen = self.seen.saturating_add(1);
        self.seen > LOAD_WINDOW_MESSAGES
    }
}

/// A worker's side of the door: its load meter and the cookie replies of the current round.
pub struct Gate {
    meter: LoadMeter,
    /// Sent by the worker after its receives (and before, when full).
    pub replies: SendBatch,
}

impl Gate {
    pub fn new(gso: bool) -> Gate {
        // One chunk holds a thousand replies; more than a round of receives can ask for.
        Gate { meter: LoadMeter::default(), replies: SendBatch::new(1, 1024, gso) }
    }

    /// Room for another reply? (Else the worker sends what is queued first.)
    pub fn has_room(&self) -> bool {
        self.replies.has_room(COOKIE_REPLY_LEN)
    }

    /// Takes a handshake message (any type, sized by the caller) that arrived from `src`:
    /// Some(screening) to pass it to the control thread, None if it was dropped or answered.
    pub fn admit(&mut self, shared: &Shared, msg: &[u8], src: SocketAddr, now: Instant) -> Option<Screening> {
        let kind = msg.first().copied()?;
        if layout(kind, msg).is_none() {
            // Cookie replies (and anything odd) are the control thread's to judge.
            return Some(Screening::Unchecked);
        }
        let Some(checker) = shared.cookies.load_full() else {
            // No private key yet: nothing can be checked, and the control thread drops it.
            return Some(Screening::Unchecked);
        };
        if !check_mac1(&checker, &shared.handshakes, msg) {
            return None;
        }
        let stamp = shared.stamp(now);
        if self.meter.saw(now) {
            shared.mark_under_load(stamp);
        }
        if !shared.under_load(stamp) {
            return Some(Screening::Mac1);
        }
        match cookie_unless_mac2(&checker, msg, &src, now) {
            None => Some(Screening::Mac1AndMac2),
            Some(reply) => {
                if self.has_room() {
                    queue_reply(&mut self.replies, &reply, src);
                    bump(&shared.handshakes.cookie_replies_sent);
                } else {
                    bump(&shared.drops.handshake_queue_full);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::noise::messages::CookieReply;
    use crate::noise::CookieGenerator;

    fn initiation(generator: &mut CookieGenerator, sender: u32, now: Instant) -> [u8; INITIATION_LEN] {
        let mut msg = [7u8; INITIATION_LEN];
        msg[..4].copy_from_slice(&MESSAGE_INITIATION.to_le_bytes());
        msg[4..8].copy_from_slice(&sender.to_le_bytes());
        generator.stamp(&mut msg, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, now);
        msg
    }

    /// Below the rate everything with a good mac1 passes; a burst past it puts the device
    /// under load, after which messages without mac2 get cookie replies from the worker (one
    /// each, for the right sender index), and a sender that took its cookie gets through.
    #[test]
    fn a_burst_gets_cookies_from_the_worker_and_mac2_passes() {
        let us = PrivateKey::generate().public_key();
        let (shared, _rx) = Shared::for_tests();
        shared.cookies.store(Some(std::sync::Arc::new(CookieChecker::new(&us))));
        let mut gate = Gate::new(true);
        let mut generator = CookieGenerator::new(&us);
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let now = Instant::now();

        let mut bad = initiation(&mut generator, 1, now);
        bad[Initiation::MAC1_OFFSET] ^= 1;
        assert_eq!(gate.admit(&shared, &bad, src, now), None);
        assert_eq!(bump_value(&shared.handshakes.invalid_mac1), 1);

        let mut passed = 0;
        for i in 0..LOAD_WINDOW_MESSAGES {
            let msg = initiation(&mut generator, i, now);
            if gate.admit(&shared, &msg, src, now) == Some(Screening::Mac1) {
                passed += 1;
            }
        }
        assert_eq!(passed, LOAD_WINDOW_MESSAGES, "up to the rate, nothing is answered with a cookie");
        assert!(gate.replies.is_empty());
        assert!(!shared.under_load(shared.stamp(now)));

        for i in 0..50u32 {
            let msg = initiation(&mut generator, 1000 + i, now);
            assert_eq!(gate.admit(&shared, &msg, src, now), None);
        }
        assert!(shared.under_load(shared.stamp(now)));
        assert_eq!(bump_value(&shared.handshakes.cookie_replies_sent), 50);
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

        // The load lasts a second after its last sign, then lifts.
        let later = now + UNDER_LOAD_STICKY + LOAD_WINDOW;
        let msg = initiation(&mut generator, 3000, later);
        assert_eq!(gate.admit(&shared, &msg, src, later), Some(Screening::Mac1));
    }

    /// Without a private key nothing is checked here; the control thread drops it.
    #[test]
    fn without_a_key_messages_pass_unchecked() {
        let (shared, _rx) = Shared::for_tests();
        let mut gate = Gate::new(false);
        let mut generator = CookieGenerator::new(&PrivateKey::generate().public_key());
        let now = Instant::now();
        let msg = initiation(&mut generator, 1, now);
        assert_eq!(gate.admit(&shared, &msg, "192.0.2.1:1".parse().unwrap(), now), Some(Screening::Unchecked));
        assert_eq!(bump_value(&shared.handshakes.initiations_received), 0);
    }

    fn bump_value(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(std::sync::atomic::Ordering::Relaxed)
    }
}
