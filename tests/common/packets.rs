//! Packets as a host's network stack hands them to a TUN, for the twin tests and the pipeline
//! benchmark.
#![allow(dead_code)] // each user takes what it needs

use wgturbo::io::vnet::{VnetHdr, GSO_TCPV4, VNET_HDR_LEN};

pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header for `proto` from 10.0.0.`src` to 10.0.0.`dst` around `l4`.
pub fn ipv4(src: u8, dst: u8, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&[10, 0, 0, src]);
    p[16..20].copy_from_slice(&[10, 0, 0, dst]);
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

pub fn udp_packet(src: u8, dst: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&4000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&5000u16.to_be_bytes());
    l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(payload);
    ipv4(src, dst, 17, &l4)
}

/// A TCP super-packet as a TUN with TSO hands it over: virtio_net_hdr, then the packet.
pub fn tso_read(src: u8, dst: u8, seq: u32, payload: &[u8], mss: u16) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&4000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&5001u16.to_be_bytes());
    l4[4..8].copy_from_slice(&seq.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = 0x10; // ACK
    l4[14..16].copy_from_slice(&1024u16.to_be_bytes());
    l4.extend_from_slice(payload);
    let pkt = ipv4(src, dst, 6, &l4);
    let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: mss, hdr_len: 40, ..Default::default() };
    let mut framed = vec![0u8; VNET_HDR_LEN];
    hdr.write(&mut framed);
    framed.extend_from_slice(&pkt);
    framed
}
