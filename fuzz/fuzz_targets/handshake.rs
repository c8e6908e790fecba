//! Handshake messages against a real responder and initiator state: a valid initiation,
//! response and cookie reply from fixed keys with the fuzzer's bytes XORed in (so decryption,
//! timestamp and MAC failures are reached, not only the length checks), then the raw bytes.
//! Nothing may panic, and nothing forged may complete a handshake.
#![no_main]
use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wgturbo::keys::{PresharedKey, PrivateKey};
use wgturbo::noise::{
    consume_initiation, CookieChecker, Handshake, Initiation, Packet, Response, StaticIdentity, Tai64N,
};

fn xor(msg: &mut [u8], data: &[u8]) {
    for (m, d) in msg.iter_mut().zip(data) {
        *m ^= d;
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let a = StaticIdentity::new(PrivateKey::from_bytes([1; 32]));
    let b = StaticIdentity::new(PrivateKey::from_bytes([2; 32]));
    let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let mut ha = Handshake::new(&a, b.public, PresharedKey::default());
    let mut hb = Handshake::new(&b, a.public, PresharedKey::default());
    let checker = CookieChecker::new(&b.public);

    // Initiation A -> B, tampered.
    let Ok(mut init) = ha.create_initiation(&a, 1, Tai64N::now(), now) else { return };
    xor(&mut init, data);
    // Bytes 8..116 are the ephemeral key and the encrypted static key and timestamp.
    let crypto_tampered = data.get(8..116.min(data.len())).is_some_and(|d| d.iter().any(|&b| b != 0));
    let _ = checker.verify_mac1(&init, Initiation::MAC1_OFFSET);
    let _ = checker.verify_mac2(&init, Initiation::MAC2_OFFSET, &src, now);
    if let Ok(Packet::Initiation(i)) = Packet::parse(&init) {
        if let Ok(for_b) = consume_initiation(&b, &i) {
            let accepted = hb.consume_initiation(for_b, now).is_ok();
            // Tampering with the MACs or the sender index may pass; with the keys or the
            // encrypted parts it must not.
            assert!(!(accepted && crypto_tampered), "a forged initiation was accepted");
            if accepted {
                if let Ok((mut resp, _keys)) = hb.create_response(2, now) {
                    xor(&mut resp, data.get(init.len()..).unwrap_or(&[]));
                    if let Ok(Packet::Response(r)) = Packet::parse(&resp) {
                        let _ = ha.consume_response(&a, &r);
                    }
                    let _ = Response::parse(&resp);
                }
            }
        }
    }
    // A cookie reply for B's messages, tampered, and the raw bytes as every kind.
    let mut reply = checker.create_reply(1, &[7; 16], &src, now).to_bytes();
    xor(&mut reply, data);
    if let Ok(Packet::CookieReply(c)) = Packet::parse(&reply) {
        let _ = ha.cookies.consume_reply(&c, now);
    }
    match Packet::parse(data) {
        Ok(Packet::Initiation(i)) => {
            if let Ok(f) = consume_initiation(&b, &i) {
                let _ = hb.consume_initiation(f, now);
            }
        }
        Ok(Packet::Response(r)) => {
            let _ = ha.consume_response(&a, &r);
        }
        Ok(Packet::CookieReply(c)) => {
            let _ = ha.cookies.consume_reply(&c, now);
        }
        _ => {}
    }
});
