//! Per-source token buckets for handshake messages under load (the kernel's ratelimiter.c):
//! 20 packets a second per source, bursts of 5, sources grouped by IPv4 address or IPv6 /64.
//! And per-endpoint and per-address caps on cookie replies (`ReplyCaps`).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const PACKETS_PER_SECOND: u64 = 20;
const PACKETS_BURST: u64 = 5;
const PACKET_COST_NS: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
const TOKEN_MAX_NS: u64 = PACKET_COST_NS * PACKETS_BURST;
/// At most this many sources are tracked; new ones beyond it are refused until entries age out.
const MAX_ENTRIES: usize = 16_384;
const GC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

fn key(ip: IpAddr) -> SourceKey {
    match ip.to_canonical() {
        IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
        IpAddr::V6(v6) => {
            let mut p = [0u8; 8];
            p.copy_from_slice(&v6.octets()[..8]);
            SourceKey::V6Prefix(p)
        }
    }
}

/// A token bucket counted in nanoseconds of credit: `cost_ns` per take, earned at one
/// nanosecond a nanosecond up to `max_ns` (the burst). Full when new.
#[derive(Clone, Copy, Default)]
pub struct TokenBucket {
    credit_ns: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn take(&mut self, now: Instant, cost_ns: u64, max_ns: u64) -> bool {
        self.take_above(now, cost_ns, max_ns, 0)
    }

    /// As `take`, but only from credit beyond `reserve_ns`: what is left over once the
    /// reserve is kept for others.
    pub fn take_above(&mut self, now: Instant, cost_ns: u64, max_ns: u64, reserve_ns: u64) -> bool {
        let earned = match self.last {
            Some(t) => now.saturating_duration_since(t).as_nanos().min(u128::from(max_ns)) as u64,
            None => max_ns,
        };
        self.last = Some(now);
        self.credit_ns = (self.credit_ns + earned).min(max_ns);
        if self.credit_ns < cost_ns.saturating_add(reserve_ns) {
            return false;
        }
        self.credit_ns -= cost_ns;
        true
    }

    fn last(&self) -> Option<Instant> {
        self.last
    }
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: HashMap<SourceKey, TokenBucket>,
    last_gc: Option<Instant>,
}

impl RateLimiter {
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.last_gc.is_none_or(|t| now.saturating_duration_since(t) >= GC_INTERVAL) {
            self.buckets.retain(|_, b| b.last().is_some_and(|t| now.saturating_duration_since(t) < GC_INTERVAL));
            self.last_gc = Some(now);
        }
        let k = key(ip);
        if let Some(b) = self.buckets.get_mut(&k) {
            return b.take(now, PACKET_COST_NS, TOKEN_MAX_NS);
        }
        if self.buckets.len() >= MAX_ENTRIES {
            return false;
        }
        let mut b = TokenBucket::default();
        let allowed = b.take(now, PACKET_COST_NS, TOKEN_MAX_NS);
        self.buckets.insert(k, b);
        allowed
    }
}

/// Cookie replies one endpoint (address and port, as a cookie is bound to) may get per second
/// under load, and its burst. A real peer sends one initiation per REKEY_TIMEOUT. A flood from
/// few endpoints past this costs a comparison per message instead of a reply (MACs, AEAD, a
/// send), and leaves the gate's budget to every other endpoint, a real peer's first
/// cookie-less initiation among them, even one behind the flooder's NAT address.
const REPLIES_PER_ENDPOINT_PER_SECOND: u64 = 5_000;
const REPLIES_PER_ENDPOINT_BURST: u64 = 500;
/// And one address (IPv4, or IPv6 /64, as the kernel's ratelimiter groups sources) over all
/// its ports: a flood that changes its port for every message meets this instead. Four
/// endpoints' worth, so a few peers behind one NAT address and a flooder among them share
/// 20,000 replies a second. A flood from many addresses (spoofed) meets the gate's budget.
const REPLIES_PER_ADDRESS_PER_SECOND: u64 = 20_000;
const REPLIES_PER_ADDRESS_BURST: u64 = 2_000;
const ENDPOINT_COST_NS: u64 = 1_000_000_000 / REPLIES_PER_ENDPOINT_PER_SECOND;
const ENDPOINT_MAX_NS: u64 = ENDPOINT_COST_NS * REPLIES_PER_ENDPOINT_BURST;
const ADDRESS_COST_NS: u64 = 1_000_000_000 / REPLIES_PER_ADDRESS_PER_SECOND;
const ADDRESS_MAX_NS: u64 = ADDRESS_COST_NS * REPLIES_PER_ADDRESS_BURST;
/// Slots of each of the reply caps' tables. Direct-mapped: two sources in one slot evict each
/// other and both start afresh, so a collision (or a flood from many addresses) can only lift
/// a cap, never refuse a source that has not used its own; the gate's budget bounds the total.
const REPLY_SLOTS: usize = 1024;

/// Which cap refused a cookie reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// The endpoint's (address and port).
    Endpoint,
    /// The address's (IPv4, or IPv6 /64), over all its ports.
    Address,
}

/// A direct-mapped table of token buckets.
struct Buckets<K> {
    slots: Box<[Option<(K, TokenBucket)>]>,
}

impl<K: Copy + Eq + Hash> Buckets<K> {
    fn new() -> Self {
        Buckets { slots: vec![None; REPLY_SLOTS].into_boxed_slice() }
    }

    fn take(&mut self, seed: u64, k: K, now: Instant, cost_ns: u64, max_ns: u64) -> bool {
        let mut h = DefaultHasher::new();
        (seed, k).hash(&mut h);
        let slot = &mut self.slots[h.finish() as usize % REPLY_SLOTS];
        match slot {
            Some((held, bucket)) if *held == k => bucket.take(now, cost_ns, max_ns),
            _ => {
                let mut bucket = TokenBucket::default();
                let allowed = bucket.take(now, cost_ns, max_ns);
                *slot = Some((k, bucket));
                allowed
            }
        }
    }
}

/// Per-endpoint and per-address caps on cookie replies under load, in fixed tables: no
/// allocation and no garbage collection on a path a flood drives, and nothing an attacker can
/// fill.
pub struct ReplyCaps {
    endpoints: Buckets<SocketAddr>,
    addresses: Buckets<SourceKey>,
    /// Per-table hash key, so an attacker cannot aim addresses at a real peer's slot.
    seed: u64,
}

impl Default for ReplyCaps {
    fn default() -> Self {
        ReplyCaps { endpoints: Buckets::new(), addresses: Buckets::new(), seed: rand::random() }
    }
}

impl ReplyCaps {
    /// Whether `src` may have another cookie reply at `now` (and takes it if so), else which
    /// cap it is over.
    pub fn allow(&mut self, src: SocketAddr, now: Instant) -> Result<(), Over> {
        let src = crate::addr::canonical(src);
        if !self.endpoints.take(self.seed, src, now, ENDPOINT_COST_NS, ENDPOINT_MAX_NS) {
            return Err(Over::Endpoint);
        }
        if !self.addresses.take(self.seed, key(src.ip()), now, ADDRESS_COST_NS, ADDRESS_MAX_NS) {
            return Err(Over::Address);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_caps_hold_one_endpoint_and_spare_the_others() {
        let mut caps = ReplyCaps::default();
        let t0 = Instant::now();
        let flooder: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let allowed = (0..2 * REPLIES_PER_ENDPOINT_BURST).filter(|_| caps.allow(flooder, t0).is_ok()).count();
        assert_eq!(allowed as u64, REPLIES_PER_ENDPOINT_BURST);
        // Its own endpoint only: a peer at another address, v4 or v6, or behind the same
        // address on another port, is answered at once.
        assert!(caps.allow("192.0.2.2:4000".parse().unwrap(), t0).is_ok());
        assert!(caps.allow("[2001:db8::7]:4000".parse().unwrap(), t0).is_ok());
        assert!(caps.allow("192.0.2.1:51820".parse().unwrap(), t0).is_ok());
        // The flooder's v4-mapped form is the same endpoint.
        assert_eq!(caps.allow("[::ffff:192.0.2.1]:4000".parse().unwrap(), t0), Err(Over::Endpoint));
        // Then its steady rate: 5,000 a second.
        let mut n = 0;
        for us in (0..1_000_000u64).step_by(50) {
            if caps.allow(flooder, t0 + Duration::from_micros(us + 1)).is_ok() {
                n += 1;
            }
        }
        assert!((4_990..=5_010).contains(&n), "{n}");
    }

    #[test]
    fn reply_caps_fail_open_when_sources_collide() {
        // Far more sources than slots: every source is answered at least once, however the
        // slots are shared (an eviction starts a source afresh, it never refuses one).
        let mut caps = ReplyCaps::default();
        let t0 = Instant::now();
        for n in 0..(8 * REPLY_SLOTS as u32) {
            let src = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + n), 4000));
            assert!(caps.allow(src, t0).is_ok(), "source {n}");
        }
    }

    #[test]
    fn reply_caps_hold_an_address_over_all_its_ports() {
        let mut caps = ReplyCaps::default();
        let t0 = Instant::now();
        // A new port for every message: each endpoint is under its cap, the address is not.
        let answered = (0..4_000u16)
            .map(|port| caps.allow(SocketAddr::from(([192, 0, 2, 1], 1_000 + port)), t0))
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(answered as u64, REPLIES_PER_ADDRESS_BURST);
        assert_eq!(caps.allow("192.0.2.1:9".parse().unwrap(), t0), Err(Over::Address));
        // An IPv6 /64 is one address; the next /64 is another.
        for i in 0..REPLIES_PER_ADDRESS_BURST as u16 {
            assert!(caps.allow(SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 1, i], 4000)), t0).is_ok());
        }
        assert_eq!(caps.allow("[2001:db8::ffff:1]:9".parse().unwrap(), t0), Err(Over::Address));
        assert!(caps.allow("[2001:db8:0:1::1]:9".parse().unwrap(), t0).is_ok());
        assert!(caps.allow("192.0.2.2:9".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut r = RateLimiter::default();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..10).filter(|_| r.allow(ip, t0)).count();
        assert_eq!(allowed as u64, PACKETS_BURST);
        // Another source is not affected.
        assert!(r.allow("192.0.2.2".parse().unwrap(), t0));
        // 20 per second once the burst is spent.
        let mut n = 0;
        for ms in (0..1000).step_by(5) {
            if r.allow(ip, t0 + Duration::from_millis(ms + 1)) {
                n += 1;
            }
        }
        assert!((19..=21).contains(&n), "{n}");
    }

    #[test]
    fn ipv6_sources_share_a_64() {
        let mut r = RateLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..PACKETS_BURST {
            assert!(r.allow(a, t0));
        }
        assert!(!r.allow(b, t0), "same /64 shares the bucket");
        assert!(r.allow("2001:db8:1::1".parse().unwrap(), t0));
        // Mapped IPv4 is the IPv4 source.
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..PACKETS_BURST {
            assert!(r.allow(v4, t0));
        }
        assert!(!r.allow("::ffff:192.0.2.9".parse().unwrap(), t0));
        // Idle entries are collected.
        assert!(r.allow(a, t0 + Duration::from_secs(5)));
        assert_eq!(r.buckets.len(), 1);
    }
}
