//! Just enough of IPv4 and IPv6 to route, check sources and answer with ICMP unreachable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum::checksum;
use super::header::{icmp, v4, v4_header_len, v6, version, PROTO_ICMP, PROTO_ICMPV6};

/// Version and addresses of an inner packet, and its length without WireGuard's padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub total_len: usize,
}

fn be16(p: &[u8], at: std::ops::Range<usize>) -> usize {
    usize::from(u16::from_be_bytes([p[at.start], p[at.start + 1]]))
}

fn v4_addr(p: &[u8], at: std::ops::Range<usize>) -> Ipv4Addr {
    Ipv4Addr::new(p[at.start], p[at.start + 1], p[at.start + 2], p[at.start + 3])
}

fn v6_addr(p: &[u8], at: std::ops::Range<usize>) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&p[at]);
    a.into()
}

/// Parses the header of a packet read from TUN or opened from a peer. None for anything that
/// is not a well-formed IPv4 or IPv6 header whose length fits the buffer.
pub fn parse(p: &[u8]) -> Option<IpHeader> {
    match version(*p.first()?) {
        4 if p.len() >= v4::MIN_LEN => {
            let total_len = be16(p, v4::TOTAL_LEN);
            if total_len < v4::MIN_LEN || total_len > p.len() {
                return None;
            }
            Some(IpHeader { src: IpAddr::V4(v4_addr(p, v4::SRC)), dst: IpAddr::V4(v4_addr(p, v4::DST)), total_len })
        }
        6 if p.len() >= v6::LEN => {
            let total_len = v6::LEN + be16(p, v6::PAYLOAD_LEN);
            if total_len > p.len() {
                return None;
            }
            Some(IpHeader { src: IpAddr::V6(v6_addr(p, v6::SRC)), dst: IpAddr::V6(v6_addr(p, v6::DST)), total_len })
        }
        _ => None,
    }
}

/// How much of the original an ICMPv4 error quotes at most (RFC 1812 4.3.2.3: a reply that
/// fits 576 bytes), and an ICMPv6 error (RFC 4443 2.4: the minimum MTU, 1280).
const V4_QUOTE_MAX: usize = 576 - v4::MIN_LEN - icmp::LEN;
const V6_QUOTE_MAX: usize = 1280 - v6::LEN - icmp::LEN;
/// The TTL / hop limit of an error we make.
const ERROR_TTL: u8 = 64;

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
            let ihl = v4_header_len(original[v4::VERSION_IHL]);
            // Never answer an ICMP error with an error.
            let icmp_type = original.get(ihl + icmp::TYPE);
            if original[v4::PROTOCOL] == PROTO_ICMP && icmp_type.is_some_and(|t| icmp::V4_ERRORS.contains(t)) {
                return None;
            }
            let quoted = &original[..h.total_len.min(ihl + 8).min(V4_QUOTE_MAX)];
            let total = v4::MIN_LEN + icmp::LEN + quoted.len();
            let mut p = vec![0u8; total];
            p[v4::VERSION_IHL] = v4::VERSION_IHL_PLAIN;
            p[v4::TOTAL_LEN].copy_from_slice(&(total as u16).to_be_bytes());
            p[v4::TTL] = ERROR_TTL;
            p[v4::PROTOCOL] = PROTO_ICMP;
            p[v4::SRC].copy_from_slice(&src.octets());
            p[v4::DST].copy_from_slice(&dst.octets());
            let c = checksum(&[&p[..v4::MIN_LEN]]);
            p[v4::CHECKSUM].copy_from_slice(&c.to_be_bytes());
            let m = &mut p[v4::MIN_LEN..];
            m[icmp::TYPE] = icmp::V4_DEST_UNREACHABLE;
            m[icmp::CODE] = icmp::V4_HOST_UNREACHABLE;
            m[icmp::LEN..].copy_from_slice(quoted);
            let c = checksum(&[m]);
            m[icmp::CHECKSUM].copy_from_slice(&c.to_be_bytes());
            Some(p)
        }
        (IpAddr::V6(dst), IpAddr::V6(src)) => {
            let icmp_type = original.get(v6::LEN + icmp::TYPE);
            if original[v6::NEXT_HEADER] == PROTO_ICMPV6 && icmp_type.is_some_and(|&t| t < icmp::V6_FIRST_INFORMATIONAL)
            {
                return None;
            }
            let quoted = &original[..h.total_len.min(V6_QUOTE_MAX)];
            let icmp_len = icmp::LEN + quoted.len();
            let mut p = vec![0u8; v6::LEN + icmp_len];
            p[v6::VERSION] = v6::VERSION_BYTE;
            p[v6::PAYLOAD_LEN].copy_from_slice(&(icmp_len as u16).to_be_bytes());
            p[v6::NEXT_HEADER] = PROTO_ICMPV6;
            p[v6::HOP_LIMIT] = ERROR_TTL;
            p[v6::SRC].copy_from_slice(&src.octets());
            p[v6::DST].copy_from_slice(&dst.octets());
            let (head, m) = p.split_at_mut(v6::LEN);
            m[icmp::TYPE] = icmp::V6_DEST_UNREACHABLE;
            m[icmp::CODE] = icmp::V6_ADDRESS_UNREACHABLE;
            m[icmp::LEN..].copy_from_slice(quoted);
            let pseudo_len = (icmp_len as u32).to_be_bytes();
            let c = checksum(&[&head[v6::ADDRS], &pseudo_len, &[0, 0, 0, PROTO_ICMPV6], m]);
            m[icmp::CHECKSUM].copy_from_slice(&c.to_be_bytes());
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
