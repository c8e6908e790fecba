//! mac1/mac2 and cookie replies: WireGuard's defence against handshake floods (paper 5.4.7).

use std::net::{IpAddr, SocketAddr};
use std::sync::{PoisonError, RwLock};
use std::time::Instant;

use rand::RngCore;
use zeroize::Zeroize;

use super::messages::CookieReply;
use super::primitives::{hash, mac, xaead_open, xaead_seal, PublicKeyedMac};
use crate::constants::{COOKIE_LEN, COOKIE_REFRESH_TIME, LABEL_COOKIE, LABEL_MAC1, MAC_LEN, REKEY_TIMEOUT};
use crate::keys::PublicKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum CookieError {
    #[error("cookie reply does not decrypt (wrong peer or no matching message)")]
    Undecryptable,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bytes a cookie binds to: the source IP (4 or 16 bytes, v4-mapped addresses as v4)
/// followed by the source port, big-endian.
fn source_bytes(src: &SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let n = match src.ip().to_canonical() {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            b[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    b[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    (b, n + 2)
}

/// The secret cookies are made from, replaced every two minutes.
struct CookieSecret {
    bytes: [u8; 32],
    birth: Option<Instant>,
}

impl Drop for CookieSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// Responder side: checks mac1 and mac2 of messages sent to us and makes cookie replies.
/// Shared by every thread that answers handshakes (the workers answer floods, the control
/// thread the rest), so they all issue and accept the same cookies: the secret sits behind a
/// lock that is written once per two minutes.
pub struct CookieChecker {
    /// Derived from our public key: not secret.
    mac1: PublicKeyedMac,
    cookie_key: [u8; 32],
    secret: RwLock<CookieSecret>,
}

impl CookieChecker {
    pub fn new(our_public: &PublicKey) -> Self {
        CookieChecker {
            mac1: PublicKeyedMac::new(&hash(&[LABEL_MAC1, our_public.as_bytes()])),
            cookie_key: hash(&[LABEL_COOKIE, our_public.as_bytes()]),
            secret: RwLock::new(CookieSecret { bytes: [0; 32], birth: None }),
        }
    }

    /// `msg` is a whole initiation or response; mac1 covers everything before it.
    pub fn verify_mac1(&self, msg: &[u8], mac1_offset: usize) -> bool {
        let expected = self.mac1.mac(&msg[..mac1_offset]);
        constant_time_eq(&expected, &msg[mac1_offset..mac1_offset + MAC_LEN])
    }

    fn cookie_for(&self, src: &SocketAddr, now: Instant) -> [u8; COOKIE_LEN] {
        let stale = |s: &CookieSecret| s.birth.is_none_or(|b| now.saturating_duration_since(b) >= COOKIE_REFRESH_TIME);
        let (bytes, n) = source_bytes(src);
        {
            // A poisoned lock still holds a whole secret (it is only ever replaced whole).
            let secret = self.secret.read().unwrap_or_else(PoisonError::into_inner);
            if !stale(&secret) {
                return mac(&secret.bytes, &[&bytes[..n]]);
            }
        }
        let mut secret = self.secret.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have replaced it between the two locks.
        if stale(&secret) {
            rand::rngs::OsRng.fill_bytes(&mut secret.bytes);
            secret.birth = Some(now);
        }
        mac(&secret.bytes, &[&bytes[..n]])
    }

    /// mac2 must be MAC(cookie(src), msg up to mac2) for the current cookie secret. An
    /// all-zero mac2 is "no cookie" (what every sender without one puts there, floods
    /// included): it is refused without computing anything, as a MAC of zero has a 2^-128
    /// chance.
    pub fn verify_mac2(&self, msg: &[u8], mac2_offset: usize, src: &SocketAddr, now: Instant) -> bool {
        let given = &msg[mac2_offset..mac2_offset + MAC_LEN];
        if given.iter().all(|&b| b == 0) {
            return false;
        }
        let mut cookie = self.cookie_for(src, now);
        let expected = mac(&cookie, &[&msg[..mac2_offset]]);
        cookie.zeroize();
        constant_time_eq(&expected, given)
    }

    /// A cookie reply to a message whose sender index is `receiver` and whose mac1 is `mac1`.
    pub fn create_reply(&self, receiver: u32, mac1: &[u8; MAC_LEN], src: &SocketAddr, now: Instant) -> CookieReply {
        let mut cookie = self.cookie_for(src, now);
        // A nonce need only never repeat: the thread's CSPRNG (seeded from the OS) instead of
        // a getrandom call per reply, which a flood would multiply.
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut encrypted_cookie = [0u8; COOKIE_LEN + MAC_LEN];
        xaead_seal(&self.cookie_key, &nonce, &cookie, mac1, &mut encrypted_cookie);
        cookie.zeroize();
        CookieReply { receiver, nonce, encrypted_cookie }
    }
}

/// Initiator side, one per peer: stamps mac1/mac2 on our messages and keeps the peer's cookie.
pub struct CookieGenerator {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    cookie: Option<([u8; COOKIE_LEN], Instant)>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl CookieGenerator {
    pub fn new(peer_public: &PublicKey) -> Self {
        CookieGenerator {
            mac1_key: hash(&[LABEL_MAC1, peer_public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, peer_public.as_bytes()]),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Writes mac1 and (with a fresh cookie) mac2 into a message about to be sent.
    pub fn stamp(&mut self, msg: &mut [u8], mac1_offset: usize, mac2_offset: usize, now: Instant) {
        let mac1 = mac(&self.mac1_key, &[&msg[..mac1_offset]]);
        msg[mac1_offset..mac1_offset + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        // A cookie is good for the secret's lifetime minus the latency allowance (kernel:
        // COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY).
        let max_age = COOKIE_REFRESH_TIME - REKEY_TIMEOUT;
        let mac2 = match self.cookie {
            Some((cookie, at)) if now.saturating_duration_since(at) < max_age => mac(&cookie, &[&msg[..mac2_offset]]),
            _ => [0u8; MAC_LEN],
        };
        msg[mac2_offset..mac2_offset + MAC_LEN].copy_from_slice(&mac2);
    }

    /// Takes a cookie reply to the last message we stamped.
    pub fn consume_reply(&mut self, reply: &CookieReply, now: Instant) -> Result<(), CookieError> {
        let mac1 = self.last_mac1.ok_or(CookieError::Undecryptable)?;
        let mut cookie = [0u8; COOKIE_LEN];
        xaead_open(&self.cookie_key, &reply.nonce, &reply.encrypted_cookie, &mac1, &mut cookie)
            .map_err(|_| CookieError::Undecryptable)?;
        self.cookie = Some((cookie, now));
        // One reply per message: a replayed reply finds no mac1 to match.
        self.last_mac1 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn cookie_round_trip() {
        let responder = PrivateKey::generate().public_key();
        let checker = CookieChecker::new(&responder);
        let mut generator = CookieGenerator::new(&responder);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut msg = [9u8; 148];
        generator.stamp(&mut msg, 116, 132, now);
        assert!(checker.verify_mac1(&msg, 116));
        assert!(!checker.verify_mac2(&msg, 132, &src, now));
        let mut mac1 = [0u8; 16];
        mac1.copy_from_slice(&msg[116..132]);
        let reply = checker.create_reply(77, &mac1, &src, now);
        assert_eq!(reply.receiver, 77);
        generator.consume_reply(&reply, now).unwrap();
        // A replayed reply is refused.
        assert_eq!(generator.consume_reply(&reply, now), Err(CookieError::Undecryptable));
        generator.stamp(&mut msg, 116, 132, now);
        assert!(checker.verify_mac1(&msg, 116));
        assert!(checker.verify_mac2(&msg, 132, &src, now));
        // Bound to the source address and port.
        let other: SocketAddr = "192.0.2.1:51821".parse().unwrap();
        assert!(!checker.verify_mac2(&msg, 132, &other, now));
        // v4-mapped v6 is the same source as v4.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:51820".parse().unwrap();
        assert!(checker.verify_mac2(&msg, 132, &mapped, now));
        // The secret rotates after two minutes, invalidating old cookies.
        assert!(!checker.verify_mac2(&msg, 132, &src, now + COOKIE_REFRESH_TIME));
        // Our own cookie expires too: no mac2 after it.
        generator.stamp(&mut msg, 116, 132, now + COOKIE_REFRESH_TIME);
        assert_eq!(&msg[132..148], &[0u8; 16]);
        // A tampered mac1 fails.
        msg[0] ^= 1;
        assert!(!checker.verify_mac1(&msg, 116));
    }
}
