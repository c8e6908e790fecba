//! Outbound: read packets from TUN, pick the peer by destination, seal, send in batches.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use super::{ip, BATCH, SLOT};
use crate::device::shared::{ControlMsg, DropCounters, Shared};
use crate::io::{SendBatch, Tun};
use crate::noise::messages::{padded_len, TRANSPORT_HEADER_LEN};

const HEADROOM: usize = TRANSPORT_HEADER_LEN;
const TAILROOM: usize = 32; // padding up to 16 plus the 16-byte tag

fn wait_readable(fd: i32, timeout_ms: i32) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes one pollfd that lives on this stack frame.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

pub fn run(shared: Arc<Shared>, tun: Tun, worker: usize) {
    if let Err(e) = tun.set_nonblocking() {
        warn!("worker {worker}: TUN queue cannot be made non-blocking ({e}); batching disabled");
    }
    // Slots are sized for the largest packet; the batch itself is filled in place.
    let mut batch = SendBatch::new(BATCH, SLOT);
    while !shared.stopping() {
        let sockets = shared.sockets.load();
        let Some(sock) = sockets.get(worker % sockets.len().max(1)).cloned() else {
            wait_readable(tun.fd(), 100);
            continue;
        };
        let now = Instant::now();
        let stamp = shared.stamp(now);
        let routing = shared.routing.load();
        let mtu = shared.mtu.load(Ordering::Relaxed);
        let mut read_any = false;
        while !batch.is_full() {
            let Some(slot) = batch.next_slot() else { break };
            let end = slot.len() - TAILROOM;
            let n = match tun.read(&mut slot[HEADROOM..end]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("worker {worker}: TUN read failed: {e}");
                    wait_readable(tun.fd(), 100);
                    break;
                }
            };
            read_any = true;
            let Some(header) = ip::parse(&slot[HEADROOM..HEADROOM + n]) else {
                DropCounters::bump(&shared.drops.malformed);
                continue;
            };
            let Some(peer) = routing.lookup(header.dst) else {
                DropCounters::bump(&shared.drops.no_peer_for_destination);
                if let Some(icmp) = ip::unreachable(&slot[HEADROOM..HEADROOM + n]) {
                    let _ = tun.write(&icmp);
                }
                continue;
            };
            let packet_len = header.total_len;
            let keypairs = peer.keypairs.load();
            let counter = keypairs.current.as_ref().and_then(|k| k.reserve_counters(1, now).map(|c| (k, c)));
            let Some((keypair, counter)) = counter else {
                let packet = slot[HEADROOM..HEADROOM + packet_len].to_vec();
                let _ = shared.control_tx.try_send(ControlMsg::Staged { peer: peer.clone(), packet });
                continue;
            };
            let Some(endpoint) = peer.endpoint.load_full() else {
                DropCounters::bump(&shared.drops.no_endpoint);
                continue;
            };
            let padded = padded_len(packet_len, mtu);
            slot[HEADROOM + packet_len..HEADROOM + padded].fill(0);
            let Ok(total) = keypair.seal(counter, slot, padded) else { continue };
            batch.commit(total, *endpoint, &sock);
            peer.tx_bytes.fetch_add(total as u64, Ordering::Relaxed);
            peer.last_sent.store(stamp, Ordering::Relaxed);
            peer.last_data_sent.store(stamp, Ordering::Relaxed);
            if keypair.wants_rekey_on_send(now) && !peer.handshake_requested.swap(true, Ordering::Relaxed) {
                let _ = shared.control_tx.try_send(ControlMsg::WantHandshake(peer.clone()));
            }
        }
        if !batch.is_empty() {
            if let Err(e) = batch.flush(&sock) {
                debug!("worker {worker}: send failed: {e}");
            }
        }
        if !read_any {
            wait_readable(tun.fd(), 500);
        }
    }
}
