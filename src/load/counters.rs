//! The far ends' counters: the sink behind the gateway (inner packets per flow, their order)
//! and the peers' receiving end (the gateway's transport datagrams per peer, every k-th one
//! opened to prove it authentic).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use super::traffic::{parse_udp4, Stamp, IPV4_HEADER_LEN, UDP_HEADER_LEN};
use crate::constants::AEAD_TAG_LEN;
use crate::noise::messages::{TransportHeader, TRANSPORT_HEADER_LEN};
use crate::session::Keypair;

/// Seconds from the first arrival to the last (0 before two).
fn span(first: Option<Instant>, last: Option<Instant>) -> f64 {
    match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

/// What arrived at one end, per flow.
#[derive(Default)]
pub struct FlowStats {
    pub packets: u64,
    /// Inner IP bytes (payload and the IPv4 and UDP headers).
    pub inner_bytes: u64,
    /// Packets that came after a later one of their flow.
    pub reordered: u64,
    /// Payloads without our stamp.
    pub foreign: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    next_seq: HashMap<u32, u64>,
}

impl FlowStats {
    /// Counts one UDP payload as the sink's socket delivered it.
    pub fn count_payload(&mut self, payload: &[u8], now: Instant) {
        let Some(stamp) = Stamp::parse(payload) else {
            self.foreign += 1;
            return;
        };
        self.packets += 1;
        self.inner_bytes += (payload.len() + IPV4_HEADER_LEN + UDP_HEADER_LEN) as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
        let next = self.next_seq.entry(stamp.flow).or_insert(0);
        if stamp.seq < *next {
            self.reordered += 1;
        } else {
            *next = stamp.seq.saturating_add(1);
        }
    }

    /// Counts one whole inner packet (as a TUN would hand it over).
    pub fn count_packet(&mut self, packet: &[u8], now: Instant) {
        match parse_udp4(packet) {
            Some((_, _, payload)) => self.count_payload(payload, now),
            None => self.foreign += 1,
        }
    }

    pub fn flows(&self) -> usize {
        self.next_seq.len()
    }

    /// Seconds from the first packet to the last.
    pub fn span(&self) -> f64 {
        span(self.first, self.last)
    }
}

/// The peers' receiving end of a download.
pub struct DownloadCounter {
    by_index: HashMap<u32, usize>,
    keypairs: Vec<Arc<Keypair>>,
    addresses: Vec<Ipv4Addr>,
    verify_every: u64,
    pub per_peer: Vec<u64>,
    /// Transport datagrams with data, and their padded plaintext bytes.
    pub datagrams: u64,
    pub plaintext_bytes: u64,
    /// Opened and found to be ours (authentic, for that peer's address, stamped).
    pub verified: u64,
    /// Opened and found wrong: not authentic, or not what that peer should get.
    pub failed: u64,
    pub keepalives: u64,
    /// Datagrams for no session of ours, and other message types.
    pub strangers: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl DownloadCounter {
    /// `peers`: each peer's (local index, keypair, inner address). Every `verify_every`-th
    /// datagram of a peer is opened (0: none).
    pub fn new(peers: Vec<(u32, Arc<Keypair>, Ipv4Addr)>, verify_every: u64) -> Self {
        let by_index = peers.iter().enumerate().map(|(n, (index, _, _))| (*index, n)).collect();
        let count = peers.len();
        let (keypairs, addresses) = peers.into_iter().map(|(_, k, a)| (k, a)).unzip();
        DownloadCounter {
            by_index,
            keypairs,
            addresses,
            verify_every,
            per_peer: vec![0; count],
            datagrams: 0,
            plaintext_bytes: 0,
            verified: 0,
            failed: 0,
            keepalives: 0,
            strangers: 0,
            first: None,
            last: None,
        }
    }

    /// Counts one datagram from the gateway (opened in place when its turn comes).
    pub fn count(&mut self, datagram: &mut [u8], now: Instant) {
        let Ok(header) = TransportHeader::parse(datagram) else {
            self.strangers += 1;
            return;
        };
        let Some(&peer) = self.by_index.get(&header.receiver) else {
            self.strangers += 1;
            return;
        };
        let plaintext = datagram.len() - TRANSPORT_HEADER_LEN - AEAD_TAG_LEN;
        if plaintext == 0 {
            self.keepalives += 1;
            return;
        }
        self.datagrams += 1;
        self.plaintext_bytes += plaintext as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
        let nth = self.per_peer[peer];
        self.per_peer[peer] += 1;
        if self.verify_every > 0 && nth.is_multiple_of(self.verify_every) {
            if self.is_authentic_for(peer, datagram, now) {
                self.verified += 1;
            } else {
                self.failed += 1;
            }
        }
    }

    fn is_authentic_for(&self, peer: usize, datagram: &mut [u8], now: Instant) -> bool {
        let Ok((_, len)) = self.keypairs[peer].decrypt(datagram, now) else { return false };
        let inner = &datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        matches!(parse_udp4(inner), Some((_, dst, payload)) if *dst.ip() == self.addresses[peer] && Stamp::parse(payload).is_some())
    }

    /// Peers that got at least one datagram.
    pub fn peers_reached(&self) -> usize {
        self.per_peer.iter().filter(|&&n| n > 0).count()
    }

    pub fn span(&self) -> f64 {
        span(self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::traffic::build_udp4;
    use crate::load::INNER_MTU;
    use crate::noise::SessionKeys;
    use std::net::SocketAddrV4;

    #[test]
    fn flows_count_order_and_bytes() {
        let mut s = FlowStats::default();
        let now = Instant::now();
        let stamp = |flow, seq| {
            let mut p = [0u8; 36];
            let mut st = [0u8; 16];
            Stamp { flow, seq }.write(&mut st);
            p[..16].copy_from_slice(&st);
            p
        };
        for (flow, seq) in [(1, 0), (1, 1), (2, 0), (1, 3), (1, 2), (2, 1)] {
            s.count_payload(&stamp(flow, seq), now);
        }
        s.count_payload(b"not ours", now);
        assert_eq!((s.packets, s.reordered, s.foreign, s.flows()), (6, 1, 1, 2));
        // The last sequence number a stamp can carry (found by the fuzzer: it overflowed).
        s.count_payload(&stamp(3, u64::MAX), now);
        s.count_payload(&stamp(3, u64::MAX), now);
        assert_eq!((s.packets, s.reordered), (8, 1), "a repeat of the last is not counted twice");
        assert_eq!(s.inner_bytes, 8 * 64);
    }

    fn session(now: Instant) -> (Arc<Keypair>, Keypair) {
        let ours = SessionKeys { local_index: 5, remote_index: 6, send: [1; 32], recv: [2; 32], is_initiator: true };
        let gw = SessionKeys { local_index: 6, remote_index: 5, send: [2; 32], recv: [1; 32], is_initiator: false };
        (Arc::new(Keypair::new(&ours, now)), Keypair::new(&gw, now))
    }

    #[test]
    fn every_kth_datagram_is_opened_and_forgeries_are_caught() {
        let now = Instant::now();
        let (ours, gw) = session(now);
        let me = Ipv4Addr::new(10, 0, 0, 2);
        let mut c = DownloadCounter::new(vec![(5, ours, me)], 2);
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 9);
        let sealed = |to: Ipv4Addr, seq: u64| {
            let mut buf = vec![0u8; 16 + 64 + 16];
            let len = build_udp4(&mut buf[16..], from, SocketAddrV4::new(to, 7), 64, Stamp { flow: 0, seq });
            let n = gw.seal_padded(seq, &mut buf, len, INNER_MTU).unwrap();
            buf.truncate(n);
            buf
        };
        for seq in 0..4 {
            c.count(&mut sealed(me, seq), now);
        }
        assert_eq!((c.datagrams, c.verified, c.failed), (4, 2, 0));
        // Opened and wrong: flipped bits, or a packet for another address.
        let mut bad = sealed(me, 4);
        bad[40] ^= 1;
        c.count(&mut bad, now);
        c.count(&mut sealed(me, 5), now);
        c.count(&mut sealed(Ipv4Addr::new(10, 0, 0, 3), 6), now);
        assert_eq!((c.datagrams, c.verified, c.failed), (7, 2, 2));
        // Keepalives and strangers are told apart from data.
        let mut keepalive = vec![0u8; 32];
        gw.seal_padded(7, &mut keepalive, 0, INNER_MTU).unwrap();
        c.count(&mut keepalive, now);
        let mut stranger = sealed(me, 8);
        stranger[4] = 99;
        c.count(&mut stranger, now);
        c.count(&mut [1, 0, 0, 0], now);
        assert_eq!((c.keepalives, c.strangers, c.datagrams, c.peers_reached()), (1, 2, 7, 1));
    }
}
