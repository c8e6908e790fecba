//! Outbound: packets read from the TUN (TSO/USO super-packets when the TUN offloads are on) are
//! routed by destination, cut into segments, sealed in place in the send batch, and sent as
//! UDP GSO groups.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::Guard;

use tracing::{debug, info};

use super::packet::ip;
use super::packet::offload::{complete_checksum, GsoSplit};
use super::pool::CryptoPool;
use super::seal::Sealer;
use super::shared::{bump, DropCounters, PeerShared, Shared, WorkerMsg};
use crate::io::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN};
use crate::io::{SendBatch, TunWriteBatch, WorkerIo};
use crate::noise::messages::TRANSPORT_HEADER_LEN;
use crate::routing::AllowedIps;
use crate::session::{Keypair, Keypairs};

/// The send batch: chunks of `SEND_CHUNK` bytes (4 MiB in all) and messages (GSO groups, or
/// datagrams without GSO).
pub const SEND_CHUNKS: usize = 64;
pub const SEND_MAX_MESSAGES: usize = 2048;

/// What one round of TUN reads needs, loaded once per round.
pub struct TxRound<'a> {
    pub shared: &'a Shared,
    pub routing: &'a AllowedIps<Arc<PeerShared>>,
    pub now: Instant,
    pub stamp: u64,
    pub mtu: usize,
    pub vnet: bool,
    pub worker: usize,
    /// The worker's own drop counters.
    pub drops: &'a DropCounters,
}

/// Seals what is framed (here and on other workers), then sends what the batch holds; says
/// once when the kernel refused GSO.
pub fn flush(io: &mut dyn WorkerIo, batch: &mut SendBatch, sealer: &mut Sealer, pool: &CryptoPool, worker: usize) {
    sealer.finish(pool, batch);
    let had_gso = batch.gso_enabled();
    if let Err(e) = io.send_udp(batch) {
        debug!("worker {worker}: send failed: {e}");
    }
    if had_gso && !batch.gso_enabled() {
        info!("worker {worker}: UDP GSO refused by the kernel; falling back to one datagram per send");
    }
}

/// Where a TUN read's output goes: datagrams framed into the send batch (sealed by `sealer`
/// before they are sent), ICMP errors to the TUN.
pub struct TxOut<'a> {
    pub batch: &'a mut SendBatch,
    pub sealer: &'a mut Sealer,
    pub tun: &'a mut TunWriteBatch,
}

/// The batch has no room for the next segment: the caller sends it and calls `write` again.
#[derive(Debug)]
pub struct BatchFull;

/// A routed packet with its nonces reserved, on its way into the send batch: its segments are
/// framed in order, as many as the batch holds each time `write` is called.
pub struct Outgoing<'r, 'p> {
    peer: &'r Arc<PeerShared>,
    /// The peer's keypairs as loaded when the nonces were reserved (`current` is the one).
    keypairs: Guard<Arc<Keypairs>>,
    endpoint: Arc<std::net::SocketAddr>,
    first_counter: u64,
    pkt: &'p [u8],
    split: Option<GsoSplit<'p>>,
    count: usize,
    next: usize,
    sent_bytes: u64,
}

impl<'r> TxRound<'r> {
    /// Takes one TUN read (`buf`, virtio_net_hdr first when the queue has one): a packet to
    /// send, or None when it was dropped, answered with an ICMP error or staged.
    pub fn read<'p>(&self, buf: &'p mut [u8], out: &mut TxOut<'_>) -> Option<Outgoing<'r, 'p>> {
        let (hdr, pkt) = if self.vnet {
            match VnetHdr::parse(buf) {
                Some(h) => (h, &mut buf[VNET_HDR_LEN..]),
                None => {
                    bump(&self.drops.malformed);
                    return None;
                }
            }
        } else {
            (VnetHdr::default(), buf)
        };
        self.route(hdr, pkt, out)
    }

    fn route<'p>(&self, hdr: VnetHdr, pkt: &'p mut [u8], out: &mut TxOut<'_>) -> Option<Outgoing<'r, 'p>> {
        let drops = self.drops;
        let Some(header) = ip::parse(pkt) else {
            bump(&drops.malformed);
            return None;
        };
        let routing: &'r AllowedIps<Arc<PeerShared>> = self.routing;
        let Some(peer) = routing.lookup(header.dst) else {
            bump(&drops.no_peer_for_destination);
            if let Some(icmp) = ip::unreachable(&pkt[..header.total_len]) {
                out.tun.push_plain(&icmp);
            }
            return None;
        };
        let segmented = match hdr.gso_type & !GSO_ECN {
            GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4 => true,
            GSO_NONE => {
                let whole = &mut pkt[..header.total_len];
                if hdr.flags & F_NEEDS_CSUM != 0
                    && complete_checksum(whole, hdr.csum_start as usize, hdr.csum_offset as usize).is_err()
                {
                    bump(&drops.malformed);
                    return None;
                }
                false
            }
            _ => {
                bump(&drops.malformed);
                return None;
            }
        };
        let pkt: &'p [u8] = pkt;
        let split = if segmented {
            match GsoSplit::new(pkt, &hdr) {
                Ok(s) => Some(s),
                Err(_) => {
                    bump(&drops.malformed);
                    return None;
                }
            }
        } else {
            None
        };
        let pkt = &pkt[..if split.is_some() { pkt.len() } else { header.total_len }];
        let count = split.as_ref().map_or(1, |s| s.count());
        let keypairs = peer.keypairs.load();
        let reserved = keypairs.current.as_ref().and_then(|k| k.reserve_counters(count as u64, self.now));
        let Some(first_counter) = reserved else {
            self.stage(peer, pkt, split.as_ref());
            return None;
        };
        let Some(endpoint) = peer.endpoint.load_full() else {
            bump(&drops.no_endpoint);
            return None;
        };
        Some(Outgoing { peer, keypairs, endpoint, first_counter, pkt, split, count, next: 0, sent_bytes: 0 })
    }

    /// No session yet: hand the packet (cut into segments) to the control thread.
    fn stage(&self, peer: &Arc<PeerShared>, pkt: &[u8], split: Option<&GsoSplit>) {
        let packets: Vec<Vec<u8>> = match split {
            Some(s) => (0..s.count())
                .map(|i| {
                    let mut v = vec![0u8; s.segment_len(i)];
                    s.write_segment(i, &mut v);
                    v
                })
                .collect(),
            None => vec![pkt.to_vec()],
        };
        if peer.stage(packets) && self.shared.control_tx.try_send(WorkerMsg::Staged(peer.clone())).is_err() {
            peer.stage_notice_lost();
        }
    }
}

impl Outgoing<'_, '_> {
    /// Frames the packet's remaining segments into the batch (sealed by `out.sealer`, here or
    /// on another worker); `BatchFull` when the batch has no room for the next one (a 64 KiB
    /// TSO read at a tiny MSS without GSO makes more sends than a batch holds).
    pub fn write(&mut self, round: &TxRound<'_>, out: &mut TxOut<'_>) -> Result<(), BatchFull> {
        let Some(keypair) = self.keypairs.current.as_ref() else { return Ok(()) };
        while self.next < self.count {
            let i = self.next;
            let len = self.split.as_ref().map_or(self.pkt.len(), |s| s.segment_len(i));
            let total = Keypair::sealed_len(len, round.mtu);
            if !out.batch.has_room(total) {
                return Err(BatchFull);
            }
            let (chunk, space) = out.batch.reserve(total);
            let body = &mut space[TRANSPORT_HEADER_LEN..];
            let checksum = match &self.split {
                Some(s) => Some((s.write_segment_unsummed(i, body).1, len as u32)),
                None => {
                    body[..len].copy_from_slice(self.pkt);
                    None
                }
            };
            self.next += 1;
            // The nonce is stamped here, in order; the checksum and the seal may run on another
            // worker.
            let Ok(total) = keypair.frame(self.first_counter + i as u64, space, len, round.mtu) else { continue };
            let (_, offset) = out.batch.commit(total, *self.endpoint);
            out.sealer.add(&round.shared.crypto_pool, out.batch, (chunk, offset), total, keypair, checksum);
            self.sent_bytes += total as u64;
        }
        Ok(())
    }

    /// Stamps the peer once the packet is in the batch, and asks for a rekey when one is due.
    pub fn finish(self, round: &TxRound<'_>) {
        let peer = self.peer;
        peer.tx_bytes.fetch_add(self.sent_bytes, Ordering::Relaxed);
        peer.last_sent.store(round.stamp, Ordering::Relaxed);
        peer.last_data_sent.store(round.stamp, Ordering::Relaxed);
        peer.mark_active(&round.shared.active_tx);
        let due = self.keypairs.current.as_ref().is_some_and(|k| k.wants_rekey_on_send(round.now));
        if due && !peer.handshake_requested.swap(true, Ordering::Relaxed) {
            let _ = round.shared.control_tx.try_send(WorkerMsg::WantHandshake(peer.clone()));
        }
    }
}
