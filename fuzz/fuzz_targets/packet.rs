//! Every datagram a peer (or anyone) can send: classification, each message parser, the
//! workers' handshake gate (mac1, and mac2 with the cookie reply under load), the inner IP
//! header parser and the ICMP error built from it.
#![no_main]
use std::sync::LazyLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wgturbo::dataplane::gate::{check_mac1, cookie_unless_mac2};
use wgturbo::dataplane::packet::ip;
use wgturbo::dataplane::shared::HandshakeCounters;
use wgturbo::keys::PrivateKey;
use wgturbo::noise::{CookieChecker, CookieReply, Initiation, Packet, Response, TransportHeader};

static CHECKER: LazyLock<CookieChecker> = LazyLock::new(|| CookieChecker::new(&PrivateKey::generate().public_key()));

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::parse(data) {
        match p {
            Packet::Initiation(i) => assert_eq!(&i.to_bytes()[..], data),
            Packet::Response(r) => assert_eq!(&r.to_bytes()[..], data),
            Packet::CookieReply(c) => assert_eq!(&c.to_bytes()[..], data),
            Packet::Transport { ciphertext, .. } => assert_eq!(ciphertext.len() + 16, data.len()),
        }
    }
    let _ = Initiation::parse(data);
    let _ = Response::parse(data);
    let _ = CookieReply::parse(data);
    let _ = TransportHeader::parse(data);
    let counters = HandshakeCounters::default();
    let _ = check_mac1(&CHECKER, &counters, data);
    if let Some(reply) = cookie_unless_mac2(&CHECKER, data, &"192.0.2.1:1".parse().unwrap(), Instant::now()) {
        assert!(CookieReply::parse(&reply).is_ok());
    }
    if let Some(h) = ip::parse(data) {
        assert!(h.total_len <= data.len());
        if let Some(icmp) = ip::unreachable(data) {
            assert!(ip::parse(&icmp).is_some());
        }
    }
});
