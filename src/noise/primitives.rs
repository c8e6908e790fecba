//! The paper's HASH, MAC, HMAC, KDF_n and AEAD, on BLAKE2s and ChaCha20-Poly1305.

use blake2::digest::consts::{U10, U16};
use blake2::digest::core_api::{Block, Buffer, UpdateCore, VariableOutputCore};
use blake2::digest::Output;
use blake2::digest::{FixedOutput, KeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Blake2sVarCore, Digest};
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

/// MAC(key, ·) for a public key used on every message, such as a device's mac1 key: the key's
/// block is compressed once, here, instead of once per message (a third of checking an
/// initiation's mac1; `cargo bench --bench crypto -- cookie`). The precomputed state is not
/// wiped on drop, so this is for keys that are not secret.
#[derive(Clone)]
pub struct PublicKeyedMac {
    key: [u8; 32],
    after_key: Blake2sVarCore,
}

impl PublicKeyedMac {
    pub fn new(key: &[u8; 32]) -> Self {
        let mut after_key = Blake2sVarCore::new_with_params(&[], &[], key.len(), 16);
        let mut block = Block::<Blake2sVarCore>::default();
        block[..key.len()].copy_from_slice(key);
        after_key.update_blocks(std::slice::from_ref(&block));
        PublicKeyedMac { key: *key, after_key }
    }

    /// The same as `mac(key, &[msg])`.
    pub fn mac(&self, msg: &[u8]) -> [u8; 16] {
        if msg.is_empty() {
            // Then the key's block is the last one, compressed as such.
            return mac(&self.key, &[msg]);
        }
        let mut core = self.after_key.clone();
        let mut rest = Buffer::<Blake2sVarCore>::default();
        rest.digest_blocks(msg, |blocks| core.update_blocks(blocks));
        let mut full = Output::<Blake2sVarCore>::default();
        core.finalize_variable_core(&mut rest, &mut full);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }
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
    seal_with(key, nonce(counter), plaintext, aad, out);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error("AEAD authentication failed")]
pub struct AeadError;

/// Opens ciphertext || tag into `out` (ciphertext.len() - 16 bytes). Err on a bad tag.
pub fn aead_open(key: &[u8; 32], counter: u64, ciphertext: &[u8], aad: &[u8], out: &mut [u8]) -> Result<(), AeadError> {
    open_with(key, nonce(counter), ciphertext, aad, out)
}

/// ChaCha20-Poly1305 with a whole 12-byte nonce, the primitive under `aead_seal` (whose nonce
/// is WireGuard's counter): for known answers from vectors with any nonce.
pub fn aead_seal_nonce(key: &[u8; 32], nonce: &[u8; 12], plaintext: &[u8], aad: &[u8], out: &mut [u8]) {
    seal_with(key, Nonce::assume_unique_for_key(*nonce), plaintext, aad, out);
}

/// Opens what `aead_seal_nonce` sealed.
pub fn aead_open_nonce(
    key: &[u8; 32],
    nonce: &[u8; 12],
    ciphertext: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> Result<(), AeadError> {
    open_with(key, Nonce::assume_unique_for_key(*nonce), ciphertext, aad, out)
}

/// XAEAD(key, nonce, plaintext, aad) (XChaCha20-Poly1305, cookie replies) writing plaintext ||
/// tag into `out`. HChaCha20 of the nonce's first 16 bytes gives a one-message key for
/// ChaCha20-Poly1305 with the last 8 as its nonce: ring's AEAD then costs a fraction of the
/// generic XChaCha20Poly1305 on 16 bytes, which a flood's cookie replies multiply
/// (`cargo bench --bench crypto -- cookie`).
pub fn xaead_seal(key: &[u8; 32], nonce: &[u8; 24], plaintext: &[u8], aad: &[u8], out: &mut [u8]) {
    let (mut subkey, inner) = xchacha_split(key, nonce);
    seal_with(&subkey, inner, plaintext, aad, out);
    subkey.zeroize();
}

/// Opens an XAEAD ciphertext || tag into `out` (ciphertext.len() - 16 bytes). Err on a bad tag.
pub fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ciphertext: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> Result<(), AeadError> {
    let (mut subkey, inner) = xchacha_split(key, nonce);
    let opened = open_with(&subkey, inner, ciphertext, aad, out);
    subkey.zeroize();
    opened
}

/// The ChaCha20-Poly1305 key and nonce an XChaCha20-Poly1305 key and nonce stand for.
fn xchacha_split(key: &[u8; 32], nonce: &[u8; 24]) -> ([u8; 32], Nonce) {
    let mut head = [0u8; 16];
    head.copy_from_slice(&nonce[..16]);
    let mut derived = chacha20::hchacha::<U10>(key.into(), &head.into());
    let mut subkey = [0u8; 32];
    subkey.copy_from_slice(&derived);
    derived.zeroize();
    let mut inner = [0u8; 12];
    inner[4..].copy_from_slice(&nonce[16..]);
    (subkey, Nonce::assume_unique_for_key(inner))
}

fn seal_with(key: &[u8; 32], nonce: Nonce, plaintext: &[u8], aad: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), plaintext.len() + AEAD_TAG_LEN);
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    // Sealing only fails for inputs longer than ChaCha20's 256 GiB limit.
    let tag = aead_key(key).seal_in_place_separate_tag(nonce, Aad::from(aad), body).unwrap_or_else(|_| unreachable!());
    tag_out.copy_from_slice(tag.as_ref());
}

fn open_with(key: &[u8; 32], nonce: Nonce, ciphertext: &[u8], aad: &[u8], out: &mut [u8]) -> Result<(), AeadError> {
    let mut buf = ciphertext.to_vec();
    let opened = aead_key(key).open_in_place(nonce, Aad::from(aad), &mut buf).map(|plain| out.copy_from_slice(plain));
    buf.zeroize();
    opened.map_err(|_| AeadError)
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

    #[test]
    fn public_keyed_mac_equals_mac_at_every_length() {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let keyed = PublicKeyedMac::new(&key);
        let mut msg = vec![0u8; 300];
        rand::thread_rng().fill_bytes(&mut msg);
        // Around every block boundary (64, 128, 192, 256), and none.
        for len in 0..msg.len() {
            assert_eq!(keyed.mac(&msg[..len]), mac(&key, &[&msg[..len]]), "length {len}");
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn xaead_known_answer() {
        // draft-arciszewski-xchacha-03, A.3.1 (also in the chacha20poly1305 crate's tests).
        let key: [u8; 32] =
            unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f").try_into().unwrap();
        let nonce: [u8; 24] = unhex("404142434445464748494a4b4c4d4e4f5051525354555657").try_into().unwrap();
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let expected = unhex(concat!(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216",
            "cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e",
            "c0875924c1c7987947deafd8780acf49"
        ));
        let mut sealed = vec![0u8; plaintext.len() + 16];
        xaead_seal(&key, &nonce, plaintext, &aad, &mut sealed);
        assert_eq!(sealed, expected);
        let mut opened = vec![0u8; plaintext.len()];
        xaead_open(&key, &nonce, &sealed, &aad, &mut opened).unwrap();
        assert_eq!(&opened[..], &plaintext[..]);
        sealed[3] ^= 1;
        assert_eq!(xaead_open(&key, &nonce, &sealed, &aad, &mut opened), Err(AeadError));
    }

    #[test]
    fn xaead_agrees_with_rustcrypto_on_random_input() {
        use chacha20poly1305::aead::{Aead, KeyInit as _, Payload};
        use rand::{Rng, RngCore};
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let (mut key, mut nonce) = ([0u8; 32], [0u8; 24]);
            rng.fill_bytes(&mut key);
            rng.fill_bytes(&mut nonce);
            let mut plaintext = vec![0u8; rng.gen_range(0..100)];
            let mut aad = vec![0u8; rng.gen_range(0..40)];
            rng.fill_bytes(&mut plaintext);
            rng.fill_bytes(&mut aad);
            let theirs = chacha20poly1305::XChaCha20Poly1305::new((&key).into())
                .encrypt((&nonce).into(), Payload { msg: &plaintext, aad: &aad })
                .unwrap();
            let mut ours = vec![0u8; plaintext.len() + 16];
            xaead_seal(&key, &nonce, &plaintext, &aad, &mut ours);
            assert_eq!(ours, theirs);
        }
    }
}
