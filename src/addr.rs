//! Socket addresses as the device compares them.

use std::net::SocketAddr;

/// `addr` with a v4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports
/// for an IPv4 peer) as the IPv4 address it stands for, so one endpoint has one form:
/// received sources, configured endpoints, caps and filters all compare equal.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_is_v4_and_the_rest_is_untouched() {
        let v4: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        assert_eq!(canonical("[::ffff:192.0.2.1]:51820".parse().unwrap()), v4);
        assert_eq!(canonical(v4), v4);
        let v6: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
