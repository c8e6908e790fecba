//! What the kernel hands the TUN reader (a virtio_net_hdr and a packet) and what peers send
//! into the GRO coalescer: split, checksum and coalesce must never panic or overrun.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wgturbo::dataplane::packet::offload::{complete_checksum, Coalescer, GsoSplit};
use wgturbo::io::vnet::VnetHdr;
use wgturbo::io::TunWriteBatch;

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::parse(data) else { return };
    let pkt = &data[10..];
    if let Ok(split) = GsoSplit::new(pkt, &hdr) {
        if split.count() <= 1024 {
            let mut buf = vec![0u8; 70_000];
            for i in 0..split.count() {
                let n = split.write_segment(i, &mut buf);
                assert_eq!(n, split.segment_len(i));
            }
        }
    }
    let mut copy = pkt.to_vec();
    let _ = complete_checksum(&mut copy, hdr.csum_start as usize, hdr.csum_offset as usize);
    let mut c = Coalescer::with_udp(hdr.flags & 1 == 1);
    let mut out = TunWriteBatch::default();
    for chunk in pkt.chunks(1 + (hdr.gso_size as usize % 200)) {
        c.push(chunk, &mut out);
        c.push(pkt, &mut out);
    }
    c.drain(&mut out);
    assert!(out.packets().iter().all(|d| d.len() >= 10));
});
