//! The inner packets a load sends: IPv4/UDP whose payload starts with a stamp (a magic, the
//! flow, its sequence number), so the far end can count per flow and tell order, and their
//! sizes: one size, or IMIX.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use super::{LoadError, INNER_MTU};
use crate::dataplane::packet::checksum::checksum;

pub const IPV4_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
/// The stamp at the start of every payload: magic, flow, sequence number.
pub const STAMP_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"wgtL";
/// The smallest inner packet that holds a stamp.
pub const MIN_PACKET: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + STAMP_LEN;
/// The smallest size the command line takes (the conventional smallest packet).
pub const MIN_SIZE: usize = 64;

/// Simple IMIX (7:4:1 of 64, 576 and 1420 bytes), interleaved so that every stretch of a
/// dozen packets has the mix.
pub const IMIX: [usize; 12] = [64, 576, 64, 64, 1420, 64, 576, 64, 576, 64, 64, 576];

/// The inner packet size of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketSize {
    Fixed(usize),
    Imix,
}

impl FromStr for PacketSize {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<Self, LoadError> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(PacketSize::Imix);
        }
        match s.parse::<usize>() {
            Ok(n) if (MIN_SIZE..=INNER_MTU).contains(&n) => Ok(PacketSize::Fixed(n)),
            _ => Err(LoadError::BadSize(s.to_string())),
        }
    }
}

impl std::fmt::Display for PacketSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PacketSize::Fixed(n) => write!(f, "{n}"),
            PacketSize::Imix => f.write_str("imix"),
        }
    }
}

impl PacketSize {
    /// The mean inner packet size.
    pub fn mean(&self) -> f64 {
        match self {
            PacketSize::Fixed(n) => *n as f64,
            PacketSize::Imix => IMIX.iter().sum::<usize>() as f64 / IMIX.len() as f64,
        }
    }

    pub fn largest(&self) -> usize {
        match self {
            PacketSize::Fixed(n) => *n,
            PacketSize::Imix => INNER_MTU,
        }
    }

    pub fn schedule(&self) -> SizeSchedule {
        SizeSchedule { size: *self, next: 0 }
    }
}

/// The sizes of consecutive packets.
pub struct SizeSchedule {
    size: PacketSize,
    next: usize,
}

impl Iterator for SizeSchedule {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        Some(match self.size {
            PacketSize::Fixed(n) => n,
            PacketSize::Imix => {
                let n = IMIX[self.next];
                self.next = (self.next + 1) % IMIX.len();
                n
            }
        })
    }
}

/// What a payload carries: its flow and its place in that flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub flow: u32,
    pub seq: u64,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8; STAMP_LEN]) {
        out[..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.flow.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
    }

    /// The stamp at the start of a payload, if it has one.
    pub fn parse(payload: &[u8]) -> Option<Stamp> {
        let s = payload.get(..STAMP_LEN)?;
        if s[..4] != MAGIC {
            return None;
        }
        let flow = u32::from_be_bytes([s[4], s[5], s[6], s[7]]);
        let seq = u64::from_be_bytes([s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]]);
        Some(Stamp { flow, seq })
    }
}

/// Writes an IPv4/UDP packet of `len` bytes (at least `MIN_PACKET`, at most `out.len()`) from
/// `src` to `dst` carrying `stamp` then zeros, with both checksums; returns `len`.
pub fn build_udp4(out: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, len: usize, stamp: Stamp) -> usize {
    let len = len.clamp(MIN_PACKET, out.len().max(MIN_PACKET));
    let p = &mut out[..len];
    let udp_len = (len - IPV4_HEADER_LEN) as u16;
    let ip = &mut p[..IPV4_HEADER_LEN];
    ip.copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum(&[ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let (head, udp) = p.split_at_mut(IPV4_HEADER_LEN);
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
    let mut s = [0u8; STAMP_LEN];
    stamp.write(&mut s);
    udp[UDP_HEADER_LEN..UDP_HEADER_LEN + STAMP_LEN].copy_from_slice(&s);
    udp[UDP_HEADER_LEN + STAMP_LEN..].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&head[12..20]);
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    // A computed zero is sent as all ones (zero means "no checksum" in IPv4 UDP).
    let sum = match checksum(&[&pseudo, udp]) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    len
}

/// The source, destination and payload of an IPv4/UDP packet.
pub fn parse_udp4(p: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    if p.len() < IPV4_HEADER_LEN + UDP_HEADER_LEN || p[0] != 0x45 || p[9] != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total < IPV4_HEADER_LEN + UDP_HEADER_LEN || total > p.len() {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let src = SocketAddrV4::new(ip(12), port(IPV4_HEADER_LEN));
    let dst = SocketAddrV4::new(ip(16), port(IPV4_HEADER_LEN + 2));
    Some((src, dst, &p[IPV4_HEADER_LEN + UDP_HEADER_LEN..total]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imix_is_seven_four_one_in_every_dozen() {
        let sizes: Vec<usize> = PacketSize::Imix.schedule().take(36).collect();
        for dozen in sizes.chunks(12) {
            assert_eq!(dozen.iter().filter(|&&n| n == 64).count(), 7);
            assert_eq!(dozen.iter().filter(|&&n| n == 576).count(), 4);
            assert_eq!(dozen.iter().filter(|&&n| n == 1420).count(), 1);
        }
        assert!((PacketSize::Imix.mean() - (7.0 * 64.0 + 4.0 * 576.0 + 1420.0) / 12.0).abs() < 1e-9);
        assert!(PacketSize::Fixed(512).schedule().take(5).all(|n| n == 512));
    }

    #[test]
    fn sizes_parse_within_bounds_only() {
        assert_eq!("64".parse(), Ok(PacketSize::Fixed(64)));
        assert_eq!("1420".parse(), Ok(PacketSize::Fixed(1420)));
        assert_eq!("IMIX".parse(), Ok(PacketSize::Imix));
        for bad in ["63", "1421", "", "big", "-1"] {
            assert!(bad.parse::<PacketSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_built_packet_has_its_length_checksums_and_stamp() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 128, 0, 2), 40_001);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 9);
        for len in [64, 65, 128, 576, 1420] {
            let mut buf = vec![0xaau8; 1500];
            let stamp = Stamp { flow: 7, seq: len as u64 * 3 };
            assert_eq!(build_udp4(&mut buf, src, dst, len, stamp), len);
            let p = &buf[..len];
            assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header checksum");
            let mut pseudo = p[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&((len - 20) as u16).to_be_bytes());
            assert_eq!(checksum(&[&pseudo, &p[20..]]), 0, "UDP checksum at {len}");
            let (s, d, payload) = parse_udp4(p).unwrap();
            assert_eq!((s, d, payload.len()), (src, dst, len - 28));
            assert_eq!(Stamp::parse(payload), Some(stamp));
            assert!(payload[STAMP_LEN..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn foreign_payloads_have_no_stamp_and_short_packets_do_not_parse() {
        assert_eq!(Stamp::parse(b"hello, this is not ours"), None);
        assert_eq!(Stamp::parse(b"wgtL"), None);
        assert!(parse_udp4(&[0x45; 27]).is_none());
        let mut buf = [0u8; 64];
        let a = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        build_udp4(&mut buf, a, a, 64, Stamp { flow: 0, seq: 0 });
        buf[3] = 200; // a total length past the buffer
        assert!(parse_udp4(&buf).is_none());
    }
}
