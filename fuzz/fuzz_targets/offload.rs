//! What the kernel hands the TUN reader (a virtio_net_hdr and a packet) and what peers send
//! into the GRO coalescer: split, checksum and coalesce must never panic or overrun.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wgturbo::dataplane::offload::{complete_checksum, Coalescer, TsoSplit};
use wgturbo::io::vnet::VnetHdr;

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::parse(data) else { return };
    let pkt = &data[10..];
    if let Ok(split) = TsoSplit::new(pkt, &hdr) {
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
    let mut c = Coalescer::default();
    for chunk in pkt.chunks(1 + (hdr.gso_size as usize % 200)) {
        c.push(chunk);
        c.push(pkt);
    }
    c.drain(|d| assert!(d.len() >= 10));
});
