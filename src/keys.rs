//! Curve25519 keys and preshared keys in WireGuard's base64 and hex forms.
#![forbid(unsafe_code)]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand::rngs::OsRng;
use rand::RngCore;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is not 44 characters of base64 encoding 32 bytes")]
    BadBase64,
    #[error("key is not 64 hex characters")]
    BadHex,
}

fn decode_base64(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    if s.len() != 44 || !s.ends_with('=') {
        return Err(KeyError::BadBase64);
    }
    let mut out = [0u8; 32];
    match BASE64.decode_slice(s, &mut out) {
        Ok(32) => Ok(out),
        _ => Err(KeyError::BadBase64),
    }
}

fn decode_hex(s: &str) -> Result<[u8; 32], KeyError> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(KeyError::BadHex);
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or(KeyError::BadHex)?;
        let lo = (pair[1] as char).to_digit(16).ok_or(KeyError::BadHex)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

fn encode_hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A Curve25519 private key, clamped as X25519 requires, wiped on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        Self::from_bytes(b)
    }
    /// Clamps the scalar as `wg genkey` and the kernel do.
    pub fn from_bytes(mut b: [u8; 32]) -> Self {
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        let k = PrivateKey(b);
        b.zeroize();
        k
    }
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(Self::from_bytes)
    }
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(Self::from_bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
    /// X25519(self, peer). Returns None for a low-order peer key (all-zero shared secret),
    /// which the protocol must reject.
    pub fn diffie_hellman(&self, public: &PublicKey) -> Option<[u8; 32]> {
        self.diffie_hellman_prepared(&PreparedPublic::new(*public))
    }

    /// As `diffie_hellman`, with the peer's point already lifted (`PreparedPublic`).
    ///
    /// Computed through the Edwards form where the peer's point has one: dalek multiplies
    /// Edwards points with its AVX2 backend where the CPU has it, while its Montgomery ladder
    /// is serial (73.5 against 91.2 us here, `perf/README.md`). The result's u-coordinate is the
    /// same for either lift of the point. A u on the twist has no Edwards form and takes the
    /// ladder. Both are constant-time in the scalar; the branch depends on the public point.
    pub fn diffie_hellman_prepared(&self, public: &PreparedPublic) -> Option<[u8; 32]> {
        let shared = match &public.edwards {
            Some(edwards) => edwards.mul_clamped(self.0).to_montgomery(),
            None => MontgomeryPoint(public.key.0).mul_clamped(self.0),
        };
        (shared.0 != [0u8; 32]).then_some(shared.0)
    }
}

/// A public key with its Edwards form worked out once. The lift costs an inversion and a
/// square root, about a sixth of a DH here, so a key used in more than one DH is prepared
/// once: the initiator's ephemeral (two DHs on each side of a handshake) and a peer's static
/// key (one in every handshake with it).
#[derive(Clone)]
pub struct PreparedPublic {
    key: PublicKey,
    /// None for a point on the twist (or u = -1): those take the Montgomery ladder.
    edwards: Option<EdwardsPoint>,
}

impl PreparedPublic {
    pub fn new(key: PublicKey) -> Self {
        PreparedPublic { key, edwards: MontgomeryPoint(key.0).to_edwards(0) }
    }
    pub fn key(&self) -> &PublicKey {
        &self.key
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A Curve25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(PublicKey)
    }
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(PublicKey)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// A 32-byte preshared key; all zeros means "none", as in the paper.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        PresharedKey(b)
    }
    pub fn from_bytes(b: [u8; 32]) -> Self {
        PresharedKey(b)
    }
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(PresharedKey)
    }
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(PresharedKey)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping_and_roundtrip() {
        let k = PrivateKey::generate();
        let b = k.as_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 128, 0);
        assert_eq!(b[31] & 64, 64);
        assert_eq!(PrivateKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(PrivateKey::from_hex(&k.to_hex()).unwrap(), k);
    }

    #[test]
    fn known_public_key_from_rfc7748() {
        // RFC 7748 section 6.1, Alice's key pair.
        let private = PrivateKey::from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        assert_eq!(private.public_key().to_hex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    }

    #[test]
    fn malformed_keys() {
        assert_eq!(PublicKey::from_base64("abc"), Err(KeyError::BadBase64));
        assert_eq!(PublicKey::from_base64(&"A".repeat(44)), Err(KeyError::BadBase64));
        assert_eq!(PublicKey::from_hex(&"g".repeat(64)), Err(KeyError::BadHex));
        assert_eq!(PublicKey::from_hex("00"), Err(KeyError::BadHex));
        assert!(format!("{:?}", PrivateKey::generate()).contains("redacted"));
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        b
    }

    /// RFC 7748 5.2 (scalar and u-coordinate, the second with its top bit set), the first
    /// step of 5.2's iteration, and 6.1's Diffie-Hellman.
    #[test]
    fn x25519_known_answers_from_rfc7748() {
        let cases = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
            (
                "0900000000000000000000000000000000000000000000000000000000000000",
                "0900000000000000000000000000000000000000000000000000000000000000",
                "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079",
            ),
            (
                "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
                "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
                "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
            ),
        ];
        for (k, u, out) in cases {
            let shared = PrivateKey(hex32(k)).diffie_hellman(&PublicKey(hex32(u)));
            assert_eq!(shared, Some(hex32(out)), "k={k}");
        }
    }

    /// The same as x25519-dalek's ladder for random points, half of them on the twist (which
    /// take the ladder here too) and half with the top bit set.
    #[test]
    fn x25519_matches_the_ladder_on_curve_and_twist() {
        use rand::RngCore;
        let (mut on_curve, mut twist) = (0, 0);
        for _ in 0..300 {
            let k = PrivateKey::generate();
            let mut u = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut u);
            let point = curve25519_dalek::montgomery::MontgomeryPoint(u);
            if point.to_edwards(0).is_some() {
                on_curve += 1;
            } else {
                twist += 1;
            }
            let ladder = x25519_dalek::StaticSecret::from(k.0).diffie_hellman(&x25519_dalek::PublicKey::from(u));
            assert_eq!(k.diffie_hellman(&PublicKey(u)), Some(ladder.to_bytes()));
        }
        assert!(on_curve > 50 && twist > 50, "both paths ran: {on_curve} on the curve, {twist} on the twist");
    }

    #[test]
    fn low_order_point_is_rejected() {
        let k = PrivateKey::generate();
        assert_eq!(k.diffie_hellman(&PublicKey([0; 32])), None);
    }
}
