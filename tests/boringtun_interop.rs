//! In-process interop with boringtun 0.7.1 (Cloudflare's WireGuard): full handshakes both ways,
//! transport data of several sizes both ways, preshared keys, keepalives and cookie replies.
//! boringtun is an independent implementation, so agreement here means our bytes are WireGuard's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use wgturbo::keys::{PresharedKey, PrivateKey};
use wgturbo::noise::messages::{padded_len, TRANSPORT_HEADER_LEN};
use wgturbo::noise::{
    consume_initiation, CookieChecker, Handshake, Initiation, Packet, Response, StaticIdentity, Tai64N,
};
use wgturbo::session::Keypair;

const THEIR_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

/// Our side of the tunnel, built from the core's public API only.
struct Ours {
    id: StaticIdentity,
    handshake: Handshake,
    checker: CookieChecker,
    keypair: Option<Keypair>,
}

struct Theirs {
    tunn: Tunn,
}

fn pair(psk: Option<[u8; 32]>, limiter: Option<u64>) -> (Ours, Theirs) {
    let our_key = PrivateKey::generate();
    let their_key = PrivateKey::generate();
    let id = StaticIdentity::new(our_key);
    let their_public = their_key.public_key();
    let psk_ours = psk.map(PresharedKey::from_bytes).unwrap_or_default();
    let handshake = Handshake::new(&id, their_public, psk_ours);
    let checker = CookieChecker::new(&id.public);
    let their_secret = x25519::StaticSecret::from(*their_key.as_bytes());
    let their_pub_dalek = x25519::PublicKey::from(&their_secret);
    let limiter = limiter.map(|l| Arc::new(RateLimiter::new(&their_pub_dalek, l)));
    let tunn = Tunn::new(their_secret, x25519::PublicKey::from(*id.public.as_bytes()), psk, None, 1, limiter);
    (Ours { id, handshake, checker, keypair: None }, Theirs { tunn })
}

/// An IPv4 packet of exactly `len` bytes (boringtun checks the header's total length).
fn ipv4_packet(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 2]);
    p[16..20].copy_from_slice(&[10, 0, 0, 1]);
    p
}

fn ipv6_packet(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len];
    p[0] = 0x60;
    p[1..4].fill(0);
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p
}

fn network(r: TunnResult<'_>) -> Vec<u8> {
    match r {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("expected a datagram, got {}", describe(&other)),
    }
}

fn describe(r: &TunnResult<'_>) -> String {
    match r {
        TunnResult::Done => "Done".into(),
        TunnResult::Err(e) => format!("Err({e:?})"),
        TunnResult::WriteToNetwork(b) => format!("WriteToNetwork({} bytes)", b.len()),
        TunnResult::WriteToTunnelV4(b, _) => format!("WriteToTunnelV4({} bytes)", b.len()),
        TunnResult::WriteToTunnelV6(b, _) => format!("WriteToTunnelV6({} bytes)", b.len()),
    }
}

impl Ours {
    fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let kp = self.keypair.as_ref().expect("session");
        let padded = padded_len(plaintext.len(), 65535);
        let mut buf = vec![0u8; TRANSPORT_HEADER_LEN + padded + 16];
        buf[16..16 + plaintext.len()].copy_from_slice(plaintext);
        let counter = kp.reserve_counters(1, Instant::now()).unwrap();
        let n = kp.seal_padded(counter, &mut buf, plaintext.len(), 65535).unwrap();
        buf.truncate(n);
        buf
    }
    fn open(&self, mut datagram: Vec<u8>) -> Vec<u8> {
        let kp = self.keypair.as_ref().expect("session");
        let (_, len) = kp.open(&mut datagram, Instant::now()).expect("opens");
        datagram[16..16 + len].to_vec()
    }
    /// Responds to an initiation the way the device does: mac1, decrypt, find peer, respond.
    fn respond(&mut self, init: &[u8]) -> Vec<u8> {
        assert!(self.checker.verify_mac1(init, Initiation::MAC1_OFFSET), "mac1 of boringtun's initiation");
        let parsed = Initiation::parse(init).unwrap();
        let for_us = consume_initiation(&self.id, &parsed).unwrap();
        assert_eq!(&for_us.remote_static, self.handshake.remote_static());
        self.handshake.consume_initiation(for_us, Instant::now()).unwrap();
        let (resp, keys) = self.handshake.create_response(0x5555, Instant::now()).unwrap();
        self.keypair = Some(Keypair::new(&keys, Instant::now()));
        resp.to_vec()
    }
}

fn exchange_data(ours: &Ours, theirs: &mut Theirs) {
    let mut dst = vec![0u8; 70_000];
    for len in [20usize, 21, 64, 100, 1420, 1500, 8192] {
        for packet in [ipv4_packet(len, len as u8), if len >= 40 { ipv6_packet(len, 3) } else { ipv4_packet(len, 9) }] {
            // Ours to theirs.
            let sealed = ours.seal(&packet);
            assert_eq!(sealed.len(), 16 + padded_len(packet.len(), 65535) + 16);
            match theirs.tunn.decapsulate(Some(THEIR_ADDR), &sealed, &mut dst) {
                TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => assert_eq!(b, &packet[..]),
                other => panic!("boringtun did not accept our {len}-byte packet: {}", describe(&other)),
            }
            // Theirs to ours.
            let datagram = network(theirs.tunn.encapsulate(&packet, &mut dst));
            let opened = ours.open(datagram);
            assert_eq!(&opened[..packet.len()], &packet[..]);
            assert!(opened[packet.len()..].iter().all(|&b| b == 0), "padding is zeros");
        }
    }
    // Keepalives both ways: an empty plaintext, 32 bytes on the wire.
    let keepalive = ours.seal(&[]);
    assert_eq!(keepalive.len(), 32);
    assert!(matches!(theirs.tunn.decapsulate(Some(THEIR_ADDR), &keepalive, &mut dst), TunnResult::Done));
    let theirs_keepalive = network(theirs.tunn.encapsulate(&[], &mut dst));
    assert_eq!(theirs_keepalive.len(), 32);
    assert!(ours.open(theirs_keepalive).is_empty());
}

fn we_initiate(psk: Option<[u8; 32]>) {
    let (mut ours, mut theirs) = pair(psk, None);
    let mut dst = vec![0u8; 70_000];
    let init = ours.handshake.create_initiation(&ours.id, 0x1234, Tai64N::now(), Instant::now()).unwrap();
    let resp = network(theirs.tunn.decapsulate(Some(THEIR_ADDR), &init, &mut dst));
    assert_eq!(resp.len(), 92);
    assert!(matches!(Packet::parse(&resp).unwrap(), Packet::Response(_)));
    let keys = ours.handshake.consume_response(&ours.id, &Response::parse(&resp).unwrap()).unwrap();
    assert_eq!(keys.local_index, 0x1234);
    ours.keypair = Some(Keypair::new(&keys, Instant::now()));
    exchange_data(&ours, &mut theirs);
}

fn they_initiate(psk: Option<[u8; 32]>) {
    let (mut ours, mut theirs) = pair(psk, None);
    let mut dst = vec![0u8; 70_000];
    let init = network(theirs.tunn.format_handshake_initiation(&mut dst, false));
    assert_eq!(init.len(), 148);
    let resp = ours.respond(&init);
    // boringtun answers our response with a keepalive, which confirms the session for us.
    let keepalive = network(theirs.tunn.decapsulate(Some(THEIR_ADDR), &resp, &mut dst));
    assert!(ours.open(keepalive).is_empty());
    exchange_data(&ours, &mut theirs);
}

#[test]
fn wgturbo_initiates_without_psk() {
    we_initiate(None);
}

#[test]
fn wgturbo_initiates_with_psk() {
    we_initiate(Some([0x42; 32]));
}

#[test]
fn boringtun_initiates_without_psk() {
    they_initiate(None);
}

#[test]
fn boringtun_initiates_with_psk() {
    they_initiate(Some([0x17; 32]));
}

#[test]
fn mismatched_psk_fails_the_handshake() {
    let (mut ours, mut theirs) = pair(Some([1; 32]), None);
    ours.handshake.set_preshared_key(PresharedKey::from_bytes([2; 32]));
    let mut dst = vec![0u8; 2048];
    let init = ours.handshake.create_initiation(&ours.id, 9, Tai64N::now(), Instant::now()).unwrap();
    let resp = network(theirs.tunn.decapsulate(Some(THEIR_ADDR), &init, &mut dst));
    assert!(ours.handshake.consume_response(&ours.id, &Response::parse(&resp).unwrap()).is_err());
}

#[test]
fn boringtun_under_load_sends_a_cookie_we_honour() {
    // A limit of 0 puts boringtun's rate limiter permanently under load.
    let (mut ours, mut theirs) = pair(None, Some(0));
    let mut dst = vec![0u8; 2048];
    let now = Instant::now();
    let init = ours.handshake.create_initiation(&ours.id, 77, Tai64N::now(), now).unwrap();
    let reply = network(theirs.tunn.decapsulate(Some(THEIR_ADDR), &init, &mut dst));
    assert_eq!(reply.len(), 64, "expected a cookie reply");
    let Packet::CookieReply(cookie) = Packet::parse(&reply).unwrap() else { panic!("not a cookie reply") };
    assert_eq!(cookie.receiver, 77);
    ours.handshake.cookies.consume_reply(&cookie, now).unwrap();
    // The retry carries mac2 and is accepted.
    let init = ours.handshake.create_initiation(&ours.id, 78, Tai64N::now(), now).unwrap();
    assert_ne!(&init[132..148], &[0u8; 16]);
    let resp = network(theirs.tunn.decapsulate(Some(THEIR_ADDR), &init, &mut dst));
    assert_eq!(resp.len(), 92);
    let keys = ours.handshake.consume_response(&ours.id, &Response::parse(&resp).unwrap()).unwrap();
    ours.keypair = Some(Keypair::new(&keys, now));
    exchange_data(&ours, &mut theirs);
}

#[test]
fn we_send_boringtun_a_cookie_it_honours() {
    let (mut ours, mut theirs) = pair(None, None);
    let mut dst = vec![0u8; 2048];
    let now = Instant::now();
    let src = SocketAddr::new(THEIR_ADDR, 51820);
    let init = network(theirs.tunn.format_handshake_initiation(&mut dst, false));
    assert!(ours.checker.verify_mac1(&init, Initiation::MAC1_OFFSET));
    assert!(!ours.checker.verify_mac2(&init, Initiation::MAC2_OFFSET, &src, now));
    let parsed = Initiation::parse(&init).unwrap();
    let reply = ours.checker.create_reply(parsed.sender, &parsed.mac1, &src, now);
    assert!(matches!(theirs.tunn.decapsulate(Some(THEIR_ADDR), &reply.to_bytes(), &mut dst), TunnResult::Done));
    let init = network(theirs.tunn.format_handshake_initiation(&mut dst, true));
    assert!(
        ours.checker.verify_mac2(&init, Initiation::MAC2_OFFSET, &src, now),
        "boringtun's retry carries our cookie"
    );
    let resp = ours.respond(&init);
    let keepalive = network(theirs.tunn.decapsulate(Some(THEIR_ADDR), &resp, &mut dst));
    assert!(ours.open(keepalive).is_empty());
}

#[test]
fn replayed_boringtun_initiation_is_refused() {
    let (mut ours, mut theirs) = pair(None, None);
    let mut dst = vec![0u8; 2048];
    let init = network(theirs.tunn.format_handshake_initiation(&mut dst, false));
    ours.respond(&init);
    let parsed = Initiation::parse(&init).unwrap();
    let again = consume_initiation(&ours.id, &parsed).unwrap();
    let later = Instant::now() + std::time::Duration::from_secs(1);
    assert!(ours.handshake.consume_initiation(again, later).is_err());
}

#[test]
fn replayed_and_tampered_transport_is_refused() {
    let (mut ours, mut theirs) = pair(None, None);
    let mut dst = vec![0u8; 4096];
    let init = network(theirs.tunn.format_handshake_initiation(&mut dst, false));
    let resp = ours.respond(&init);
    let keepalive = network(theirs.tunn.decapsulate(Some(THEIR_ADDR), &resp, &mut dst));
    ours.open(keepalive);
    let datagram = network(theirs.tunn.encapsulate(&ipv4_packet(100, 1), &mut dst));
    let kp = ours.keypair.as_ref().unwrap();
    let mut tampered = datagram.clone();
    tampered[40] ^= 0x80;
    assert!(kp.open(&mut tampered, Instant::now()).is_err());
    assert!(kp.open(&mut datagram.clone(), Instant::now()).is_ok());
    assert!(kp.open(&mut datagram.clone(), Instant::now()).is_err(), "replay");
}
