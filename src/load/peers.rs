//! The peers a load plays. Their keys are derived from a seed, so the run that prints the
//! gateway's configuration and the run that makes the handshakes agree without a file of
//! private keys passing between them. They are benchmark keys, for a gateway under test only.

use std::io::{self, Write};
use std::net::Ipv4Addr;

use super::LoadError;
use crate::keys::{PrivateKey, PublicKey};
use crate::noise::primitives::hash;

/// Addresses of a prefix left to the gateway: the network address and the gateway's own (the
/// first host).
const RESERVED_ADDRESSES: u64 = 2;

pub struct PeerPlan {
    seed: String,
    base: u32,
    cidr: u8,
}

impl PeerPlan {
    /// `prefix` such as `10.128.0.0/9`; peer 0 gets the prefix's third address.
    pub fn new(seed: &str, prefix: &str) -> Result<Self, LoadError> {
        let bad = || LoadError::BadPrefix(prefix.to_string());
        let (addr, cidr) = prefix.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let cidr: u8 = cidr.parse().map_err(|_| bad())?;
        if !(1..=30).contains(&cidr) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - cidr);
        Ok(PeerPlan { seed: seed.to_string(), base: u32::from(addr) & mask, cidr })
    }

    /// Peers the prefix has addresses for (less the network's broadcast address).
    pub fn capacity(&self) -> u64 {
        (1u64 << (32 - self.cidr)) - RESERVED_ADDRESSES - 1
    }

    /// Checks that `count` peers fit the prefix.
    pub fn check(&self, count: u64) -> Result<(), LoadError> {
        if count > self.capacity() {
            let prefix = format!("{}/{}", Ipv4Addr::from(self.base), self.cidr);
            return Err(LoadError::PrefixTooSmall(prefix, self.capacity(), count));
        }
        Ok(())
    }

    /// The gateway's address in the prefix (its first host).
    pub fn gateway_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    pub fn address(&self, peer: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(RESERVED_ADDRESSES as u32).wrapping_add(peer))
    }

    /// The peer an inner address belongs to, if any of the first `count`.
    pub fn peer_of(&self, addr: Ipv4Addr, count: u32) -> Option<u32> {
        let peer = u32::from(addr).checked_sub(self.base + RESERVED_ADDRESSES as u32)?;
        (peer < count).then_some(peer)
    }

    pub fn private_key(&self, peer: u32) -> PrivateKey {
        PrivateKey::from_bytes(hash(&[b"wgturbo-load peer key", self.seed.as_bytes(), &peer.to_le_bytes()]))
    }

    /// The public keys of peers `0..count`, computed on every core (100,000 take a few seconds
    /// on one).
    pub fn public_keys(&self, count: u32) -> Vec<PublicKey> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1) as u32;
        let per = count.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let parts: Vec<_> = (0..count)
                .step_by(per as usize)
                .map(|start| {
                    s.spawn(move || {
                        (start..(start + per).min(count)).map(|i| self.private_key(i).public_key()).collect()
                    })
                })
                .collect();
            parts.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| Vec::new())).collect()
        })
    }

    /// The `wg setconf` fragment for peers `0..count`: one [Peer] each with its /32.
    pub fn write_setconf(&self, count: u32, out: &mut impl Write) -> io::Result<()> {
        for (i, key) in self.public_keys(count).into_iter().enumerate() {
            writeln!(out, "[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\n", key.to_base64(), self.address(i as u32))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_start_past_the_gateway_and_map_back() {
        let plan = PeerPlan::new("s", "10.128.0.0/9").unwrap();
        assert_eq!(plan.gateway_address(), Ipv4Addr::new(10, 128, 0, 1));
        assert_eq!(plan.address(0), Ipv4Addr::new(10, 128, 0, 2));
        assert_eq!(plan.address(300), Ipv4Addr::new(10, 128, 1, 46));
        assert_eq!(plan.peer_of(Ipv4Addr::new(10, 128, 1, 46), 301), Some(300));
        assert_eq!(plan.peer_of(Ipv4Addr::new(10, 128, 1, 46), 300), None);
        assert_eq!(plan.peer_of(Ipv4Addr::new(10, 128, 0, 1), 10), None);
        assert_eq!(plan.capacity(), (1 << 23) - 3);
    }

    #[test]
    fn a_prefix_too_small_or_malformed_is_refused() {
        let plan = PeerPlan::new("s", "192.0.2.0/24").unwrap();
        assert!(plan.check(253).is_ok());
        assert!(matches!(plan.check(254), Err(LoadError::PrefixTooSmall(_, 253, 254))));
        for bad in ["10.0.0.0", "10.0.0.0/31", "10.0.0/8", "x/8", "10.0.0.0/0"] {
            assert!(PeerPlan::new("s", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_follow_the_seed_and_the_setconf_names_each_peer_once() {
        let a = PeerPlan::new("one", "10.0.0.0/16").unwrap();
        let b = PeerPlan::new("two", "10.0.0.0/16").unwrap();
        assert!(a.private_key(1) == a.private_key(1));
        assert!(a.private_key(1) != a.private_key(2));
        assert!(a.private_key(1) != b.private_key(1));
        let mut text = Vec::new();
        a.write_setconf(5, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.matches("[Peer]").count(), 5);
        assert!(text.contains(&format!("PublicKey = {}", a.private_key(4).public_key().to_base64())));
        assert!(text.contains("AllowedIPs = 10.0.0.6/32"));
        assert_eq!(a.public_keys(5)[3], a.private_key(3).public_key());
    }
}
