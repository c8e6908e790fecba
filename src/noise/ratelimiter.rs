//! Per-source token buckets for handshake messages under load (the kernel's ratelimiter.c):
//! 20 packets a second per source, bursts of 5, sources grouped by IPv4 address or IPv6 /64.

use std::collections::HashMap;
use std::net::IpAddr;
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
        let earned = match self.last {
            Some(t) => now.saturating_duration_since(t).as_nanos().min(u128::from(max_ns)) as u64,
            None => max_ns,
        };
        self.last = Some(now);
        self.credit_ns = (self.credit_ns + earned).min(max_ns);
        if self.credit_ns < cost_ns {
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

#[cfg(test)]
mod tests {
    use super::*;

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
