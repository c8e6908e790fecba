//! Outbound: read packets (TSO super-packets when the TUN offloads are on) from TUN, pick the
//! peer by destination, cut into segments, seal in place, send as UDP GSO batches.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::ip;
use super::offload::{complete_checksum, TsoSplit};
use crate::device::shared::{ControlMsg, DropCounters, PeerShared, Shared};
use crate::io::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN};
use crate::io::{SendBatch, Tun, UdpSocket};
use crate::noise::messages::{padded_len, TRANSPORT_HEADER_LEN};
use crate::routing::AllowedIps;

/// TUN reads per round before the batch is sent.
const READS_PER_ROUND: usize = 64;
const ARENA_BYTES: usize = 4 << 20;
const MAX_SENDS: usize = 2048;
/// Worst case one TUN read can expand to: a 64 KiB super-packet cut at a tiny MSS.
const WORST_READ_BYTES: usize = 256 << 10;
const WORST_READ_SENDS: usize = 256;

fn wait_readable(fd: i32, timeout_ms: i32) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes one pollfd that lives on this stack frame.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

/// Per-round context, loaded once per batch.
struct Round<'a> {
    shared: &'a Shared,
    routing: &'a AllowedIps<Arc<PeerShared>>,
    sock: &'a UdpSocket,
    tun: &'a Tun,
    now: Instant,
    stamp: u64,
    mtu: usize,
}

pub fn run(shared: Arc<Shared>, tun: Tun, worker: usize) {
    if let Err(e) = tun.set_nonblocking() {
        warn!("worker {worker}: TUN queue cannot be made non-blocking ({e}); batching disabled");
    }
    let vnet = tun.has_vnet_hdr();
    let mut read_buf = vec![0u8; VNET_HDR_LEN + 65_536 + 128];
    let mut batch: Option<SendBatch> = None;
    while !shared.stopping() {
        let sockets = shared.sockets.load();
        let Some(sock) = sockets.get(worker % sockets.len().max(1)).cloned() else {
            wait_readable(tun.fd(), 100);
            continue;
        };
        let batch = batch.get_or_insert_with(|| {
            let gso = sock.supports_gso() && !crate::device::offloads_disabled();
            SendBatch::new(ARENA_BYTES, MAX_SENDS, gso)
        });
        let routing = shared.routing.load();
        let now = Instant::now();
        let round = Round {
            shared: &shared,
            routing: &routing,
            sock: &sock,
            tun: &tun,
            now,
            stamp: shared.stamp(now),
            mtu: shared.mtu.load(Ordering::Relaxed),
        };
        let mut reads = 0;
        while reads < READS_PER_ROUND && batch.has_room(WORST_READ_BYTES, WORST_READ_SENDS) {
            let n = match tun.read(&mut read_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("worker {worker}: TUN read failed: {e}");
                    wait_readable(tun.fd(), 100);
                    break;
                }
            };
            reads += 1;
            let (hdr, pkt) = if vnet {
                match (VnetHdr::parse(&read_buf[..n]), n >= VNET_HDR_LEN) {
                    (Some(h), true) => (h, &mut read_buf[VNET_HDR_LEN..n]),
                    _ => continue,
                }
            } else {
                (VnetHdr::default(), &mut read_buf[..n])
            };
            round.packet(hdr, pkt, batch);
        }
        if !batch.is_empty() {
            let had_gso = batch.gso_enabled();
            if let Err(e) = batch.flush(&sock) {
                debug!("worker {worker}: send failed: {e}");
            }
            if had_gso && !batch.gso_enabled() {
                info!("worker {worker}: UDP GSO refused by the kernel; falling back to one datagram per send");
            }
        }
        if reads == 0 {
            wait_readable(tun.fd(), 500);
        }
    }
}

impl Round<'_> {
    fn packet(&self, hdr: VnetHdr, pkt: &mut [u8], batch: &mut SendBatch) {
        let drops = &self.shared.drops;
        let Some(header) = ip::parse(pkt) else {
            DropCounters::bump(&drops.malformed);
            return;
        };
        let Some(peer) = self.routing.lookup(header.dst) else {
            DropCounters::bump(&drops.no_peer_for_destination);
            self.icmp_unreachable(&pkt[..header.total_len]);
            return;
        };
        let gso_type = hdr.gso_type & 0x7f;
        let split = match gso_type {
            GSO_TCPV4 | GSO_TCPV6 => match TsoSplit::new(pkt, &hdr) {
                Ok(s) => Some(s),
                Err(_) => {
                    DropCounters::bump(&drops.malformed);
                    return;
                }
            },
            GSO_NONE => {
                if hdr.flags & F_NEEDS_CSUM != 0
                    && complete_checksum(
                        &mut pkt[..header.total_len],
                        hdr.csum_start as usize,
                        hdr.csum_offset as usize,
                    )
                    .is_err()
                {
                    DropCounters::bump(&drops.malformed);
                    return;
                }
                None
            }
            _ => {
                DropCounters::bump(&drops.malformed);
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
            DropCounters::bump(&drops.no_endpoint);
            return;
        };
        let mut sent_bytes = 0u64;
        for i in 0..count {
            let space = batch.free_space();
            let body = &mut space[TRANSPORT_HEADER_LEN..];
            let len = match &split {
                Some(s) => s.write_segment(i, body),
                None => {
                    body[..pkt.len()].copy_from_slice(pkt);
                    pkt.len()
                }
            };
            let padded = padded_len(len, self.mtu);
            body[len..padded].fill(0);
            let Ok(total) = keypair.seal(first_counter + i as u64, space, padded) else { return };
            batch.commit(total, *endpoint, self.sock);
            sent_bytes += total as u64;
        }
        peer.tx_bytes.fetch_add(sent_bytes, Ordering::Relaxed);
        peer.last_sent.store(self.stamp, Ordering::Relaxed);
        peer.last_data_sent.store(self.stamp, Ordering::Relaxed);
        if keypair.wants_rekey_on_send(self.now) && !peer.handshake_requested.swap(true, Ordering::Relaxed) {
            let _ = self.shared.control_tx.try_send(ControlMsg::WantHandshake(peer.clone()));
        }
    }

    /// No session yet: hand the packet (cut into segments) to the control thread.
    fn stage(&self, peer: &Arc<PeerShared>, pkt: &[u8], split: Option<&TsoSplit>) {
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
        for packet in packets {
            let _ = self.shared.control_tx.try_send(ControlMsg::Staged { peer: peer.clone(), packet });
        }
    }

    fn icmp_unreachable(&self, pkt: &[u8]) {
        let Some(icmp) = ip::unreachable(pkt) else { return };
        let result = if self.tun.has_vnet_hdr() {
            let mut framed = vec![0u8; VNET_HDR_LEN];
            framed.extend_from_slice(&icmp);
            self.tun.write(&framed)
        } else {
            self.tun.write(&icmp)
        };
        if let Err(e) = result {
            debug!("ICMP unreachable not written: {e}");
        }
    }
}
