//! Noise_IKpsk2 as WireGuard uses it (paper 5.4.2-5.4.5), with the kernel's verbs:
//! create_initiation / consume_initiation, create_response / consume_response, begin_session.

use std::time::{Duration, Instant};

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::cookie::CookieGenerator;
use super::messages::{Initiation, Response, INITIATION_LEN, RESPONSE_LEN};
use super::primitives::{aead_open, aead_seal, hash, kdf};
use super::tai64n::Tai64N;
use crate::constants::{CONSTRUCTION, IDENTIFIER, INITIATIONS_PER_SECOND};
use crate::keys::{PreparedPublic, PresharedKey, PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum HandshakeError {
    #[error("initiation's static key does not decrypt: not meant for us")]
    UndecryptableStatic,
    #[error("initiation's timestamp does not decrypt")]
    UndecryptableTimestamp,
    #[error("initiation timestamp is not newer than the last accepted one (replay)")]
    ReplayedTimestamp,
    #[error("initiations from this peer arrive faster than {INITIATIONS_PER_SECOND}/s")]
    InitiationFlood,
    #[error("response does not decrypt")]
    UndecryptableResponse,
    #[error("response matches no initiation in flight")]
    UnexpectedResponse,
    #[error("peer key or ephemeral is a low-order point")]
    LowOrderPoint,
    #[error("no response is due: no initiation was consumed")]
    NoInitiationConsumed,
}

/// Our own static key pair.
#[derive(Clone)]
pub struct StaticIdentity {
    pub private: PrivateKey,
    pub public: PublicKey,
}

impl StaticIdentity {
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        StaticIdentity { private, public }
    }
}

/// Keys that end a handshake (KDF2 of the final chaining key), ready for a session.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    #[zeroize(skip)]
    pub local_index: u32,
    #[zeroize(skip)]
    pub remote_index: u32,
    pub send: [u8; 32],
    pub recv: [u8; 32],
    #[zeroize(skip)]
    pub is_initiator: bool,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SessionKeys(local {:#x}, remote {:#x}, initiator {})",
            self.local_index, self.remote_index, self.is_initiator
        )
    }
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct Transcript {
    hash: [u8; 32],
    chaining_key: [u8; 32],
}

impl Transcript {
    /// The state after the responder's static key is mixed in (both sides start here).
    fn start(responder_static: &PublicKey) -> Self {
        let chaining_key = hash(&[CONSTRUCTION]);
        let h = hash(&[&chaining_key, IDENTIFIER]);
        Transcript { hash: hash(&[&h, responder_static.as_bytes()]), chaining_key }
    }
    fn mix_hash(&mut self, data: &[u8]) {
        self.hash = hash(&[&self.hash, data]);
    }
    fn mix_key(&mut self, input: &[u8]) {
        let [ck] = kdf::<1>(&self.chaining_key, input);
        self.chaining_key = ck;
    }
    /// ck, k = KDF2(ck, input)
    fn mix_key_with_output(&mut self, input: &[u8]) -> [u8; 32] {
        let [ck, k] = kdf::<2>(&self.chaining_key, input);
        self.chaining_key = ck;
        k
    }
    fn seal(&mut self, key: &[u8; 32], plaintext: &[u8], out: &mut [u8]) {
        aead_seal(key, 0, plaintext, &self.hash, out);
        self.mix_hash(out);
    }
    fn open(&mut self, key: &[u8; 32], ciphertext: &[u8], out: &mut [u8]) -> Result<(), super::primitives::AeadError> {
        aead_open(key, 0, ciphertext, &self.hash, out)?;
        self.mix_hash(ciphertext);
        Ok(())
    }
}

enum State {
    Zeroed,
    InitiationCreated {
        local_index: u32,
        transcript: Transcript,
        ephemeral: PrivateKey,
    },
    /// The ephemeral boxed: the state lives in every peer, and a lifted point is 160 bytes.
    InitiationConsumed {
        remote_index: u32,
        transcript: Transcript,
        remote_ephemeral: Box<PreparedPublic>,
    },
}

/// The first half of consuming an initiation: everything that needs only our own key, so the
/// caller can find the peer by the decrypted static key before anything per-peer happens.
pub struct InitiationForUs {
    pub remote_static: PublicKey,
    sender: u32,
    /// Lifted once here for both DHs with it (`es` now, `ee` in the response).
    remote_ephemeral: Box<PreparedPublic>,
    encrypted_timestamp: [u8; 28],
    transcript: Transcript,
}

/// Decrypts the initiator's static key with our private key (responder, step one).
pub fn consume_initiation(us: &StaticIdentity, msg: &Initiation) -> Result<InitiationForUs, HandshakeError> {
    let mut t = Transcript::start(&us.public);
    let remote_ephemeral = Box::new(PreparedPublic::new(PublicKey(msg.ephemeral)));
    t.mix_key(&msg.ephemeral);
    t.mix_hash(&msg.ephemeral);
    let es = us.private.diffie_hellman_prepared(&remote_ephemeral).ok_or(HandshakeError::LowOrderPoint)?;
    let mut key = t.mix_key_with_output(&es);
    let mut remote_static = [0u8; 32];
    let opened = t.open(&key, &msg.encrypted_static, &mut remote_static);
    key.zeroize();
    opened.map_err(|_| HandshakeError::UndecryptableStatic)?;
    Ok(InitiationForUs {
        remote_static: PublicKey(remote_static),
        sender: msg.sender,
        remote_ephemeral,
        encrypted_timestamp: msg.encrypted_timestamp,
        transcript: t,
    })
}

/// DH(our static, their static): computed once per key change as the kernel does, but only
/// when first needed, so configuring 100,000 peers costs no X25519 at all.
enum StaticStatic {
    Unknown,
    Ready([u8; 32]),
    /// Their key is a low-order point: no handshake is possible.
    LowOrder,
}

impl StaticStatic {
    fn compute(us: &StaticIdentity, remote: &PreparedPublic) -> StaticStatic {
        match us.private.diffie_hellman_prepared(remote) {
            Some(ss) => StaticStatic::Ready(ss),
            None => StaticStatic::LowOrder,
        }
    }
}

/// One peer's handshake state.
pub struct Handshake {
    remote_static: PublicKey,
    /// Its Edwards form, worked out at the first DH with it (boxed: an idle peer pays a word).
    remote_static_prepared: Option<Box<PreparedPublic>>,
    preshared_key: PresharedKey,
    static_static: StaticStatic,
    state: State,
    latest_timestamp: Tai64N,
    last_initiation_consumption: Option<Instant>,
    pub cookies: CookieGenerator,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if let StaticStatic::Ready(ss) = &mut self.static_static {
            ss.zeroize();
        }
    }
}

impl Handshake {
    pub fn new(us: &StaticIdentity, remote_static: PublicKey, preshared_key: PresharedKey) -> Self {
        let mut h = Handshake::new_lazy(remote_static, preshared_key);
        h.ensure_static_static(us);
        h
    }

    /// As `new`, with the static-static DH left for `ensure_static_static` (or the first
    /// initiation) to compute.
    pub fn new_lazy(remote_static: PublicKey, preshared_key: PresharedKey) -> Self {
        Handshake {
            remote_static,
            remote_static_prepared: None,
            preshared_key,
            static_static: StaticStatic::Unknown,
            state: State::Zeroed,
            latest_timestamp: Tai64N::default(),
            last_initiation_consumption: None,
            cookies: CookieGenerator::new(&remote_static),
        }
    }

    /// Computes the static-static DH if it is not known yet (call before `consume_initiation`).
    pub fn ensure_static_static(&mut self, us: &StaticIdentity) {
        if matches!(self.static_static, StaticStatic::Unknown) {
            self.static_static = StaticStatic::compute(us, self.remote_static_prepared());
        }
    }

    fn remote_static_prepared(&mut self) -> &PreparedPublic {
        let key = self.remote_static;
        self.remote_static_prepared.get_or_insert_with(|| Box::new(PreparedPublic::new(key)))
    }

    fn static_static(&self) -> Result<[u8; 32], HandshakeError> {
        match &self.static_static {
            StaticStatic::Ready(ss) => Ok(*ss),
            StaticStatic::Unknown | StaticStatic::LowOrder => Err(HandshakeError::LowOrderPoint),
        }
    }

    pub fn remote_static(&self) -> &PublicKey {
        &self.remote_static
    }

    /// Our private key changed: forget the static-static DH (recomputed when next needed) and
    /// any handshake.
    pub fn identity_changed(&mut self) {
        if let StaticStatic::Ready(ss) = &mut self.static_static {
            ss.zeroize();
        }
        self.static_static = StaticStatic::Unknown;
        self.state = State::Zeroed;
    }

    pub fn set_preshared_key(&mut self, psk: PresharedKey) {
        self.preshared_key = psk;
    }

    pub fn preshared_key(&self) -> &PresharedKey {
        &self.preshared_key
    }

    /// Forget any handshake in progress (keys zeroed by the timers, or a peer update).
    pub fn clear(&mut self) {
        self.state = State::Zeroed;
    }

    pub fn create_initiation(
        &mut self,
        us: &StaticIdentity,
        local_index: u32,
        timestamp: Tai64N,
        now: Instant,
    ) -> Result<[u8; INITIATION_LEN], HandshakeError> {
        self.ensure_static_static(us);
        let mut ss = self.static_static()?;
        let mut t = Transcript::start(&self.remote_static);
        let ephemeral = PrivateKey::generate();
        let ephemeral_public = ephemeral.public_key();
        t.mix_key(ephemeral_public.as_bytes());
        t.mix_hash(ephemeral_public.as_bytes());
        let mut es =
            ephemeral.diffie_hellman_prepared(self.remote_static_prepared()).ok_or(HandshakeError::LowOrderPoint)?;
        let mut key = t.mix_key_with_output(&es);
        es.zeroize();
        let mut msg = Initiation {
            sender: local_index,
            ephemeral: *ephemeral_public.as_bytes(),
            encrypted_static: [0; 48],
            encrypted_timestamp: [0; 28],
            mac1: [0; 16],
            mac2: [0; 16],
        };
        t.seal(&key, us.public.as_bytes(), &mut msg.encrypted_static);
        key = t.mix_key_with_output(&ss);
        ss.zeroize();
        t.seal(&key, &timestamp.0, &mut msg.encrypted_timestamp);
        key.zeroize();
        let mut bytes = msg.to_bytes();
        self.cookies.stamp(&mut bytes, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, now);
        self.state = State::InitiationCreated { local_index, transcript: t, ephemeral };
        Ok(bytes)
    }

    /// Responder, step two: with the peer found, decrypt and check the timestamp.
    pub fn consume_initiation(&mut self, mut msg: InitiationForUs, now: Instant) -> Result<(), HandshakeError> {
        let mut ss = self.static_static()?;
        let mut key = msg.transcript.mix_key_with_output(&ss);
        ss.zeroize();
        let mut timestamp = [0u8; 12];
        let opened = msg.transcript.open(&key, &msg.encrypted_timestamp, &mut timestamp);
        key.zeroize();
        opened.map_err(|_| HandshakeError::UndecryptableTimestamp)?;
        let timestamp = Tai64N(timestamp);
        if !timestamp.is_after(&self.latest_timestamp) {
            return Err(HandshakeError::ReplayedTimestamp);
        }
        let min_gap = Duration::from_secs(1) / INITIATIONS_PER_SECOND;
        if self.last_initiation_consumption.is_some_and(|last| now.saturating_duration_since(last) < min_gap) {
            return Err(HandshakeError::InitiationFlood);
        }
        self.latest_timestamp = timestamp;
        self.last_initiation_consumption = Some(now);
        let remote_ephemeral = msg.remote_ephemeral;
        let sender = msg.sender;
        let transcript = Transcript { hash: msg.transcript.hash, chaining_key: msg.transcript.chaining_key };
        self.state = State::InitiationConsumed { remote_index: sender, transcript, remote_ephemeral };
        Ok(())
    }

    pub fn create_response(
        &mut self,
        local_index: u32,
        now: Instant,
    ) -> Result<([u8; RESPONSE_LEN], SessionKeys), HandshakeError> {
        let (remote_index, mut t, remote_ephemeral) = match std::mem::replace(&mut self.state, State::Zeroed) {
            State::InitiationConsumed { remote_index, transcript, remote_ephemeral } => {
                (remote_index, transcript, remote_ephemeral)
            }
            other => {
                self.state = other;
                return Err(HandshakeError::NoInitiationConsumed);
            }
        };
        let ephemeral = PrivateKey::generate();
        let ephemeral_public = ephemeral.public_key();
        t.mix_key(ephemeral_public.as_bytes());
        t.mix_hash(ephemeral_public.as_bytes());
        let mut ee = ephemeral.diffie_hellman_prepared(&remote_ephemeral).ok_or(HandshakeError::LowOrderPoint)?;
        t.mix_key(&ee);
        ee.zeroize();
        let mut se =
            ephemeral.diffie_hellman_prepared(self.remote_static_prepared()).ok_or(HandshakeError::LowOrderPoint)?;
        t.mix_key(&se);
        se.zeroize();
        let [ck, mut tau, mut key] = kdf::<3>(&t.chaining_key, self.preshared_key.as_bytes());
        t.chaining_key = ck;
        t.mix_hash(&tau);
        tau.zeroize();
        let mut msg = Response {
            sender: local_index,
            receiver: remote_index,
            ephemeral: *ephemeral_public.as_bytes(),
            encrypted_nothing: [0; 16],
            mac1: [0; 16],
            mac2: [0; 16],
        };
        t.seal(&key, &[], &mut msg.encrypted_nothing);
        key.zeroize();
        let mut bytes = msg.to_bytes();
        self.cookies.stamp(&mut bytes, Response::MAC1_OFFSET, Response::MAC2_OFFSET, now);
        let keys = begin_session(&t, local_index, remote_index, false);
        Ok((bytes, keys))
    }

    pub fn consume_response(&mut self, us: &StaticIdentity, msg: &Response) -> Result<SessionKeys, HandshakeError> {
        let (local_index, transcript, ephemeral) = match &self.state {
            State::InitiationCreated { local_index, transcript, ephemeral } if *local_index == msg.receiver => {
                (*local_index, transcript, ephemeral)
            }
            _ => return Err(HandshakeError::UnexpectedResponse),
        };
        // Work on a copy: a forged response must not disturb the initiation in flight.
        let mut t = Transcript { hash: transcript.hash, chaining_key: transcript.chaining_key };
        let remote_ephemeral = PreparedPublic::new(PublicKey(msg.ephemeral));
        t.mix_key(&msg.ephemeral);
        t.mix_hash(&msg.ephemeral);
        let mut ee = ephemeral.diffie_hellman_prepared(&remote_ephemeral).ok_or(HandshakeError::LowOrderPoint)?;
        t.mix_key(&ee);
        ee.zeroize();
        let mut se = us.private.diffie_hellman_prepared(&remote_ephemeral).ok_or(HandshakeError::LowOrderPoint)?;
        t.mix_key(&se);
        se.zeroize();
        let [ck, mut tau, mut key] = kdf::<3>(&t.chaining_key, self.preshared_key.as_bytes());
        t.chaining_key = ck;
        t.mix_hash(&tau);
        tau.zeroize();
        let opened = t.open(&key, &msg.encrypted_nothing, &mut []);
        key.zeroize();
        opened.map_err(|_| HandshakeError::UndecryptableResponse)?;
        self.state = State::Zeroed;
        Ok(begin_session(&t, local_index, msg.sender, true))
    }
}

/// T_send, T_recv = KDF2(C, empty); the initiator sends with the first key.
fn begin_session(t: &Transcript, local_index: u32, remote_index: u32, is_initiator: bool) -> SessionKeys {
    let [first, second] = kdf::<2>(&t.chaining_key, &[]);
    let (send, recv) = if is_initiator { (first, second) } else { (second, first) };
    SessionKeys { local_index, remote_index, send, recv, is_initiator }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(psk: PresharedKey) -> (StaticIdentity, StaticIdentity, Handshake, Handshake) {
        let a = StaticIdentity::new(PrivateKey::generate());
        let b = StaticIdentity::new(PrivateKey::generate());
        let ha = Handshake::new(&a, b.public, psk.clone());
        let hb = Handshake::new(&b, a.public, psk);
        (a, b, ha, hb)
    }

    #[test]
    fn full_handshake_agrees_on_keys() {
        let (a, b, mut ha, mut hb) = pair(PresharedKey::generate());
        let now = Instant::now();
        let init = ha.create_initiation(&a, 11, Tai64N::now(), now).unwrap();
        let parsed = Initiation::parse(&init).unwrap();
        let for_us = consume_initiation(&b, &parsed).unwrap();
        assert_eq!(for_us.remote_static, a.public);
        hb.consume_initiation(for_us, now).unwrap();
        let (resp, kb) = hb.create_response(22, now).unwrap();
        let ka = ha.consume_response(&a, &Response::parse(&resp).unwrap()).unwrap();
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_eq!((ka.local_index, ka.remote_index), (11, 22));
        assert_eq!((kb.local_index, kb.remote_index), (22, 11));
        // The response is consumed once.
        assert_eq!(
            ha.consume_response(&a, &Response::parse(&resp).unwrap()).unwrap_err(),
            HandshakeError::UnexpectedResponse
        );
    }

    #[test]
    fn replayed_initiation_is_rejected() {
        let (a, b, mut ha, mut hb) = pair(PresharedKey::default());
        let now = Instant::now();
        let init = Initiation::parse(&ha.create_initiation(&a, 1, Tai64N::now(), now).unwrap()).unwrap();
        hb.consume_initiation(consume_initiation(&b, &init).unwrap(), now).unwrap();
        let later = now + Duration::from_secs(1);
        let again = consume_initiation(&b, &init).unwrap();
        assert_eq!(hb.consume_initiation(again, later).unwrap_err(), HandshakeError::ReplayedTimestamp);
    }

    #[test]
    fn flood_is_rejected() {
        let (a, b, mut ha, mut hb) = pair(PresharedKey::default());
        let now = Instant::now();
        let t0 = Tai64N::from_system_time(std::time::UNIX_EPOCH + Duration::from_secs(1000));
        let t1 = Tai64N::from_system_time(std::time::UNIX_EPOCH + Duration::from_secs(1001));
        let i0 = Initiation::parse(&ha.create_initiation(&a, 1, t0, now).unwrap()).unwrap();
        let i1 = Initiation::parse(&ha.create_initiation(&a, 2, t1, now).unwrap()).unwrap();
        hb.consume_initiation(consume_initiation(&b, &i0).unwrap(), now).unwrap();
        let err = hb.consume_initiation(consume_initiation(&b, &i1).unwrap(), now + Duration::from_millis(1));
        assert_eq!(err.unwrap_err(), HandshakeError::InitiationFlood);
    }

    #[test]
    fn wrong_keys_fail_cleanly() {
        let (a, _b, mut ha, _hb) = pair(PresharedKey::default());
        let stranger = StaticIdentity::new(PrivateKey::generate());
        let now = Instant::now();
        let init = Initiation::parse(&ha.create_initiation(&a, 1, Tai64N::now(), now).unwrap()).unwrap();
        assert_eq!(consume_initiation(&stranger, &init).err(), Some(HandshakeError::UndecryptableStatic));
        // Mismatched preshared keys: the response does not decrypt.
        let (a, b, mut ha, mut hb_right) = pair(PresharedKey::generate());
        let mut hb = Handshake::new(&b, a.public, PresharedKey::generate());
        let init = Initiation::parse(&ha.create_initiation(&a, 5, Tai64N::now(), now).unwrap()).unwrap();
        hb.consume_initiation(consume_initiation(&b, &init).unwrap(), now).unwrap();
        let (resp, _) = hb.create_response(6, now).unwrap();
        let err = ha.consume_response(&a, &Response::parse(&resp).unwrap()).unwrap_err();
        assert_eq!(err, HandshakeError::UndecryptableResponse);
        // And the initiation is still in flight after the forgery: the right answer is taken.
        hb_right.consume_initiation(consume_initiation(&b, &init).unwrap(), now).unwrap();
        let (resp, _) = hb_right.create_response(7, now).unwrap();
        assert!(ha.consume_response(&a, &Response::parse(&resp).unwrap()).is_ok());
    }
}
