//! Inbound: receive datagrams in batches (UDP GRO hands several per buffer), open transport
//! packets in place, check replay and allowed IPs, learn the endpoint, coalesce TCP segments
//! and write to TUN. Handshake messages go to the control thread.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::ip;
use super::offload::Coalescer;
use crate::constants::{KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT};
use crate::device::shared::{ControlMsg, DropCounters, HandshakePacket, IndexEntry, PeerShared, Shared};
use crate::io::vnet::{VnetHdr, VNET_HDR_LEN};
use crate::io::{RecvBatch, Tun};
use crate::noise::messages::{TransportHeader, MESSAGE_TRANSPORT, TRANSPORT_HEADER_LEN};
use crate::routing::AllowedIps;
use crate::session::SessionError;

/// Buffers per recvmmsg; each holds up to 64 KiB of GRO-coalesced datagrams.
const RX_BATCH: usize = 64;
const RX_SLOT: usize = 65_536;

struct Round<'a> {
    shared: &'a Shared,
    indices: &'a std::collections::HashMap<u32, IndexEntry>,
    routing: &'a AllowedIps<Arc<PeerShared>>,
    now: Instant,
    stamp: u64,
}

pub fn run(shared: Arc<Shared>, tun: Tun, worker: usize) {
    let mut batch = RecvBatch::new(RX_BATCH, RX_SLOT);
    let mut coalescer = Coalescer::default();
    let vnet = tun.has_vnet_hdr();
    while !shared.stopping() {
        let sockets = shared.sockets.load();
        let Some(sock) = sockets.get(worker % sockets.len().max(1)).cloned() else {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        };
        drop(sockets);
        let got = match batch.recv(&sock) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                debug!("worker {worker}: receive failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let now = Instant::now();
        let indices = shared.indices.load();
        let routing = shared.routing.load();
        let round = Round { shared: &shared, indices: &indices, routing: &routing, now, stamp: shared.stamp(now) };
        for i in 0..got {
            let (buf, src, stride) = batch.packet_mut(i);
            let Some(src) = src else { continue };
            for datagram in buf.chunks_mut(stride) {
                let Some(len) = round.datagram(datagram, src) else { continue };
                let plaintext = &datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
                if vnet && coalescer.push(plaintext) {
                    continue;
                }
                // Written in place: the virtio_net_hdr overwrites the spent transport header.
                let result = if vnet {
                    let start = TRANSPORT_HEADER_LEN - VNET_HDR_LEN;
                    VnetHdr::default().write(&mut datagram[start..TRANSPORT_HEADER_LEN]);
                    tun.write(&datagram[start..TRANSPORT_HEADER_LEN + len])
                } else {
                    tun.write(plaintext)
                };
                if let Err(e) = result {
                    debug!("worker {worker}: TUN write failed: {e}");
                }
            }
        }
        coalescer.drain(|packet| {
            if let Err(e) = tun.write(packet) {
                debug!("worker {worker}: TUN write failed: {e}");
            }
        });
    }
}

impl Round<'_> {
    /// Handles one datagram; returns the length of an inner packet to deliver, found at
    /// `datagram[16..16 + len]`.
    fn datagram(&self, datagram: &mut [u8], src: SocketAddr) -> Option<usize> {
        let drops = &self.shared.drops;
        if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
            DropCounters::bump(&drops.malformed);
            return None;
        }
        if u32::from(datagram[0]) != MESSAGE_TRANSPORT {
            if (1..=3).contains(&datagram[0]) {
                let msg = HandshakePacket { packet: datagram.to_vec(), src };
                if self.shared.handshake_tx.try_send(msg).is_err() {
                    DropCounters::bump(&drops.handshake_queue_full);
                }
            } else {
                DropCounters::bump(&drops.malformed);
            }
            return None;
        }
        let Ok(header) = TransportHeader::parse(datagram) else {
            DropCounters::bump(&drops.malformed);
            return None;
        };
        let Some(entry) = self.indices.get(&header.receiver) else {
            DropCounters::bump(&drops.unknown_index);
            return None;
        };
        let peer = &entry.peer;
        let keypairs = peer.keypairs.load();
        if !keypairs.contains(&entry.keypair) {
            DropCounters::bump(&drops.unknown_index);
            return None;
        }
        let wire_len = datagram.len() as u64;
        let len = match entry.keypair.open(datagram, self.now) {
            Ok((_, len)) => len,
            Err(SessionError::Replayed(_)) => {
                DropCounters::bump(&drops.replayed);
                return None;
            }
            Err(_) => {
                DropCounters::bump(&drops.decrypt_failed);
                return None;
            }
        };
        // Authenticated: now (and only now) the packet may move state.
        if keypairs.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, &entry.keypair)) {
            let used = entry.keypair.clone();
            peer.keypairs.rcu(|cur| cur.confirmed(&used).map(Arc::new).unwrap_or_else(|| cur.clone()));
            let _ = self.shared.control_tx.try_send(ControlMsg::Confirmed(peer.clone()));
        }
        peer.set_endpoint_if_changed(src);
        peer.rx_bytes.fetch_add(wire_len, Ordering::Relaxed);
        peer.last_received.store(self.stamp, Ordering::Relaxed);
        // Keep the key fresh: an initiator whose keypair nears REJECT_AFTER_TIME rekeys.
        let age = self.now.saturating_duration_since(entry.keypair.birth);
        if entry.keypair.is_initiator
            && age >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
            && !peer.handshake_requested.swap(true, Ordering::Relaxed)
        {
            let _ = self.shared.control_tx.try_send(ControlMsg::WantHandshake(peer.clone()));
        }
        if len == 0 {
            return None; // keepalive
        }
        let plaintext = &datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        let Some(inner) = ip::parse(plaintext) else {
            DropCounters::bump(&drops.malformed);
            return None;
        };
        // Cryptokey routing as an access list: the inner source must be this peer's.
        if !self.routing.lookup(inner.src).is_some_and(|owner| Arc::ptr_eq(owner, peer)) {
            DropCounters::bump(&drops.source_not_allowed);
            return None;
        }
        peer.last_data_received.store(self.stamp, Ordering::Relaxed);
        Some(inner.total_len)
    }
}
