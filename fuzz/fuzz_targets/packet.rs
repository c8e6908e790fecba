//! Every datagram a peer (or anyone) can send: classification, each message parser, the inner
//! IP header parser and the ICMP error built from it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wgturbo::dataplane::ip;
use wgturbo::noise::{CookieReply, Initiation, Packet, Response, TransportHeader};

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
    if let Some(h) = ip::parse(data) {
        assert!(h.total_len <= data.len());
        if let Some(icmp) = ip::unreachable(data) {
            assert!(ip::parse(&icmp).is_some());
        }
    }
});
