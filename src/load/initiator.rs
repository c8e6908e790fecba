//! The load's peers as handshake initiators: initiations go out a window at a time, responses
//! become keypairs, a cookie reply arms the next try with its mac2, and a try that met nothing
//! is repeated. Sans-IO: datagrams and a clock in, initiations and keypairs out.
//!
//! The window is kept small on purpose: a responder counts itself under load once its
//! handshake queue is an eighth full (the kernel's and wireguard-go's rule) and then limits
//! each source address, and every load peer shares one source address. So a small window keeps
//! the gateway out of its defences and measures its plain handshake rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::noise::messages::INITIATION_LEN;
use crate::noise::{CookieReply, Handshake, Packet, Response, StaticIdentity, Tai64N};
use crate::session::Keypair;

/// How long a try waits for an answer before the peer goes back in line.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

struct Slot {
    identity: StaticIdentity,
    handshake: Handshake,
    /// When the try in flight was sent.
    sent_at: Option<Instant>,
    keypair: Option<Arc<Keypair>>,
}

/// What a datagram meant to the initiators.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Peer `n`'s handshake completed.
    Established(usize),
    /// Peer `n` got a cookie: its next try carries a mac2.
    Cookie(usize),
    /// Not for a try in flight (a late or forged answer, another message type).
    Ignored,
}

pub struct Initiators {
    slots: Vec<Slot>,
    index_base: u32,
    /// Peers waiting for their next try, oldest first.
    waiting: std::collections::VecDeque<usize>,
    in_flight: usize,
    established: usize,
    /// Tries sent, counting repeats.
    pub initiations_sent: u64,
    pub cookies: u64,
}

impl Initiators {
    /// One initiator per private key, all towards `gateway`. Peer `n` uses the local index
    /// `index_base + n`.
    pub fn new(gateway: PublicKey, keys: Vec<PrivateKey>, index_base: u32) -> Self {
        let slots: Vec<Slot> = keys
            .into_iter()
            .map(|k| Slot {
                identity: StaticIdentity::new(k),
                handshake: Handshake::new_lazy(gateway, PresharedKey::default()),
                sent_at: None,
                keypair: None,
            })
            .collect();
        let waiting = (0..slots.len()).collect();
        Initiators { slots, index_base, waiting, in_flight: 0, established: 0, initiations_sent: 0, cookies: 0 }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn established(&self) -> usize {
        self.established
    }

    pub fn all_established(&self) -> bool {
        self.established == self.slots.len()
    }

    pub fn local_index(&self, peer: usize) -> u32 {
        self.index_base.wrapping_add(peer as u32)
    }

    /// Tries that met no answer in time go back in line; then initiations for waiting peers
    /// are appended to `out` (peer, message) while fewer than `window` are in flight.
    pub fn poll(&mut self, now: Instant, window: usize, out: &mut Vec<(usize, [u8; INITIATION_LEN])>) {
        for (n, slot) in self.slots.iter_mut().enumerate() {
            if slot.keypair.is_none() && slot.sent_at.is_some_and(|t| now.saturating_duration_since(t) >= RETRY_AFTER) {
                slot.sent_at = None;
                self.in_flight -= 1;
                self.waiting.push_back(n);
            }
        }
        while self.in_flight < window {
            let Some(n) = self.waiting.pop_front() else { break };
            let index = self.local_index(n);
            let slot = &mut self.slots[n];
            match slot.handshake.create_initiation(&slot.identity, index, Tai64N::now(), now) {
                Ok(msg) => {
                    slot.sent_at = Some(now);
                    self.in_flight += 1;
                    self.initiations_sent += 1;
                    out.push((n, msg));
                }
                // Only a low-order gateway key gets here: no try can ever succeed.
                Err(_) => continue,
            }
        }
    }

    /// Takes a datagram from the gateway.
    pub fn consume(&mut self, datagram: &[u8], now: Instant) -> Reply {
        match Packet::parse(datagram) {
            Ok(Packet::Response(r)) => self.consume_response(&r, now),
            Ok(Packet::CookieReply(c)) => self.consume_cookie(&c, now),
            _ => Reply::Ignored,
        }
    }

    fn peer_of(&self, receiver: u32) -> Option<usize> {
        let n = receiver.wrapping_sub(self.index_base) as usize;
        (n < self.slots.len()).then_some(n)
    }

    fn consume_response(&mut self, r: &Response, now: Instant) -> Reply {
        let Some(n) = self.peer_of(r.receiver) else { return Reply::Ignored };
        let slot = &mut self.slots[n];
        if slot.keypair.is_some() || slot.sent_at.is_none() {
            return Reply::Ignored;
        }
        match slot.handshake.consume_response(&slot.identity, r) {
            Ok(keys) => {
                slot.keypair = Some(Arc::new(Keypair::new(&keys, now)));
                slot.sent_at = None;
                self.in_flight -= 1;
                self.established += 1;
                Reply::Established(n)
            }
            Err(_) => Reply::Ignored,
        }
    }

    fn consume_cookie(&mut self, c: &CookieReply, now: Instant) -> Reply {
        let Some(n) = self.peer_of(c.receiver) else { return Reply::Ignored };
        let slot = &mut self.slots[n];
        if slot.keypair.is_some() || slot.sent_at.is_none() || slot.handshake.cookies.consume_reply(c, now).is_err() {
            return Reply::Ignored;
        }
        // The responder is under load and dropped this try: try again now, with the mac2.
        slot.sent_at = None;
        self.in_flight -= 1;
        self.waiting.push_back(n);
        self.cookies += 1;
        Reply::Cookie(n)
    }

    /// Each peer's keypair, in peer order (None where the handshake did not complete).
    pub fn keypairs(&self) -> Vec<Option<Arc<Keypair>>> {
        self.slots.iter().map(|s| s.keypair.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{consume_initiation, CookieChecker, Initiation};

    /// A responder that answers every initiation it is given (a minimal gateway).
    struct Responder {
        us: StaticIdentity,
        peers: Vec<(PublicKey, Handshake)>,
        next_index: u32,
    }

    impl Responder {
        fn answer(&mut self, msg: &[u8; INITIATION_LEN], now: Instant) -> Option<(Vec<u8>, Keypair)> {
            let init = Initiation::parse(msg).ok()?;
            let found = consume_initiation(&self.us, &init).ok()?;
            let (_, hs) = self.peers.iter_mut().find(|(k, _)| *k == found.remote_static)?;
            hs.ensure_static_static(&self.us);
            hs.consume_initiation(found, now).ok()?;
            self.next_index += 1;
            let (bytes, keys) = hs.create_response(self.next_index, now).ok()?;
            Some((bytes.to_vec(), Keypair::new(&keys, now)))
        }
    }

    fn setup(n: usize) -> (Initiators, Responder, Vec<PrivateKey>) {
        let gateway = StaticIdentity::new(PrivateKey::generate());
        let keys: Vec<PrivateKey> = (0..n).map(|_| PrivateKey::generate()).collect();
        let peers = keys
            .iter()
            .map(|k| (k.public_key(), Handshake::new_lazy(k.public_key(), PresharedKey::default())))
            .collect();
        let init = Initiators::new(gateway.public, keys.clone(), 1000);
        (init, Responder { us: gateway, peers, next_index: 0 }, keys)
    }

    #[test]
    fn a_window_of_tries_completes_every_handshake_with_working_keys() {
        let (mut init, mut gw, _) = setup(10);
        let now = Instant::now();
        let mut out = Vec::new();
        init.poll(now, 4, &mut out);
        assert_eq!(out.len(), 4, "no more than the window in flight");
        init.poll(now, 4, &mut out);
        assert_eq!(out.len(), 4, "nothing new while the window is full");
        let mut gateway_keys = Vec::new();
        while !init.all_established() {
            for (n, msg) in out.drain(..) {
                let (response, keypair) = gw.answer(&msg, now).expect("the gateway accepts the initiation");
                assert_eq!(init.consume(&response, now), Reply::Established(n));
                gateway_keys.push((n, keypair));
            }
            init.poll(now, 4, &mut out);
        }
        assert_eq!((init.established(), init.initiations_sent), (10, 10));
        // Each peer's keypair talks to the gateway's.
        let ours = init.keypairs();
        for (n, theirs) in gateway_keys {
            let mine = ours[n].as_ref().unwrap();
            let mut buf = vec![0u8; 16 + 16 + 16];
            buf[16..21].copy_from_slice(b"hello");
            let len = mine.seal_padded(0, &mut buf, 5, 1420).unwrap();
            let (_, plain) = theirs.open(&mut buf[..len], now).unwrap();
            assert_eq!(&buf[16..21], b"hello");
            assert_eq!(plain, 16);
        }
        // A repeated response is ignored, not counted twice.
        assert_eq!(init.established(), 10);
    }

    #[test]
    fn an_unanswered_try_is_repeated_after_the_retry_time() {
        let (mut init, _gw, _) = setup(2);
        let t0 = Instant::now();
        let mut out = Vec::new();
        init.poll(t0, 8, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        init.poll(t0 + RETRY_AFTER / 2, 8, &mut out);
        assert!(out.is_empty());
        init.poll(t0 + RETRY_AFTER, 8, &mut out);
        assert_eq!(out.len(), 2, "both tries repeated");
        assert_eq!(init.initiations_sent, 4);
    }

    #[test]
    fn a_cookie_reply_makes_the_next_try_carry_a_valid_mac2() {
        let (mut init, gw, _) = setup(1);
        let now = Instant::now();
        let mut out = Vec::new();
        init.poll(now, 1, &mut out);
        let (_, first) = out.pop().unwrap();
        let checker = CookieChecker::new(&gw.us.public);
        let src = "192.0.2.9:4000".parse().unwrap();
        assert!(!checker.verify_mac2(&first, Initiation::MAC2_OFFSET, &src, now));
        let mut mac1 = [0u8; 16];
        mac1.copy_from_slice(&first[Initiation::MAC1_OFFSET..Initiation::MAC2_OFFSET]);
        let reply = checker.create_reply(init.local_index(0), &mac1, &src, now).to_bytes();
        assert_eq!(init.consume(&reply, now), Reply::Cookie(0));
        assert_eq!(init.consume(&reply, now), Reply::Ignored, "a repeated reply changes nothing");
        init.poll(now, 1, &mut out);
        let (_, second) = out.pop().unwrap();
        assert!(checker.verify_mac2(&second, Initiation::MAC2_OFFSET, &src, now));
    }

    #[test]
    fn garbage_and_strangers_are_ignored() {
        let (mut init, mut gw, _) = setup(1);
        let now = Instant::now();
        let mut out = Vec::new();
        init.poll(now, 1, &mut out);
        assert_eq!(init.consume(&[], now), Reply::Ignored);
        assert_eq!(init.consume(&[2, 0, 0, 0, 1], now), Reply::Ignored);
        // A response from another gateway to the same index does not decrypt.
        let (mut other, mut other_gw, _) = setup(1);
        let mut theirs = Vec::new();
        other.poll(now, 1, &mut theirs);
        let (response, _) = other_gw.answer(&theirs[0].1, now).unwrap();
        let mut forged = response.clone();
        forged[8..12].copy_from_slice(&init.local_index(0).to_le_bytes());
        assert_eq!(init.consume(&forged, now), Reply::Ignored);
        let (real, _) = gw.answer(&out[0].1, now).unwrap();
        assert_eq!(init.consume(&real, now), Reply::Established(0));
    }
}
