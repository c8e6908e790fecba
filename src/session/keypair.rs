//! A transport keypair: ring's ChaCha20-Poly1305 keys, the atomic send counter, the replay window.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ring::aead::{Aad, LessSafeKey, UnboundKey, CHACHA20_POLY1305};

use super::replay::ReplayWindow;
use crate::constants::{
    AEAD_TAG_LEN, KEEPALIVE_TIMEOUT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
};
use crate::noise::messages::{padded_len, TransportHeader, TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN};
use crate::noise::primitives::nonce;
use crate::noise::SessionKeys;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum SessionError {
    #[error("transport packet fails authentication")]
    DecryptFailed,
    #[error("transport counter {0} was already seen or is behind the replay window")]
    Replayed(u64),
    #[error("keypair is past REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES")]
    Expired,
    #[error("buffer too small for the sealed packet")]
    BufferTooSmall,
    #[error("transport message too short")]
    TooShort,
}

/// The send counter of a keypair that may send no more: past REJECT_AFTER_MESSAGES, where
/// `reserve_counters` never reserves from.
const SPENT: u64 = u64::MAX;

pub struct Keypair {
    pub local_index: u32,
    pub remote_index: u32,
    pub is_initiator: bool,
    pub birth: Instant,
    sender: LessSafeKey,
    receiver: LessSafeKey,
    send_counter: AtomicU64,
    replay: ReplayWindow,
    /// The receive side asked for a handshake because this keypair nears its end (the
    /// kernel's `sent_lastminute_handshake`): once per keypair.
    lastminute_handshake: AtomicBool,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair(local {:#x}, remote {:#x})", self.local_index, self.remote_index)
    }
}

impl Keypair {
    /// ring copies the key bytes into its own (opaque) state; the `SessionKeys` wipe theirs on drop.
    pub fn new(keys: &SessionKeys, now: Instant) -> Self {
        let key =
            |k: &[u8; 32]| LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).unwrap_or_else(|_| unreachable!()));
        Keypair {
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            is_initiator: keys.is_initiator,
            birth: now,
            sender: key(&keys.send),
            receiver: key(&keys.recv),
            send_counter: AtomicU64::new(0),
            replay: ReplayWindow::default(),
            lastminute_handshake: AtomicBool::new(false),
        }
    }

    /// Reserves `n` consecutive nonces; None once the keypair may not send any more. A batch
    /// that would cross REJECT_AFTER_MESSAGES is refused whole and the keypair is spent for
    /// good (the kernel's `sending.is_valid = false`): the counter never moves past the limit,
    /// so it can never wrap around to nonces already used.
    pub fn reserve_counters(&self, n: u64, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.birth) >= REJECT_AFTER_TIME {
            return None;
        }
        let fits = |c: u64| c.checked_add(n).filter(|&end| end <= REJECT_AFTER_MESSAGES);
        match self.send_counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, fits) {
            Ok(first) => Some(first),
            Err(_) => {
                self.send_counter.store(SPENT, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn sent_counter(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// The paper's send-side rekey rule: our own keypair is old or heavily used.
    pub fn wants_rekey_on_send(&self, now: Instant) -> bool {
        self.sent_counter() > REKEY_AFTER_MESSAGES
            || (self.is_initiator && now.saturating_duration_since(self.birth) >= REKEY_AFTER_TIME)
    }

    /// The paper's receive-side rule, asked of the peer's current keypair: an initiator whose
    /// keypair is within KEEPALIVE_TIMEOUT + REKEY_TIMEOUT of REJECT_AFTER_TIME wants a new
    /// handshake. True once per keypair.
    pub fn wants_lastminute_handshake(&self, now: Instant) -> bool {
        self.is_initiator
            && now.saturating_duration_since(self.birth) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
            && !self.lastminute_handshake.swap(true, Ordering::Relaxed)
    }

    pub fn usable_for_receive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.birth) < REJECT_AFTER_TIME
    }

    fn write_header(&self, counter: u64, msg: &mut [u8]) {
        let mut header = [0u8; TRANSPORT_HEADER_LEN];
        TransportHeader { receiver: self.remote_index, counter }.write(&mut header);
        msg[..TRANSPORT_HEADER_LEN].copy_from_slice(&header);
    }

    /// Pads the `len` plaintext bytes at `buf[16..]` with zeros as the paper asks (to a
    /// multiple of 16, not beyond the MTU) and seals in place; returns the message length.
    pub fn seal_padded(&self, counter: u64, buf: &mut [u8], len: usize, mtu: usize) -> Result<usize, SessionError> {
        let total = self.frame(counter, buf, len, mtu)?;
        self.seal_framed(&mut buf[..total])?;
        Ok(total)
    }

    /// The first half of `seal_padded`, done in order on the thread that stamps the nonce:
    /// writes the header (with `counter`) and the zero padding around the `len` plaintext bytes
    /// at `buf[16..]`. Returns the message length; `seal_framed` then finishes it anywhere.
    pub fn frame(&self, counter: u64, buf: &mut [u8], len: usize, mtu: usize) -> Result<usize, SessionError> {
        let padded = padded_len(len, mtu);
        let total = TRANSPORT_HEADER_LEN + padded + AEAD_TAG_LEN;
        if buf.len() < total || padded < len {
            return Err(SessionError::BufferTooSmall);
        }
        buf[TRANSPORT_HEADER_LEN + len..TRANSPORT_HEADER_LEN + padded].fill(0);
        self.write_header(counter, buf);
        Ok(total)
    }

    /// Seals a message `frame` prepared, in place (its counter is in its header): the body
    /// is encrypted and the last 16 bytes become the tag.
    pub fn seal_framed(&self, msg: &mut [u8]) -> Result<(), SessionError> {
        if msg.len() < TRANSPORT_MIN_LEN {
            return Err(SessionError::TooShort);
        }
        let header = TransportHeader::parse(msg).map_err(|_| SessionError::TooShort)?;
        let (_, rest) = msg.split_at_mut(TRANSPORT_HEADER_LEN);
        let (body, tail) = rest.split_at_mut(rest.len() - AEAD_TAG_LEN);
        let tag = self
            .sender
            .seal_in_place_separate_tag(nonce(header.counter), Aad::empty(), body)
            .map_err(|_| SessionError::BufferTooSmall)?;
        tail.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// The length of the sealed message for `len` plaintext bytes.
    pub fn sealed_len(len: usize, mtu: usize) -> usize {
        TRANSPORT_HEADER_LEN + padded_len(len, mtu) + AEAD_TAG_LEN
    }

    /// Opens a whole transport message in place; returns the counter and the padded
    /// plaintext's length, found at `msg[16..16 + len]`.
    pub fn open(&self, msg: &mut [u8], now: Instant) -> Result<(u64, usize), SessionError> {
        let (counter, len) = self.decrypt(msg, now)?;
        self.accept(counter)?;
        Ok((counter, len))
    }

    /// The first half of `open`, which may run on any worker: authenticates and decrypts in
    /// place, without moving the replay window (a counter already behind it is refused early).
    pub fn decrypt(&self, msg: &mut [u8], now: Instant) -> Result<(u64, usize), SessionError> {
        if msg.len() < TRANSPORT_MIN_LEN {
            return Err(SessionError::TooShort);
        }
        if !self.usable_for_receive(now) {
            return Err(SessionError::Expired);
        }
        let header = TransportHeader::parse(msg).map_err(|_| SessionError::TooShort)?;
        if !self.replay.may_accept(header.counter) {
            return Err(SessionError::Replayed(header.counter));
        }
        let len = self
            .receiver
            .open_in_place(nonce(header.counter), Aad::empty(), &mut msg[TRANSPORT_HEADER_LEN..])
            .map_err(|_| SessionError::DecryptFailed)?
            .len();
        Ok((header.counter, len))
    }

    /// The second half, in order on the owner: the counter of an authentic message enters
    /// the replay window, or the message is a replay.
    pub fn accept(&self, counter: u64) -> Result<(), SessionError> {
        if self.replay.check_and_update(counter) {
            Ok(())
        } else {
            Err(SessionError::Replayed(counter))
        }
    }
}

/// A peer's keypair slots (paper 5.4.6 and the kernel's noise_keypairs): `current` sends,
/// `previous` still receives, `next` is a responder's keypair awaiting its first packet.
#[derive(Clone, Default, Debug)]
pub struct Keypairs {
    pub current: Option<Arc<Keypair>>,
    pub previous: Option<Arc<Keypair>>,
    pub next: Option<Arc<Keypair>>,
}

impl Keypairs {
    /// The slots after a handshake produced `new` (kernel: add_new_keypair).
    pub fn with_new(&self, new: Arc<Keypair>) -> Keypairs {
        if new.is_initiator {
            let previous = if self.next.is_some() { self.next.clone() } else { self.current.clone() };
            Keypairs { current: Some(new), previous, next: None }
        } else {
            Keypairs { current: self.current.clone(), previous: None, next: Some(new) }
        }
    }

    /// The slots after a packet arrived under `used`: a confirmed `next` becomes current
    /// (kernel: received_with_keypair). None when nothing changes.
    pub fn confirmed(&self, used: &Arc<Keypair>) -> Option<Keypairs> {
        match &self.next {
            Some(next) if Arc::ptr_eq(next, used) => {
                Some(Keypairs { current: Some(next.clone()), previous: self.current.clone(), next: None })
            }
            _ => None,
        }
    }

    pub fn contains(&self, k: &Arc<Keypair>) -> bool {
        [&self.current, &self.previous, &self.next].into_iter().flatten().any(|x| Arc::ptr_eq(x, k))
    }

    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next].into_iter().flatten().map(|k| k.local_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(initiator: bool, local: u32) -> SessionKeys {
        SessionKeys {
            local_index: local,
            remote_index: local + 100,
            send: [1; 32],
            recv: [1; 32],
            is_initiator: initiator,
        }
    }

    #[test]
    fn the_send_counter_stops_at_reject_after_messages_and_never_wraps() {
        let now = Instant::now();
        let k = Keypair::new(&keys(true, 1), now);
        k.send_counter.store(REJECT_AFTER_MESSAGES - 3, Ordering::Relaxed);
        assert_eq!(k.reserve_counters(2, now), Some(REJECT_AFTER_MESSAGES - 3));
        assert_eq!(k.reserve_counters(2, now), None, "a batch crossing the limit is refused whole");
        assert_eq!(k.reserve_counters(1, now), None, "and the keypair is spent for good");
        // Far more refusals than the 2^13 nonces between the limit and the counter's wrap.
        for _ in 0..20_000 {
            assert_eq!(k.reserve_counters(1, now), None);
        }
        assert!(k.sent_counter() > REJECT_AFTER_MESSAGES && k.wants_rekey_on_send(now));
        // The last nonce below the limit is usable once, exactly.
        let k = Keypair::new(&keys(true, 2), now);
        k.send_counter.store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        assert_eq!(k.reserve_counters(1, now), Some(REJECT_AFTER_MESSAGES - 1));
        assert_eq!(k.reserve_counters(1, now), None);
    }

    #[test]
    fn the_lastminute_handshake_is_wanted_once_per_keypair_by_its_initiator() {
        let t0 = Instant::now();
        let late = t0 + REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        let k = Keypair::new(&keys(true, 1), t0);
        assert!(!k.wants_lastminute_handshake(late - Duration::from_secs(1)));
        assert!(k.wants_lastminute_handshake(late));
        assert!(!k.wants_lastminute_handshake(late + Duration::from_secs(1)), "once per keypair");
        let responder = Keypair::new(&keys(false, 2), t0);
        assert!(!responder.wants_lastminute_handshake(late));
    }

    #[test]
    fn seal_open_roundtrip_and_replay() {
        let now = Instant::now();
        let k = Keypair::new(&keys(true, 1), now);
        let mut buf = vec![0u8; 16 + 32 + 16];
        buf[16..21].copy_from_slice(b"hello");
        let c = k.reserve_counters(1, now).unwrap();
        let n = k.seal_padded(c, &mut buf, 32, 65535).unwrap();
        assert_eq!(n, 64);
        let copy = buf.clone();
        let (counter, len) = k.open(&mut buf, now).unwrap();
        assert_eq!((counter, len), (0, 32));
        assert_eq!(&buf[16..21], b"hello");
        let mut again = copy.clone();
        assert_eq!(k.open(&mut again, now), Err(SessionError::Replayed(0)));
        let mut bad = copy.clone();
        bad[20] ^= 1;
        // A forged packet with a fresh counter fails authentication and does not move the window.
        bad[8] = 5;
        assert_eq!(k.open(&mut bad, now), Err(SessionError::DecryptFailed));
        assert_eq!(k.open(&mut copy.clone(), now + REJECT_AFTER_TIME), Err(SessionError::Expired));
        assert!(k.reserve_counters(1, now + REJECT_AFTER_TIME).is_none());
    }

    #[test]
    fn framed_then_sealed_elsewhere_is_the_same_message() {
        let now = Instant::now();
        let k = Keypair::new(&keys(true, 1), now);
        let peer = Keypair::new(&keys(false, 101), now);
        let mut whole = vec![0xAAu8; 200];
        whole[16..23].copy_from_slice(b"payload");
        let mut split = whole.clone();
        let n = k.seal_padded(7, &mut whole, 7, 1420).unwrap();
        let m = k.frame(7, &mut split, 7, 1420).unwrap();
        assert_eq!(n, m);
        k.seal_framed(&mut split[..m]).unwrap();
        assert_eq!(whole[..n], split[..n]);
        let (counter, len) = peer.open(&mut split[..m], now).unwrap();
        assert_eq!((counter, &split[16..16 + 7], len), (7, &b"payload"[..], 16));
        assert_eq!(k.frame(0, &mut [0u8; 40], 7, 1420), Err(SessionError::BufferTooSmall));
        assert_eq!(k.seal_framed(&mut [0u8; 31]), Err(SessionError::TooShort));
    }

    #[test]
    fn rekey_and_reject_limits() {
        let now = Instant::now();
        let k = Keypair::new(&keys(true, 1), now);
        assert!(!k.wants_rekey_on_send(now));
        assert!(k.wants_rekey_on_send(now + REKEY_AFTER_TIME));
        k.send_counter.store(REKEY_AFTER_MESSAGES + 1, Ordering::Relaxed);
        assert!(k.wants_rekey_on_send(now));
        k.send_counter.store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        assert_eq!(k.reserve_counters(1, now), Some(REJECT_AFTER_MESSAGES - 1));
        assert_eq!(k.reserve_counters(1, now), None);
        let responder = Keypair::new(&keys(false, 2), now);
        assert!(!responder.wants_rekey_on_send(now + REKEY_AFTER_TIME + Duration::from_secs(1)));
    }

    #[test]
    fn rotation_follows_the_kernel() {
        let now = Instant::now();
        let a = Arc::new(Keypair::new(&keys(true, 1), now));
        let s = Keypairs::default().with_new(a.clone());
        assert!(Arc::ptr_eq(s.current.as_ref().unwrap(), &a));
        // Responder keypair waits in `next` until a packet confirms it.
        let b = Arc::new(Keypair::new(&keys(false, 2), now));
        let s = s.with_new(b.clone());
        assert!(Arc::ptr_eq(s.current.as_ref().unwrap(), &a));
        assert!(Arc::ptr_eq(s.next.as_ref().unwrap(), &b));
        assert!(s.confirmed(&a).is_none());
        let s = s.confirmed(&b).unwrap();
        assert!(Arc::ptr_eq(s.current.as_ref().unwrap(), &b));
        assert!(Arc::ptr_eq(s.previous.as_ref().unwrap(), &a));
        assert!(s.next.is_none());
        // An initiator keypair replaces current; a pending next becomes previous.
        let c = Arc::new(Keypair::new(&keys(false, 3), now));
        let d = Arc::new(Keypair::new(&keys(true, 4), now));
        let s = s.with_new(c.clone()).with_new(d.clone());
        assert!(Arc::ptr_eq(s.current.as_ref().unwrap(), &d));
        assert!(Arc::ptr_eq(s.previous.as_ref().unwrap(), &c));
        assert_eq!(s.indices().collect::<Vec<_>>(), vec![4, 3]);
    }
}
