//! Applying a configuration (`set`) and reporting one (`get`, metrics): the kernel's
//! netlink.c part of the control thread. A `set` is checked first (limits, then the port), so
//! a refused request leaves the device as it was; then the device part, then each peer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::control::Control;
use crate::config::uapi::Errno;
use crate::config::{DeviceChange, DeviceStatus, PeerChange, PeerStatus};
use crate::keys::PublicKey;
use crate::metrics::{DeviceReport, PeerReport};
use crate::noise::messages::MESSAGE_TRANSPORT;
use crate::noise::{CookieChecker, StaticIdentity};
use crate::peer::PeerState;
use crate::routing::IpNet;

impl Control {
    pub fn status(&self) -> DeviceStatus {
        let peers = self
            .peers
            .values()
            .map(|p| PeerStatus {
                public_key: p.shared.public_key,
                preshared_key: p.handshake.preshared_key().clone(),
                endpoint: p.shared.endpoint.load().as_deref().copied(),
                last_handshake: p
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| (d.as_secs(), d.subsec_nanos())),
                tx_bytes: p.shared.tx_bytes.load(Ordering::Relaxed),
                rx_bytes: p.shared.rx_bytes.load(Ordering::Relaxed),
                persistent_keepalive: p.timers.persistent_keepalive_interval(),
                allowed_ips: p.allowed_ips.clone(),
            })
            .collect();
        DeviceStatus {
            private_key: self.identity.as_ref().map(|i| i.private.clone()),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers,
        }
    }

    /// The peers for a metrics scrape: pointers and public values only.
    pub fn report(&self) -> DeviceReport {
        DeviceReport {
            public_key: self.identity.as_ref().map(|i| i.public),
            peers: self
                .peers
                .values()
                .map(|p| PeerReport {
                    shared: p.shared.clone(),
                    allowed_ips: p.allowed_ips.clone(),
                    last_handshake: p.last_handshake,
                })
                .collect(),
        }
    }

    pub(super) fn rebind(&mut self, port: u16) -> Result<(), Errno> {
        // Transport messages (type 4) spread over the workers by receiver index; handshake
        // messages and anything else to a socket of their own (`dataplane::gate::serve_side`),
        // so a flood cannot fill the socket a tunnel is received on.
        let bound = self.network.bind(port, self.fwmark, self.workers, Some(MESSAGE_TRANSPORT as u8)).map_err(|e| {
            warn!("cannot listen on UDP port {port}: {e}");
            if e.kind() == std::io::ErrorKind::AddrInUse {
                Errno::PortInUse
            } else {
                Errno::Io
            }
        })?;
        self.listen_port = bound.sockets.first().and_then(|s| s.local_port().ok()).ok_or(Errno::Io)?;
        let old = self.shared.sockets.swap(Arc::new(bound.sockets));
        for s in old.iter() {
            s.shutdown();
        }
        if let Some(old) = self.shared.side_socket.swap(bound.side) {
            old.shutdown();
        }
        self.shared.crypto_pool.wake_all();
        info!("listening on UDP port {}", self.listen_port);
        Ok(())
    }

    pub(super) fn remove_peer(&mut self, pk: &PublicKey) {
        self.clear_keypairs(pk);
        if let Some(mut peer) = self.peers.remove(pk) {
            self.remove_allowed_ips(&mut peer);
            debug!("peer {pk}: removed");
        }
    }

    /// Takes a peer's prefixes out of the table: its own, not a walk of the table.
    pub(super) fn remove_allowed_ips(&mut self, peer: &mut PeerState) {
        for net in peer.allowed_ips.drain(..) {
            self.allowed.remove(net);
        }
    }

    /// Gives `net` to peer `pk`; a peer that had it loses it from its list (the kernel moves
    /// a prefix the same way).
    pub(super) fn add_allowed_ip(&mut self, pk: &PublicKey, net: IpNet) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let previous = self.allowed.insert(net, peer.shared.clone());
        match previous {
            Some(owner) if Arc::ptr_eq(&owner, &peer.shared) => {}
            Some(owner) => {
                peer.allowed_ips.push(net);
                if let Some(old) = self.peers.get_mut(&owner.public_key) {
                    if let Some(at) = old.allowed_ips.iter().position(|n| *n == net) {
                        old.allowed_ips.remove(at);
                    }
                }
            }
            None => peer.allowed_ips.push(net),
        }
    }

    /// Applies a `set`: the checks that can fail first (the peer cap, then the port), so a
    /// refused request leaves the device as it was; then everything else.
    pub fn apply(&mut self, mut change: DeviceChange, now: Instant) -> Result<(), Errno> {
        self.check_limits(&change)?;
        self.apply_device(&mut change)?;
        if change.replace_peers {
            let keys: Vec<PublicKey> = self.peers.keys().copied().collect();
            for pk in keys {
                self.remove_peer(&pk);
            }
        }
        for pc in change.peers {
            self.apply_peer(pc, now);
        }
        self.publish_routing();
        Ok(())
    }

    /// Refuses a `set` that would leave the device with more peers than it may have.
    fn check_limits(&self, change: &DeviceChange) -> Result<(), Errno> {
        let kept = if change.replace_peers { 0 } else { self.peers.len() };
        let new: std::collections::HashSet<&PublicKey> = change
            .peers
            .iter()
            .filter(|p| {
                !p.remove && !p.update_only && (change.replace_peers || !self.peers.contains_key(&p.public_key))
            })
            .map(|p| &p.public_key)
            .collect();
        if kept + new.len() > self.peer_limit {
            warn!("refused: {} peers would exceed the limit of {}", kept + new.len(), self.peer_limit);
            return Err(Errno::TooManyPeers);
        }
        Ok(())
    }

    /// The device's part of a `set`: the port first (it may fail), then the mark and the key.
    fn apply_device(&mut self, change: &mut DeviceChange) -> Result<(), Errno> {
        if let Some(port) = change.listen_port {
            if port != self.listen_port || port == 0 {
                self.rebind(port)?;
            }
        }
        if let Some(mark) = change.fwmark {
            self.fwmark = mark;
            for s in self.shared.sockets.load().iter() {
                if let Err(e) = s.set_fwmark(mark) {
                    warn!("cannot set fwmark {mark}: {e}");
                }
            }
        }
        if let Some(key) = change.private_key.take() {
            let new_identity = key.map(StaticIdentity::new);
            let same = match (&self.identity, &new_identity) {
                (Some(a), Some(b)) => a.private == b.private,
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.identity = new_identity;
                self.shared.cookies.store(self.identity.as_ref().map(|i| Arc::new(CookieChecker::new(&i.public))));
                let keys: Vec<PublicKey> = self.peers.keys().copied().collect();
                for pk in keys {
                    self.clear_keypairs(&pk);
                    if let Some(peer) = self.peers.get_mut(&pk) {
                        peer.handshake.identity_changed();
                    }
                }
                // A peer with our own public key cannot exist (the kernel removes it too).
                if let Some(own) = self.identity.as_ref().map(|i| i.public) {
                    self.remove_peer(&own);
                }
            }
        }
        Ok(())
    }

    /// One peer's part of a `set`: add, update or remove it.
    fn apply_peer(&mut self, pc: PeerChange, now: Instant) {
        let pk = pc.public_key;
        self.touch(&pk);
        if pc.remove {
            self.remove_peer(&pk);
            return;
        }
        if self.identity.as_ref().is_some_and(|i| i.public == pk) {
            debug!("ignoring peer with our own public key");
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.peers.entry(pk) {
            if pc.update_only {
                return;
            }
            slot.insert(PeerState::new(pk, rand::random()));
            debug!("peer {pk}: added");
        }
        let Some(peer) = self.peers.get_mut(&pk) else { return };
        if let Some(psk) = pc.preshared_key {
            peer.handshake.set_preshared_key(psk);
        }
        if let Some(ep) = pc.endpoint {
            peer.shared.endpoint.store(Some(Arc::new(crate::addr::canonical(ep))));
        }
        if pc.replace_allowed_ips {
            let mut nets = std::mem::take(&mut peer.allowed_ips);
            for net in nets.drain(..) {
                self.allowed.remove(net);
            }
            if let Some(peer) = self.peers.get_mut(&pk) {
                peer.allowed_ips = nets; // keeps the allocation
            }
        }
        for net in pc.allowed_ips {
            self.add_allowed_ip(&pk, net);
        }
        if let Some(interval) = pc.persistent_keepalive {
            let Some(peer) = self.peers.get_mut(&pk) else { return };
            let was = peer.timers.persistent_keepalive_interval();
            peer.timers.set_persistent_keepalive(interval, now);
            if was == interval && interval > 0 {
                // Unchanged: no need for the immediate keepalive a new interval gets.
                peer.timers.any_authenticated_packet_traversal(now);
            }
        }
    }
}
