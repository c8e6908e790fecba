//! Cryptokey routing: allowed IPs as a longest-prefix-match table for IPv4 and IPv6.
#![forbid(unsafe_code)]

pub mod trie;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

pub use trie::Trie;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpNetError {
    // The text is kept for callers but never printed: a config value might be a secret.
    #[error("not an IP address")]
    BadAddress(String),
    #[error("prefix length not a number in range")]
    BadPrefixLength(String),
}

/// An address with a prefix length, host bits cleared (as the kernel stores allowed IPs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    cidr: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, cidr: u8) -> Result<Self, IpNetError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if cidr > max {
            return Err(IpNetError::BadPrefixLength(cidr.to_string()));
        }
        let key = key_of(addr) & mask(cidr);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((key >> 96) as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(key)),
        };
        Ok(IpNet { addr, cidr })
    }
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    pub fn cidr(&self) -> u8 {
        self.cidr
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && (key_of(ip) ^ key_of(self.addr)) & mask(self.cidr) == 0
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    /// `addr/len`, or a bare address meaning a host route (as wg accepts).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| IpNetError::BadAddress(a.to_string()))?;
        let cidr = match l {
            Some(l) => l.parse::<u8>().map_err(|_| IpNetError::BadPrefixLength(l.to_string()))?,
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
        };
        IpNet::new(addr, cidr)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.cidr)
    }
}

/// The top `len` bits of a left-aligned 128-bit key.
fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        !0u128 << (128 - len as u32)
    }
}

/// Addresses as left-aligned 128-bit keys: IPv4 in the top 32 bits of its own trie.
fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => (u32::from(v4) as u128) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Allowed IPs of all peers: prefix -> peer value `V` (an id or an `Arc` of the peer).
#[derive(Clone, Debug)]
pub struct AllowedIps<V> {
    v4: Trie<V>,
    v6: Trie<V>,
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        AllowedIps { v4: Trie::default(), v6: Trie::default() }
    }
}

impl<V: Clone> AllowedIps<V> {
    fn trie(&self, ip: IpAddr) -> &Trie<V> {
        if ip.is_ipv4() {
            &self.v4
        } else {
            &self.v6
        }
    }
    fn trie_mut(&mut self, ip: IpAddr) -> &mut Trie<V> {
        if ip.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }
    /// Inserting a prefix another peer owns moves it to this peer, as in wg(8).
    pub fn insert(&mut self, net: IpNet, value: V) -> Option<V> {
        self.trie_mut(net.addr).insert(key_of(net.addr), net.cidr, value)
    }
    pub fn remove(&mut self, net: IpNet) -> Option<V> {
        self.trie_mut(net.addr).remove(key_of(net.addr), net.cidr)
    }
    pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
        self.trie(ip).lookup(key_of(ip))
    }
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every prefix with its value, IPv4 first.
    pub fn entries(&self) -> Vec<(IpNet, V)> {
        let v4 = self
            .v4
            .entries()
            .into_iter()
            .map(|(k, l, v)| (IpNet { addr: IpAddr::V4(Ipv4Addr::from((k >> 96) as u32)), cidr: l }, v));
        let v6 =
            self.v6.entries().into_iter().map(|(k, l, v)| (IpNet { addr: IpAddr::V6(Ipv6Addr::from(k)), cidr: l }, v));
        v4.chain(v6).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_mask() {
        let n: IpNet = "10.1.2.3/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert_eq!("fd00::1".parse::<IpNet>().unwrap().to_string(), "fd00::1/128");
        assert_eq!("1.2.3.4".parse::<IpNet>().unwrap().cidr(), 32);
        assert!(matches!("1.2.3.4/33".parse::<IpNet>(), Err(IpNetError::BadPrefixLength(_))));
        assert!(matches!("::/129".parse::<IpNet>(), Err(IpNetError::BadPrefixLength(_))));
        assert!(matches!("1.2.3/8".parse::<IpNet>(), Err(IpNetError::BadAddress(_))));
        assert!(matches!("1.2.3.4/x".parse::<IpNet>(), Err(IpNetError::BadPrefixLength(_))));
        assert!(n.contains("10.200.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::a00:1".parse().unwrap()));
    }

    #[test]
    fn v4_and_v6_are_separate() {
        let mut t = AllowedIps::default();
        t.insert("0.0.0.0/0".parse().unwrap(), 1);
        t.insert("::/0".parse().unwrap(), 2);
        t.insert("fd00::/64".parse().unwrap(), 3);
        t.insert("10.0.0.0/24".parse().unwrap(), 4);
        assert_eq!(t.lookup("1.1.1.1".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("10.0.0.9".parse().unwrap()), Some(&4));
        assert_eq!(t.lookup("fd00::9".parse().unwrap()), Some(&3));
        assert_eq!(t.lookup("fd01::9".parse().unwrap()), Some(&2));
        assert_eq!(t.remove("0.0.0.0/0".parse().unwrap()), Some(1));
        assert_eq!(t.remove("fd00::/64".parse().unwrap()), Some(3));
        assert_eq!(t.lookup("1.1.1.1".parse().unwrap()), None);
        let e: Vec<String> = t.entries().iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(e, vec!["10.0.0.0/24", "::/0"]);
    }
}
