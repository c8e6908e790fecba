//! TAI64N timestamps, as carried (encrypted) in handshake initiations.

use std::time::{SystemTime, UNIX_EPOCH};

/// TAI64 label base plus the 10 s TAI-UTC offset at 1970, as wireguard-go and the kernel use.
const TAI64_BASE: u64 = (1u64 << 62) + 10;
/// The kernel and wireguard-go round nanoseconds down to about 16 ms, so a timestamp does not
/// leak a precise clock reading.
const WHITENER_MASK: u32 = 0x0100_0000 - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    pub fn from_system_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&(TAI64_BASE + d.as_secs()).to_be_bytes());
        b[8..].copy_from_slice(&(d.subsec_nanos() & !WHITENER_MASK).to_be_bytes());
        Tai64N(b)
    }
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }
    /// Big-endian bytes compare as the times they encode.
    pub fn is_after(&self, other: &Tai64N) -> bool {
        self.0 > other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ordering_follows_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = Tai64N::from_system_time(t);
        let b = Tai64N::from_system_time(t + Duration::from_millis(100));
        assert!(b.is_after(&a));
        assert!(!a.is_after(&b));
        assert!(!a.is_after(&a));
        // Whitening: two times within the same ~16 ms slot are equal.
        let c = Tai64N::from_system_time(t + Duration::from_nanos(1000));
        assert_eq!(a, c);
        assert_eq!(&a.0[..8], &(TAI64_BASE + 1_700_000_000).to_be_bytes());
    }
}
