//! Upload traffic: each active peer's inner packets to the sink, sealed with that peer's
//! keypair and laid into a send batch as trains of one peer's back-to-back datagrams (GSO
//! where sizes allow), the way GRO on a gateway's NIC would have built them. The peers take
//! turns (round robin) and each spreads its packets over its flows.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use super::traffic::{build_udp4, PacketSize, SizeSchedule, Stamp};
use super::INNER_MTU;
use crate::constants::AEAD_TAG_LEN;
use crate::io::SendBatch;
use crate::noise::messages::TRANSPORT_HEADER_LEN;
use crate::session::Keypair;

/// The first inner UDP source port of a peer's flows.
pub const FLOW_PORT_BASE: u16 = 40_000;

/// One active peer: its keypair and inner address.
pub struct Sender {
    pub keypair: Arc<Keypair>,
    pub address: Ipv4Addr,
}

pub struct Uploader {
    senders: Vec<Sender>,
    sink: SocketAddrV4,
    gateway: SocketAddr,
    sizes: SizeSchedule,
    largest: usize,
    flows_per_peer: u32,
    /// Datagrams of one peer in a row: the longest train.
    burst: usize,
    next_peer: usize,
    /// The next flow of each peer, and the next sequence number of each flow.
    next_flow: Vec<u32>,
    seqs: Vec<u64>,
    /// Datagrams sealed so far, and those that could not be (keypair exhausted or expired).
    pub sealed: u64,
    pub refused: u64,
}

impl Uploader {
    pub fn new(
        senders: Vec<Sender>,
        sink: SocketAddrV4,
        gateway: SocketAddr,
        size: PacketSize,
        flows_per_peer: u32,
        burst: usize,
    ) -> Self {
        let flows_per_peer = flows_per_peer.max(1);
        let peers = senders.len();
        Uploader {
            senders,
            sink,
            gateway,
            sizes: size.schedule(),
            largest: size.largest(),
            flows_per_peer,
            burst: burst.max(1),
            next_peer: 0,
            next_flow: vec![0; peers],
            seqs: vec![0; peers * flows_per_peer as usize],
            sealed: 0,
            refused: 0,
        }
    }

    /// Bytes one datagram takes at most on the wire.
    fn largest_datagram(&self) -> usize {
        TRANSPORT_HEADER_LEN + self.largest.div_ceil(16) * 16 + AEAD_TAG_LEN
    }

    /// Appends up to `max` sealed datagrams to `batch`, a train per peer's turn; returns how
    /// many. Stops early when the batch is full.
    pub fn fill(&mut self, batch: &mut SendBatch, max: usize, now: Instant) -> usize {
        let mut added = 0;
        if self.senders.is_empty() {
            return 0;
        }
        let room = self.largest_datagram();
        while added < max && batch.has_room(room) {
            let peer = self.next_peer;
            self.next_peer = (self.next_peer + 1) % self.senders.len();
            let train = self.burst.min(max - added);
            for _ in 0..train {
                if !batch.has_room(room) {
                    break;
                }
                if self.seal_one(peer, batch, now) {
                    added += 1;
                }
            }
            batch.close_group();
        }
        added
    }

    fn seal_one(&mut self, peer: usize, batch: &mut SendBatch, now: Instant) -> bool {
        let size = self.sizes.next().unwrap_or(self.largest);
        let flow_in_peer = self.next_flow[peer];
        self.next_flow[peer] = (flow_in_peer + 1) % self.flows_per_peer;
        let flow = peer as u32 * self.flows_per_peer + flow_in_peer;
        let seq = &mut self.seqs[flow as usize];
        let stamp = Stamp { flow, seq: *seq };
        *seq += 1;
        let sender = &self.senders[peer];
        let Some(counter) = sender.keypair.reserve_counters(1, now) else {
            self.refused += 1;
            return false;
        };
        let src = SocketAddrV4::new(sender.address, FLOW_PORT_BASE.wrapping_add(flow_in_peer as u16));
        let wire = TRANSPORT_HEADER_LEN + size.div_ceil(16) * 16 + AEAD_TAG_LEN;
        let (_, space) = batch.reserve(wire);
        let len = build_udp4(&mut space[TRANSPORT_HEADER_LEN..], src, self.sink, size, stamp);
        match sender.keypair.seal_padded(counter, space, len, INNER_MTU) {
            Ok(total) => {
                batch.commit(total, self.gateway);
                self.sealed += 1;
                true
            }
            Err(_) => {
                self.refused += 1;
                false
            }
        }
    }
}

/// A keepalive (an empty transport message) from `keypair`: what an initiator sends when it
/// has no data, so the responder may use the new session.
pub fn keepalive(keypair: &Keypair, now: Instant) -> Option<Vec<u8>> {
    let counter = keypair.reserve_counters(1, now)?;
    let mut msg = vec![0u8; TRANSPORT_HEADER_LEN + AEAD_TAG_LEN];
    let len = keypair.seal_padded(counter, &mut msg, 0, INNER_MTU).ok()?;
    msg.truncate(len);
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::traffic::parse_udp4;
    use crate::noise::SessionKeys;

    fn keypairs() -> (Arc<Keypair>, Keypair) {
        let now = Instant::now();
        let ours = SessionKeys { local_index: 1, remote_index: 2, send: [7; 32], recv: [8; 32], is_initiator: true };
        let theirs = SessionKeys { local_index: 2, remote_index: 1, send: [8; 32], recv: [7; 32], is_initiator: false };
        (Arc::new(Keypair::new(&ours, now)), Keypair::new(&theirs, now))
    }

    fn uploader(peers: usize, size: PacketSize, burst: usize) -> (Uploader, Vec<Keypair>) {
        let mut theirs = Vec::new();
        let senders = (0..peers)
            .map(|i| {
                let (ours, gw) = keypairs();
                theirs.push(gw);
                Sender { keypair: ours, address: Ipv4Addr::new(10, 0, 0, 2 + i as u8) }
            })
            .collect();
        let sink = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 9);
        (Uploader::new(senders, sink, "192.0.2.1:51820".parse().unwrap(), size, 2, burst), theirs)
    }

    #[test]
    fn trains_hold_one_peers_back_to_back_datagrams_and_open_at_the_gateway() {
        let (mut up, theirs) = uploader(3, PacketSize::Fixed(64), 4);
        let mut batch = SendBatch::new(1, 1024, true);
        let now = Instant::now();
        assert_eq!(up.fill(&mut batch, 24, now), 24);
        let groups = batch.groups().to_vec();
        assert_eq!(groups.len(), 6, "a train per turn: 3 peers x 2 turns");
        assert!(groups.iter().all(|g| g.count == 4 && g.segment == 16 + 64 + 16));
        let mut seen = Vec::new();
        for (turn, g) in groups.iter().enumerate() {
            let peer = turn % 3;
            for d in batch.datagrams(g) {
                let mut d = d.to_vec();
                let (_, len) = theirs[peer].open(&mut d, now).expect("sealed with this peer's keypair");
                let (src, dst, payload) = parse_udp4(&d[16..16 + len]).unwrap();
                assert_eq!(*src.ip(), Ipv4Addr::new(10, 0, 0, 2 + peer as u8));
                assert_eq!(dst.port(), 9);
                seen.push(crate::load::Stamp::parse(payload).unwrap());
            }
        }
        // Peer 0's flows 0 and 1 alternate; each flow counts up from 0.
        let flow0: Vec<u64> = seen.iter().filter(|s| s.flow == 0).map(|s| s.seq).collect();
        assert_eq!(flow0, vec![0, 1, 2, 3]);
        assert_eq!(seen.iter().filter(|s| s.flow == 5).count(), 4, "peer 2's second flow");
        assert_eq!(up.sealed, 24);
    }

    #[test]
    fn imix_trains_break_where_the_size_changes_and_the_batch_limit_holds() {
        let (mut up, _) = uploader(1, PacketSize::Imix, 12);
        let mut batch = SendBatch::new(1, 1024, true);
        assert_eq!(up.fill(&mut batch, 12, Instant::now()), 12);
        let sizes: Vec<usize> = batch.groups().iter().flat_map(|g| batch.datagrams(g).map(|d| d.len())).collect();
        assert_eq!(sizes.iter().filter(|&&n| n == 96).count(), 7);
        assert_eq!(sizes.iter().filter(|&&n| n == 608).count(), 4);
        assert_eq!(sizes.iter().filter(|&&n| n == 1452).count(), 1);
        // A batch holds what its arena holds: 64 KiB of 1452-byte datagrams is 45.
        let (mut big, _) = uploader(1, PacketSize::Fixed(1420), 64);
        let mut batch = SendBatch::new(1, 1024, true);
        assert_eq!(big.fill(&mut batch, 1000, Instant::now()), 45);
    }

    #[test]
    fn a_keepalive_opens_to_nothing() {
        let (ours, theirs) = keypairs();
        let now = Instant::now();
        let mut k = keepalive(&ours, now).unwrap();
        assert_eq!(k.len(), 32);
        assert_eq!(theirs.open(&mut k, now).unwrap(), (0, 0));
    }
}
