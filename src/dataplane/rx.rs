//! Inbound: datagrams (several per receive with UDP GRO) are opened in place, checked against
//! the replay window and the peer's allowed IPs, and queued for the TUN (TCP segments of a
//! flow coalesced into one write). Handshake messages go to the control thread.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::ip;
use super::shared::{ControlMsg, DropCounters, HandshakePacket, IndexEntry, PeerShared, Shared};
use crate::constants::{KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT};
use crate::noise::messages::{
    TransportHeader, COOKIE_REPLY_LEN, INITIATION_LEN, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT, RESPONSE_LEN, TRANSPORT_HEADER_LEN,
};
use crate::routing::AllowedIps;
use crate::session::SessionError;

pub struct RxRound<'a> {
    pub shared: &'a Shared,
    pub indices: &'a std::collections::HashMap<u32, IndexEntry>,
    pub routing: &'a AllowedIps<Arc<PeerShared>>,
    pub now: Instant,
    pub stamp: u64,
}

/// The exact size of a handshake message of type `t`, None for other types.
fn handshake_len(t: u32) -> Option<usize> {
    match t {
        MESSAGE_INITIATION => Some(INITIATION_LEN),
        MESSAGE_RESPONSE => Some(RESPONSE_LEN),
        MESSAGE_COOKIE_REPLY => Some(COOKIE_REPLY_LEN),
        _ => None,
    }
}

impl RxRound<'_> {
    /// Handles one datagram; returns the length of an inner packet to deliver, found at
    /// `datagram[16..16 + len]`.
    pub fn datagram(&self, datagram: &mut [u8], src: SocketAddr) -> Option<usize> {
        let drops = &self.shared.drops;
        if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
            DropCounters::bump(&drops.malformed);
            return None;
        }
        let kind = u32::from(datagram[0]);
        if kind != MESSAGE_TRANSPORT {
            // Sized before anything is copied or queued: a wrong size is never a handshake.
            if handshake_len(kind) != Some(datagram.len()) {
                DropCounters::bump(&drops.malformed);
                return None;
            }
            let msg = HandshakePacket { packet: datagram.to_vec(), src };
            if self.shared.handshake_tx.try_send(msg).is_err() {
                DropCounters::bump(&drops.handshake_queue_full);
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
