//! Inbound: receive datagrams in batches, open transport packets, check replay and allowed
//! IPs, learn the endpoint, write to TUN. Handshake messages go to the control thread.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::{ip, BATCH, SLOT};
use crate::constants::{KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT};
use crate::device::shared::{ControlMsg, DropCounters, HandshakePacket, Shared};
use crate::io::{RecvBatch, Tun};
use crate::noise::messages::{TransportHeader, MESSAGE_TRANSPORT, TRANSPORT_HEADER_LEN};
use crate::session::SessionError;

pub fn run(shared: Arc<Shared>, tun: Tun, worker: usize) {
    let mut batch = RecvBatch::new(BATCH, SLOT);
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
        let stamp = shared.stamp(now);
        let indices = shared.indices.load();
        let routing = shared.routing.load();
        for i in 0..got {
            let (packet, src) = batch.packet_mut(i);
            let Some(src) = src else { continue };
            if packet.len() < 4 || packet[1..4] != [0, 0, 0] {
                DropCounters::bump(&shared.drops.malformed);
                continue;
            }
            if u32::from(packet[0]) != MESSAGE_TRANSPORT {
                if (1..=3).contains(&packet[0]) {
                    let msg = HandshakePacket { packet: packet.to_vec(), src };
                    if shared.handshake_tx.try_send(msg).is_err() {
                        DropCounters::bump(&shared.drops.handshake_queue_full);
                    }
                } else {
                    DropCounters::bump(&shared.drops.malformed);
                }
                continue;
            }
            let Ok(header) = TransportHeader::parse(packet) else {
                DropCounters::bump(&shared.drops.malformed);
                continue;
            };
            let Some(entry) = indices.get(&header.receiver) else {
                DropCounters::bump(&shared.drops.unknown_index);
                continue;
            };
            let peer = &entry.peer;
            let keypairs = peer.keypairs.load();
            if !keypairs.contains(&entry.keypair) {
                DropCounters::bump(&shared.drops.unknown_index);
                continue;
            }
            let wire_len = packet.len() as u64;
            let len = match entry.keypair.open(packet, now) {
                Ok((_, len)) => len,
                Err(SessionError::Replayed(_)) => {
                    DropCounters::bump(&shared.drops.replayed);
                    continue;
                }
                Err(_) => {
                    DropCounters::bump(&shared.drops.decrypt_failed);
                    continue;
                }
            };
            // Authenticated: now (and only now) the packet may move state.
            if keypairs.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, &entry.keypair)) {
                let used = entry.keypair.clone();
                peer.keypairs.rcu(|cur| cur.confirmed(&used).map(Arc::new).unwrap_or_else(|| cur.clone()));
                let _ = shared.control_tx.try_send(ControlMsg::Confirmed(peer.clone()));
            }
            peer.set_endpoint_if_changed(src);
            peer.rx_bytes.fetch_add(wire_len, Ordering::Relaxed);
            peer.last_received.store(stamp, Ordering::Relaxed);
            // Keep the key fresh: an initiator whose keypair nears REJECT_AFTER_TIME rekeys.
            let age = now.saturating_duration_since(entry.keypair.birth);
            if entry.keypair.is_initiator
                && age >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
                && !peer.handshake_requested.swap(true, Ordering::Relaxed)
            {
                let _ = shared.control_tx.try_send(ControlMsg::WantHandshake(peer.clone()));
            }
            if len == 0 {
                continue; // keepalive
            }
            let plaintext = &packet[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
            let Some(inner) = ip::parse(plaintext) else {
                DropCounters::bump(&shared.drops.malformed);
                continue;
            };
            // Cryptokey routing as an access list: the inner source must be this peer's.
            if !routing.lookup(inner.src).is_some_and(|owner| Arc::ptr_eq(owner, peer)) {
                DropCounters::bump(&shared.drops.source_not_allowed);
                debug!("dropped packet from {} : inner source {} not in its allowed IPs", src, inner.src);
                continue;
            }
            peer.last_data_received.store(stamp, Ordering::Relaxed);
            if let Err(e) = tun.write(&plaintext[..inner.total_len]) {
                debug!("worker {worker}: TUN write failed: {e}");
            }
        }
    }
}
