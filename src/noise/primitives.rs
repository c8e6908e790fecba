//! The paper's HASH, MAC, HMAC, KDF_n and AEAD, on BLAKE2s and ChaCha20-Poly1305.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use hmac::SimpleHmac;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

use crate::constants::AEAD_TAG_LEN;

pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// Keyed BLAKE2s with a 16-byte output (the paper's MAC).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // A 32-byte or 16-byte key is always accepted by BLAKE2s.
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// KDF_n(key, input) for n = 1..3, as in the paper (HKDF with HMAC-BLAKE2s).
pub fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [[u8; 32]; N] {
    let mut t0 = hmac(key, &[input]);
    let mut out = [[0u8; 32]; N];
    let mut prev: Option<[u8; 32]> = None;
    for (i, slot) in out.iter_mut().enumerate() {
        let counter = [i as u8 + 1];
        let t = match prev {
            None => hmac(&t0, &[&counter]),
            Some(p) => hmac(&t0, &[&p, &counter]),
        };
        *slot = t;
        prev = Some(t);
    }
    t0.zeroize();
    if let Some(p) = prev.as_mut() {
        p.zeroize();
    }
    out
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always a valid ChaCha20-Poly1305 key.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap_or_else(|_| unreachable!()))
}

pub fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// AEAD(key, counter, plaintext, aad) writing plaintext || tag into `out`.
pub fn aead_seal(key: &[u8; 32], counter: u64, plaintext: &[u8], aad: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), plaintext.len() + AEAD_TAG_LEN);
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    // Sealing only fails for inputs longer than ChaCha20's 256 GiB limit.
    let tag = aead_key(key)
        .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), body)
        .unwrap_or_else(|_| unreachable!());
    tag_out.copy_from_slice(tag.as_ref());
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error("AEAD authentication failed")]
pub struct AeadError;

/// Opens ciphertext || tag into `out` (ciphertext.len() - 16 bytes). Err on a bad tag.
pub fn aead_open(key: &[u8; 32], counter: u64, ciphertext: &[u8], aad: &[u8], out: &mut [u8]) -> Result<(), AeadError> {
    let mut buf = ciphertext.to_vec();
    let plain = aead_key(key).open_in_place(nonce(counter), Aad::from(aad), &mut buf).map_err(|_| AeadError)?;
    out.copy_from_slice(plain);
    buf.zeroize();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake2s_known_answer() {
        // RFC 7693 appendix B: BLAKE2s-256("abc").
        let h = hash(&[b"abc"]);
        assert_eq!(h[..8], [0x50, 0x8C, 0x5E, 0x8C, 0x32, 0x7C, 0x14, 0xE2]);
    }

    #[test]
    fn aead_roundtrip_and_tamper() {
        let key = [7u8; 32];
        let mut out = [0u8; 5 + 16];
        aead_seal(&key, 3, b"hello", b"ad", &mut out);
        let mut plain = [0u8; 5];
        assert!(aead_open(&key, 3, &out, b"ad", &mut plain).is_ok());
        assert_eq!(&plain, b"hello");
        assert!(aead_open(&key, 4, &out, b"ad", &mut plain).is_err());
        out[0] ^= 1;
        assert!(aead_open(&key, 3, &out, b"ad", &mut plain).is_err());
    }
}
