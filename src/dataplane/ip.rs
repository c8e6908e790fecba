//! Just enough of IPv4 and IPv6 to route, check sources and answer with ICMP unreachable.

use std::net::{IpAddr, Ipv4Addr};

use super::checksum::checksum;

/// Version and addresses of an inner packet, and its length without WireGuard's padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub total_len: usize,
}

/// Parses the header of a packet read from TUN or opened from a peer. None for anything that
/// is not a well-formed IPv4 or IPv6 header whose length fits the buffer.
pub fn parse(p: &[u8]) -> Option<IpHeader> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let total_len = u16::from_be_bytes([p[2], p[3]]) as usize;
            if total_len < 20 || total_len > p.len() {
                return None;
            }
            Some(IpHeader {
                src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
                dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
                total_len,
            })
        }
        6 if p.len() >= 40 => {
            let total_len = 40 + u16::from_be_bytes([p[4], p[5]]) as usize;
            if total_len > p.len() {
                return None;
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&p[8..24]);
            dst.copy_from_slice(&p[24..40]);
            Some(IpHeader { src: IpAddr::V6(src.into()), dst: IpAddr::V6(dst.into()), total_len })
        }
        _ => None,
    }
}

/// ICMP "host unreachable" (v4) or "address unreachable" (v6) for `original`, as the kernel
/// sends when no peer has the destination. The error comes from the unreachable address
/// itself: it is written into TUN, and a source the host owns would be dropped as martian.
/// None if the original must get no error (not IP, multicast, or itself an ICMP error).
pub fn unreachable(original: &[u8]) -> Option<Vec<u8>> {
    let h = parse(original)?;
    // RFC 1122 3.2.2 and RFC 4443 2.4: no errors about multicast, broadcast or sourceless packets.
    let silent = match (h.src, h.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            d.is_multicast() || d.is_broadcast() || s.is_unspecified() || s.is_multicast()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => d.is_multicast() || s.is_unspecified() || s.is_multicast(),
        _ => true,
    };
    if silent {
        return None;
    }
    match (h.src, h.dst) {
        (IpAddr::V4(dst), IpAddr::V4(src)) => {
            let ihl = ((original[0] & 0x0f) as usize) * 4;
            // Never answer an ICMP error with an error.
            if original[9] == 1 && original.get(ihl).is_some_and(|&t| matches!(t, 3 | 4 | 5 | 11 | 12)) {
                return None;
            }
            let quoted = &original[..h.total_len.min(ihl + 8).min(548)];
            let total = 20 + 8 + quoted.len();
            let mut p = vec![0u8; total];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[8] = 64;
            p[9] = 1;
            p[12..16].copy_from_slice(&src.octets());
            p[16..20].copy_from_slice(&dst.octets());
            let c = checksum(&[&p[..20]]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p[20] = 3; // destination unreachable
            p[21] = 1; // host unreachable
            p[28..].copy_from_slice(quoted);
            let c = checksum(&[&p[20..]]);
            p[22..24].copy_from_slice(&c.to_be_bytes());
            Some(p)
        }
        (IpAddr::V6(dst), IpAddr::V6(src)) => {
            if original[6] == 58 && original.get(40).is_some_and(|&t| t < 128) {
                return None;
            }
            let quoted = &original[..h.total_len.min(1280 - 48)];
            let icmp_len = 8 + quoted.len();
            let mut p = vec![0u8; 40 + icmp_len];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
            p[6] = 58;
            p[7] = 64;
            p[8..24].copy_from_slice(&src.octets());
            p[24..40].copy_from_slice(&dst.octets());
            p[40] = 1; // destination unreachable
            p[41] = 3; // address unreachable
            p[48..].copy_from_slice(quoted);
            let pseudo_len = (icmp_len as u32).to_be_bytes();
            let c = checksum(&[&p[8..40], &pseudo_len, &[0, 0, 0, 58], &p[40..]]);
            p[42..44].copy_from_slice(&c.to_be_bytes());
            Some(p)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn v4(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 99]);
        p
    }

    #[test]
    fn parses_and_trims_padding() {
        let mut p = v4(37);
        p.extend_from_slice(&[0; 11]);
        let h = parse(&p).unwrap();
        assert_eq!(h.total_len, 37);
        assert_eq!(h.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)));
        assert_eq!(parse(&p[..19]), None);
        assert_eq!(parse(&[0x45; 40][..]), None, "total length beyond the buffer");
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x10; 60]), None);
    }

    #[test]
    fn icmp_unreachable_is_well_formed() {
        let p = v4(100);
        let icmp = unreachable(&p).unwrap();
        let h = parse(&icmp).unwrap();
        assert_eq!(h.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)));
        assert_eq!(h.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(checksum(&[&icmp[..20]]), 0);
        assert_eq!(checksum(&[&icmp[20..]]), 0);
        assert_eq!((icmp[20], icmp[21]), (3, 1));
        // No error about an error.
        assert!(unreachable(&icmp).is_none());
        let mut multicast = v4(100);
        multicast[16..20].copy_from_slice(&[224, 0, 0, 5]);
        assert!(unreachable(&multicast).is_none());
    }

    #[test]
    fn icmpv6_unreachable_checksum() {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&20u16.to_be_bytes());
        p[6] = 17;
        p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00::99".parse::<Ipv6Addr>().unwrap().octets());
        let icmp = unreachable(&p).unwrap();
        let len = (icmp.len() - 40) as u32;
        assert_eq!(checksum(&[&icmp[8..40], &len.to_be_bytes(), &[0, 0, 0, 58], &icmp[40..]]), 0);
        assert_eq!(parse(&icmp).unwrap().dst, IpAddr::V6("fd00::1".parse().unwrap()));
        assert_eq!(parse(&icmp).unwrap().src, IpAddr::V6("fd00::99".parse().unwrap()));
    }
}
