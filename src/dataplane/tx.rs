//! Outbound: packets read from the TUN (TSO/USO super-packets when the TUN offloads are on) are
//! routed by destination, cut into segments, sealed in place in the send batch, and sent as
//! UDP GSO groups.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};

use super::packet::ip;
use super::packet::offload::{complete_checksum, GsoSplit};
use super::pool::CryptoPool;
use super::seal::Sealer;
use super::shared::{bump, PeerShared, Shared, WorkerMsg};
use crate::io::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN};
use crate::io::{SendBatch, TunWriteBatch, WorkerIo};
use crate::noise::messages::TRANSPORT_HEADER_LEN;
use crate::routing::AllowedIps;
use crate::session::Keypair;

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

impl TxRound<'_> {
    /// Handles one TUN read (`buf`, virtio_net_hdr first when the queue has one).
    pub fn read(&self, buf: &mut [u8], out: &mut TxOut<'_>, io: &mut dyn WorkerIo) {
        let (hdr, pkt) = if self.vnet {
            match VnetHdr::parse(buf) {
                Some(h) => (h, &mut buf[VNET_HDR_LEN..]),
                None => {
                    bump(&self.shared.drops.malformed);
                    return;
                }
            }
        } else {
            (VnetHdr::default(), buf)
        };
        self.packet(hdr, pkt, out, io);
    }

    fn packet(&self, hdr: VnetHdr, pkt: &mut [u8], out: &mut TxOut<'_>, io: &mut dyn WorkerIo) {
        let drops = &self.shared.drops;
        let Some(header) = ip::parse(pkt) else {
            bump(&drops.malformed);
            return;
        };
        let Some(peer) = self.routing.lookup(header.dst) else {
            bump(&drops.no_peer_for_destination);
            if let Some(icmp) = ip::unreachable(&pkt[..header.total_len]) {
                out.tun.push_plain(&icmp);
            }
            return;
        };
        let split = match hdr.gso_type & !GSO_ECN {
            GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4 => match GsoSplit::new(pkt, &hdr) {
                Ok(s) => Some(s),
                Err(_) => {
                    bump(&drops.malformed);
                    return;
                }
            },
            GSO_NONE => {
                let whole = &mut pkt[..header.total_len];
                if hdr.flags & F_NEEDS_CSUM != 0
                    && complete_checksum(whole, hdr.csum_start as usize, hdr.csum_offset as usize).is_err()
                {
                    bump(&drops.malformed);
                    return;
                }
                None
            }
            _ => {
                bump(&drops.malformed);
                return;
            }
        };
        let pkt = &pkt[..if split.is_some() { pkt.len() } else { header.total_len }];
        let count = split.as_ref().map_or(1, |s| s.count());
        let keypairs = peer.keypairs.load();
        let reserved =
            keypairs.current.as_ref().and_then(|k| k.reserve_counters(count as u64, self.now).map(|c| (k, c)));
        let Some((keypair, first_counter)) = reserved else {
            self.stage(peer, pkt, split.as_ref());
            return;
        };
        let Some(endpoint) = peer.endpoint.load_full() else {
            bump(&drops.no_endpoint);
            return;
        };
        let mut sent_bytes = 0u64;
        for i in 0..count {
            let len = split.as_ref().map_or(pkt.len(), |s| s.segment_len(i));
            let total = Keypair::sealed_len(len, self.mtu);
            // One read can make more sends than a batch holds (a 64 KiB TSO read at a tiny
            // MSS without GSO): send what is there and go on.
            if !out.batch.has_room(total) {
                flush(io, out.batch, out.sealer, &self.shared.crypto_pool, self.worker);
            }
            let (chunk, space) = out.batch.reserve(total);
            let body = &mut space[TRANSPORT_HEADER_LEN..];
            let checksum = match &split {
                Some(s) => Some((s.write_segment_unsummed(i, body).1, len as u32)),
                None => {
                    body[..len].copy_from_slice(pkt);
                    None
                }
            };
            // The nonce is stamped here, in order; the checksum and the seal may run on another
            // worker.
            let Ok(total) = keypair.frame(first_counter + i as u64, space, len, self.mtu) else { return };
            let (_, offset) = out.batch.commit(total, *endpoint);
            out.sealer.add(&self.shared.crypto_pool, out.batch, (chunk, offset), total, keypair, checksum);
            sent_bytes += total as u64;
        }
        peer.tx_bytes.fetch_add(sent_bytes, Ordering::Relaxed);
        peer.last_sent.store(self.stamp, Ordering::Relaxed);
        peer.last_data_sent.store(self.stamp, Ordering::Relaxed);
        peer.mark_active(&self.shared.active_tx);
        if keypair.wants_rekey_on_send(self.now) && !peer.handshake_requested.swap(true, Ordering::Relaxed) {
            let _ = self.shared.control_tx.try_send(WorkerMsg::WantHandshake(peer.clone()));
        }
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
