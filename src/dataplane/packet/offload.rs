//! Segmentation and coalescing for the TUN offloads, as pure functions over byte slices:
//! `GsoSplit` cuts a TCP (TSO) or UDP (USO) super-packet the kernel handed us into packets of
//! `gso_size` bytes of payload; `Coalescer` merges consecutive TCP segments, or equal-sized UDP
//! datagrams, of a flow into one super-packet the kernel takes in a single write (GRO). Checksums follow RFC 1071.

use std::collections::HashMap;

use super::checksum::{fold, sum};
use super::header::{at, tcp, udp, v4, v4_header_len, v6, version, PROTO_TCP, PROTO_UDP};
use crate::io::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN};
use crate::io::{TunWriteBatch, MAX_SEGMENTS};

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum OffloadError {
    #[error("super-packet is not IPv4/IPv6 TCP or UDP with sane header lengths")]
    BadHeaders,
    #[error("checksum offsets point outside the packet")]
    BadChecksumOffsets,
    #[error("gso_size of zero")]
    ZeroSegmentSize,
}

/// Sum of the TCP/UDP pseudo-header for a packet whose IP header starts `ip`.
fn pseudo_header_sum(ip: &[u8], l4_len: usize) -> u64 {
    let (proto, addrs) =
        if version(ip[0]) == 4 { (ip[v4::PROTOCOL], &ip[v4::ADDRS]) } else { (ip[v6::NEXT_HEADER], &ip[v6::ADDRS]) };
    sum(addrs, proto as u64 + l4_len as u64)
}

/// Completes a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field holds
/// the pseudo-header sum; the checksum covers everything from `csum_start`.
pub fn complete_checksum(pkt: &mut [u8], csum_start: usize, csum_offset: usize) -> Result<(), OffloadError> {
    let field = csum_start.checked_add(csum_offset).ok_or(OffloadError::BadChecksumOffsets)?;
    if field + 2 > pkt.len() {
        return Err(OffloadError::BadChecksumOffsets);
    }
    let c = !fold(sum(&pkt[csum_start..], 0));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Whether a TCP or UDP packet's checksum holds (over the pseudo-header and the whole
/// segment). A coalesced packet is written with NEEDS_CSUM, so the kernel computes a new
/// checksum and never checks the old ones: a segment corrupted before it was sealed must not
/// be merged (and so repaired), but written alone as it is, for the kernel to drop. A UDP/IPv4
/// datagram without a checksum (zero) has nothing to check, as the kernel's GRO takes it.
fn l4_checksum_valid(pkt: &[u8], ip_hl: usize, udp: bool) -> bool {
    let checksum = ip_hl + udp::CHECKSUM;
    if udp && version(pkt[0]) == 4 && pkt[checksum..checksum + 2] == [0, 0] {
        return true;
    }
    fold(sum(&pkt[ip_hl..], pseudo_header_sum(pkt, pkt.len() - ip_hl))) == 0xffff
}

fn ipv4_header_checksum(ip: &mut [u8], ihl: usize) {
    ip[v4::CHECKSUM].fill(0);
    let c = !fold(sum(&ip[..ihl], 0));
    ip[v4::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

/// The IP header length of an IPv4/IPv6 packet carrying `proto` (no IPv6 extension headers),
/// if the packet holds at least `l4_min` bytes beyond it.
fn ip_header_for(pkt: &[u8], proto: u8, l4_min: usize) -> Option<usize> {
    let ip_hl = match version(*pkt.first()?) {
        4 if pkt.len() >= v4::MIN_LEN && pkt[v4::PROTOCOL] == proto => v4_header_len(pkt[v4::VERSION_IHL]),
        6 if pkt.len() >= v6::LEN && pkt[v6::NEXT_HEADER] == proto => v6::LEN,
        _ => return None,
    };
    (ip_hl >= v4::MIN_LEN && pkt.len() >= ip_hl + l4_min).then_some(ip_hl)
}

/// Lengths of the IP and TCP headers of a TCP packet.
fn tcp_headers(pkt: &[u8]) -> Option<(usize, usize)> {
    let ip_hl = ip_header_for(pkt, PROTO_TCP, tcp::MIN_LEN)?;
    let tcp_hl = usize::from(pkt[ip_hl + tcp::DATA_OFFSET] >> 4) * 4;
    if tcp_hl < tcp::MIN_LEN || pkt.len() < ip_hl + tcp_hl {
        return None;
    }
    Some((ip_hl, tcp_hl))
}

/// Lengths of the IP and UDP headers of a UDP packet.
fn udp_headers(pkt: &[u8]) -> Option<(usize, usize)> {
    Some((ip_header_for(pkt, PROTO_UDP, udp::HEADER_LEN)?, udp::HEADER_LEN))
}

fn be32(p: &[u8], r: std::ops::Range<usize>) -> u32 {
    u32::from_be_bytes([p[r.start], p[r.start + 1], p[r.start + 2], p[r.start + 3]])
}

/// Whether two packets of a flow agree on the IP fields a coalesced packet keeps once: IPv6's
/// version, class and flow label and hop limit; IPv4's TOS, TTL and DF.
fn same_ip_fields(first: &[u8], pkt: &[u8], v6: bool) -> bool {
    if v6 {
        first[..4] == pkt[..4] && first[v6::HOP_LIMIT] == pkt[v6::HOP_LIMIT]
    } else {
        let df = |p: &[u8]| p[v4::FLAGS_FRAGMENT.start] & v4::DONT_FRAGMENT;
        first[v4::TOS] == pkt[v4::TOS] && first[v4::TTL] == pkt[v4::TTL] && df(first) == df(pkt)
    }
}

/// Sets an IP header's length fields for a packet of `len` bytes (and the IPv4 checksum).
fn set_ip_len(p: &mut [u8], ip_hl: usize, len: usize) {
    if version(p[0]) == 4 {
        p[v4::TOTAL_LEN].copy_from_slice(&(len as u16).to_be_bytes());
        ipv4_header_checksum(p, ip_hl);
    } else {
        p[v6::PAYLOAD_LEN].copy_from_slice(&((len - v6::LEN) as u16).to_be_bytes());
    }
}

/// A TSO or USO super-packet and how to cut it.
pub struct GsoSplit<'a> {
    pkt: &'a [u8],
    ip_hl: usize,
    hdr_len: usize,
    gso_size: usize,
    count: usize,
    udp: bool,
}

impl<'a> GsoSplit<'a> {
    /// For a read whose virtio_net_hdr says GSO_TCPV4, GSO_TCPV6 or GSO_UDP_L4.
    pub fn new(pkt: &'a [u8], hdr: &VnetHdr) -> Result<Self, OffloadError> {
        let udp = hdr.gso_type & !GSO_ECN == GSO_UDP_L4;
        let headers = if udp { udp_headers(pkt) } else { tcp_headers(pkt) };
        let (ip_hl, l4_hl) = headers.ok_or(OffloadError::BadHeaders)?;
        let gso_size = hdr.gso_size as usize;
        if gso_size == 0 {
            return Err(OffloadError::ZeroSegmentSize);
        }
        let hdr_len = ip_hl + l4_hl;
        let payload = pkt.len() - hdr_len;
        let count = payload.div_ceil(gso_size).max(1);
        Ok(GsoSplit { pkt, ip_hl, hdr_len, gso_size, count, udp })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Length of segment `i` (headers included).
    pub fn segment_len(&self, i: usize) -> usize {
        let payload = self.pkt.len() - self.hdr_len;
        self.hdr_len + (payload - i * self.gso_size).min(self.gso_size)
    }

    /// Writes segment `i` with its headers fixed up into `dst`; returns its length.
    pub fn write_segment(&self, i: usize, dst: &mut [u8]) -> usize {
        let (len, pending) = self.write_segment_unsummed(i, dst);
        pending.fill(&mut dst[..len]);
        len
    }

    /// As `write_segment`, but the L4 checksum is left for later: the caller runs
    /// `PendingChecksum::fill` on the segment when it is about to seal it, so that the sum is
    /// taken over bytes already in cache, by whichever worker seals the chunk.
    pub fn write_segment_unsummed(&self, i: usize, dst: &mut [u8]) -> (usize, PendingChecksum) {
        let (ip_hl, hdr_len) = (self.ip_hl, self.hdr_len);
        let len = self.segment_len(i);
        let start = hdr_len + i * self.gso_size;
        dst[..hdr_len].copy_from_slice(&self.pkt[..hdr_len]);
        dst[hdr_len..len].copy_from_slice(&self.pkt[start..start + len - hdr_len]);
        let seg = &mut dst[..len];
        if version(seg[0]) == 4 {
            let id = u16::from_be_bytes([seg[v4::ID.start], seg[v4::ID.start + 1]]).wrapping_add(i as u16);
            seg[v4::ID].copy_from_slice(&id.to_be_bytes());
        }
        set_ip_len(seg, ip_hl, len);
        let l4 = ip_hl;
        if self.udp {
            seg[at(l4, udp::LEN)].copy_from_slice(&((len - ip_hl) as u16).to_be_bytes());
        } else {
            let seq = be32(seg, at(l4, tcp::SEQ)).wrapping_add((i * self.gso_size) as u32);
            seg[at(l4, tcp::SEQ)].copy_from_slice(&seq.to_be_bytes());
            if i + 1 != self.count {
                seg[l4 + tcp::FLAGS] &= !(tcp::FIN | tcp::PSH);
            }
            if i != 0 {
                seg[l4 + tcp::FLAGS] &= !tcp::CWR;
            }
        }
        (len, PendingChecksum { l4: l4 as u16, udp: self.udp })
    }
}

/// The L4 checksum a cut segment still needs: where its TCP or UDP header starts. Everything
/// else it covers (addresses, protocol, length, payload) is in the segment itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingChecksum {
    l4: u16,
    udp: bool,
}

impl PendingChecksum {
    /// Computes and writes the checksum of `seg` (exactly the segment, `write_segment`'s
    /// length). A segment too short for its headers is left as it is.
    pub fn fill(&self, seg: &mut [u8]) {
        let l4 = self.l4 as usize;
        let at = l4 + if self.udp { udp::CHECKSUM } else { tcp::CHECKSUM };
        if at + 2 > seg.len() {
            return;
        }
        seg[at..at + 2].fill(0);
        let mut c = !fold(sum(&seg[l4..], pseudo_header_sum(seg, seg.len() - l4)));
        if self.udp && c == 0 {
            c = 0xffff; // RFC 768: a computed zero is sent as all ones
        }
        seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// The flow a segment belongs to: addresses, ports and protocol, as raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    addrs: [u8; 32],
    ports: [u8; 4],
    v6: bool,
    udp: bool,
}

impl FlowKey {
    /// The flow of a TCP or UDP packet whose IP header is `ip_hl` bytes long.
    fn of(pkt: &[u8], ip_hl: usize, v6: bool, udp: bool) -> FlowKey {
        let mut key = FlowKey { addrs: [0; 32], ports: [0; 4], v6, udp };
        if v6 {
            key.addrs.copy_from_slice(&pkt[v6::ADDRS]);
        } else {
            key.addrs[..8].copy_from_slice(&pkt[v4::ADDRS]);
        }
        key.ports.copy_from_slice(&pkt[at(ip_hl, tcp::PORTS)]);
        key
    }
}

struct Item {
    key: FlowKey,
    /// VNET_HDR_LEN bytes of room, then the first packet's headers, then all payloads.
    data: Vec<u8>,
    ip_hl: usize,
    hdr_len: usize,
    gso_size: usize,
    last_len: usize,
    count: usize,
    next_seq: u32,
    open: bool,
}

/// Up to this many bytes per coalesced packet (the IP length field's limit).
const MAX_COALESCED: usize = 65_535;
/// Packets held before they are written, at most: many small flows (a flood of them through
/// one authenticated peer) then flush early instead of holding a buffer each.
pub const MAX_ITEMS: usize = 512;

/// Coalesces a batch of received packets, in order, into as few TUN writes as possible. Its
/// buffers come from, and go to, the TUN write batch. UDP datagrams are coalesced only when
/// the TUN took USO (`with_udp`), since only then does the kernel accept GSO_UDP_L4 writes.
#[derive(Default)]
pub struct Coalescer {
    items: Vec<Item>,
    /// Each flow's latest item, so finding it costs a hash, not a scan of every item.
    latest: HashMap<FlowKey, usize>,
    udp: bool,
}

fn tcp_flags(pkt: &[u8], ip_hl: usize) -> u8 {
    pkt[ip_hl + tcp::FLAGS]
}

impl Coalescer {
    /// A coalescer that also merges UDP datagrams.
    pub fn with_udp(udp: bool) -> Self {
        Coalescer { items: Vec::new(), latest: HashMap::new(), udp }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The flow's latest item. Most packets continue the flow of the packet before them, and
    /// the last item is always the latest of its flow, so the hash is taken only on a change.
    fn latest_item(&mut self, key: &FlowKey) -> Option<&mut Item> {
        let i = match self.items.last() {
            Some(last) if last.key == *key => self.items.len() - 1,
            _ => *self.latest.get(key)?,
        };
        self.items.get_mut(i)
    }

    /// Takes a TCP (or, with USO, UDP) packet (true) or leaves it to the caller to write as it
    /// is (false).
    pub fn push(&mut self, pkt: &[u8], out: &mut TunWriteBatch) -> bool {
        if self.udp && udp_headers(pkt).is_some() {
            return self.push_udp(pkt, out);
        }
        let Some((ip_hl, tcp_hl)) = tcp_headers(pkt) else { return false };
        let v6 = version(pkt[0]) == 6;
        if !v6 && ip_hl != 20 {
            return false; // IP options: leave it alone
        }
        let key = FlowKey::of(pkt, ip_hl, v6, false);
        let hdr_len = ip_hl + tcp_hl;
        let payload = &pkt[hdr_len..];
        let flags = tcp_flags(pkt, ip_hl);
        let seq = be32(pkt, at(ip_hl, tcp::SEQ));
        let plain = flags & !tcp::PSH == tcp::ACK_FLAG;
        // IPv4 fragments never coalesce.
        let fragment = !v6
            && (u16::from_be_bytes([pkt[v4::FLAGS_FRAGMENT.start], pkt[v4::FLAGS_FRAGMENT.start + 1]])
                & v4::FRAGMENT_MASK)
                != 0;
        let mergeable = plain && !payload.is_empty() && !fragment && l4_checksum_valid(pkt, ip_hl, false);

        if mergeable {
            if let Some(item) = self.latest_item(&key) {
                if item.open && Self::can_append(item, pkt, ip_hl, hdr_len, seq, payload.len()) {
                    Self::grow_for_coalescing(item);
                    item.data.extend_from_slice(payload);
                    item.count += 1;
                    item.last_len = payload.len();
                    item.next_seq = seq.wrapping_add(payload.len() as u32);
                    if flags & tcp::PSH != 0 {
                        let at = VNET_HDR_LEN + ip_hl + tcp::FLAGS;
                        item.data[at] |= tcp::PSH;
                        item.open = false;
                    }
                    return true;
                }
            }
        }
        // A new item, also for segments that cannot merge, so a flow keeps its order.
        let open = mergeable && flags & tcp::PSH == 0;
        self.start_item(out, pkt, key, (ip_hl, hdr_len), seq.wrapping_add(payload.len() as u32), open);
        true
    }

    /// UDP: datagrams of a flow with the same payload size (the last may be shorter) and the
    /// same IP header fields join one GSO_UDP_L4 super-packet, as the kernel's UDP GRO does.
    fn push_udp(&mut self, pkt: &[u8], out: &mut TunWriteBatch) -> bool {
        let Some((ip_hl, _)) = udp_headers(pkt) else { return false };
        let v6 = version(pkt[0]) == 6;
        let fragment = !v6
            && (u16::from_be_bytes([pkt[v4::FLAGS_FRAGMENT.start], pkt[v4::FLAGS_FRAGMENT.start + 1]])
                & v4::FRAGMENT_MASK)
                != 0;
        let udp_len = usize::from(u16::from_be_bytes([pkt[ip_hl + udp::LEN.start], pkt[ip_hl + udp::LEN.start + 1]]));
        if (!v6 && ip_hl != 20) || fragment || udp_len != pkt.len() - ip_hl {
            return false; // options, fragments or a length that lies: deliver it alone
        }
        let key = FlowKey::of(pkt, ip_hl, v6, true);
        let hdr_len = ip_hl + udp::HEADER_LEN;
        let payload = &pkt[hdr_len..];
        if !l4_checksum_valid(pkt, ip_hl, true) {
            // Alone and closed, in its place in the flow: written as it came.
            self.start_item(out, pkt, key, (ip_hl, hdr_len), 0, false);
            return true;
        }
        if let Some(item) = self.latest_item(&key) {
            let first = &item.data[VNET_HDR_LEN..VNET_HDR_LEN + item.hdr_len];
            let ip_same = same_ip_fields(first, pkt, v6);
            if item.open
                && ip_same
                && !payload.is_empty()
                && payload.len() <= item.gso_size
                && item.count < MAX_SEGMENTS
                && item.data.len() - VNET_HDR_LEN + payload.len() <= MAX_COALESCED
            {
                Self::grow_for_coalescing(item);
                item.data.extend_from_slice(payload);
                item.count += 1;
                item.last_len = payload.len();
                item.open = payload.len() == item.gso_size;
                return true;
            }
        }
        self.start_item(out, pkt, key, (ip_hl, hdr_len), 0, !payload.is_empty());
        true
    }

    /// The second packet of an item: room for a whole super-packet at once (a lone packet
    /// keeps a buffer of its own size).
    fn grow_for_coalescing(item: &mut Item) {
        if item.count == 1 {
            item.data.reserve(VNET_HDR_LEN + MAX_COALESCED - item.data.len());
        }
    }

    /// A new item holding `pkt` alone, in a buffer from the TUN batch's pool. At `MAX_ITEMS`
    /// the items so far are written out first (order is kept: they came before).
    fn start_item(
        &mut self,
        out: &mut TunWriteBatch,
        pkt: &[u8],
        key: FlowKey,
        (ip_hl, hdr_len): (usize, usize),
        next_seq: u32,
        open: bool,
    ) {
        if self.items.len() >= MAX_ITEMS {
            self.drain(out);
        }
        let mut data = out.take_buf();
        data.reserve(VNET_HDR_LEN + pkt.len());
        data.resize(VNET_HDR_LEN, 0);
        data.extend_from_slice(pkt);
        let payload_len = pkt.len() - hdr_len;
        self.latest.insert(key, self.items.len());
        self.items.push(Item {
            key,
            data,
            ip_hl,
            hdr_len,
            gso_size: payload_len,
            last_len: payload_len,
            count: 1,
            next_seq,
            open,
        });
    }

    fn can_append(item: &Item, pkt: &[u8], ip_hl: usize, hdr_len: usize, seq: u32, len: usize) -> bool {
        let first = &item.data[VNET_HDR_LEN..VNET_HDR_LEN + item.hdr_len];
        if hdr_len != item.hdr_len || seq != item.next_seq || len > item.gso_size || item.last_len != item.gso_size {
            return false;
        }
        if item.data.len() - VNET_HDR_LEN + len > MAX_COALESCED {
            return false;
        }
        // IP: same TOS/traffic class, TTL/hop limit, DF; TCP: same ack, window and options.
        let ip_same = same_ip_fields(first, pkt, item.key.v6);
        let t = ip_hl;
        ip_same
            && first[at(t, tcp::ACK)] == pkt[at(t, tcp::ACK)]
            && first[at(t, tcp::WINDOW)] == pkt[at(t, tcp::WINDOW)]
            && first[t + tcp::OPTIONS..hdr_len] == pkt[t + tcp::OPTIONS..hdr_len]
    }

    /// Moves every item (virtio_net_hdr first) into `out` in arrival order.
    pub fn drain(&mut self, out: &mut TunWriteBatch) {
        self.latest.clear();
        for mut item in self.items.drain(..) {
            let d = &mut item.data;
            let hdr = if item.count == 1 {
                VnetHdr { gso_type: GSO_NONE, ..Default::default() }
            } else {
                let ip = VNET_HDR_LEN;
                let total = d.len() - VNET_HDR_LEN;
                let l4_len = total - item.ip_hl;
                set_ip_len(&mut d[ip..], item.ip_hl, total);
                let l4 = ip + item.ip_hl;
                let (gso_type, csum_offset) = match (item.key.udp, item.key.v6) {
                    (true, _) => {
                        d[at(l4, udp::LEN)].copy_from_slice(&(l4_len as u16).to_be_bytes());
                        (GSO_UDP_L4, udp::CHECKSUM)
                    }
                    (false, true) => (GSO_TCPV6, tcp::CHECKSUM),
                    (false, false) => (GSO_TCPV4, tcp::CHECKSUM),
                };
                // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
                let pseudo = fold(pseudo_header_sum(&d[ip..], l4_len));
                d[l4 + csum_offset..l4 + csum_offset + 2].copy_from_slice(&pseudo.to_be_bytes());
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type,
                    hdr_len: item.hdr_len as u16,
                    gso_size: item.gso_size as u16,
                    csum_start: item.ip_hl as u16,
                    csum_offset: csum_offset as u16,
                }
            };
            hdr.write(&mut d[..VNET_HDR_LEN]);
            out.push(item.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::tcp::{ACK_FLAG as TCP_ACK, FIN as TCP_FIN, PSH as TCP_PSH};
    use super::super::header::{PROTO_TCP, PROTO_UDP};
    use super::*;

    /// A TCP/IPv4 packet with a valid checksum and `payload` bytes of data.
    fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32];
        p[0] = 0x45;
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&7u32.to_be_bytes());
        p[32] = 8 << 4; // 32-byte TCP header (timestamps)
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        let len = p.len();
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        ipv4_header_checksum(&mut p, 20);
        let c = !fold(sum(&p[20..], pseudo_header_sum(&p, len - 20)));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// A flood of small flows through one authenticated peer (each packet its own flow): the
    /// coalescer holds at most MAX_ITEMS packets, each in a buffer of its own size, finds
    /// flows by hash, and keeps the order. A flow that does coalesce still does.
    #[test]
    fn many_small_flows_stay_bounded_and_in_order() {
        let mut c = Coalescer::with_udp(true);
        let mut out = TunWriteBatch::default();
        let flows = 5000u16;
        for i in 0..flows {
            let mut p = tcp4(1, TCP_ACK, &[i as u8; 100]);
            p[20..22].copy_from_slice(&(10_000 + i).to_be_bytes()); // a new source port
            assert!(c.push(&p, &mut out));
            assert!(c.items.len() <= MAX_ITEMS && c.latest.len() <= MAX_ITEMS);
        }
        c.drain(&mut out);
        assert_eq!(out.len(), flows as usize);
        let held: usize = out.packets().iter().map(|p| p.capacity()).sum();
        assert!(held < flows as usize * 1024, "lone packets keep small buffers: {held} bytes");
        let ports: Vec<u16> =
            out.packets().iter().map(|p| u16::from_be_bytes([p[VNET_HDR_LEN + 20], p[VNET_HDR_LEN + 21]])).collect();
        assert!(ports.windows(2).all(|w| w[0] < w[1]), "arrival order kept");
        // And one flow of full segments still becomes one super-packet.
        out.clear();
        for k in 0..10u32 {
            assert!(c.push(&tcp4(1 + k * 1000, TCP_ACK, &[7; 1000]), &mut out));
        }
        c.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out.packets()[0].len(), VNET_HDR_LEN + 52 + 10_000);
    }

    fn valid(p: &[u8]) -> bool {
        let (ip_hl, _) = tcp_headers(p).unwrap();
        let ip_ok = p[0] >> 4 == 6 || fold(sum(&p[..ip_hl], 0)) == 0xffff;
        ip_ok && fold(sum(&p[ip_hl..], pseudo_header_sum(p, p.len() - ip_hl))) == 0xffff
    }

    #[test]
    fn test_packets_carry_valid_checksums() {
        assert!(valid(&tcp4(1, TCP_ACK, b"hello")));
    }

    /// The deferred sum is the same as the immediate one, and a slice too short for the
    /// checksum field is left alone rather than indexed past its end.
    #[test]
    fn a_deferred_checksum_matches_and_tolerates_short_slices() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
        let big = tcp4(77, TCP_ACK, &payload);
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1000, ..Default::default() };
        let split = GsoSplit::new(&big, &hdr).unwrap();
        for i in 0..split.count() {
            let (mut now, mut later) = (vec![0u8; 1100], vec![0u8; 1100]);
            let n = split.write_segment(i, &mut now);
            let (m, pending) = split.write_segment_unsummed(i, &mut later);
            assert_eq!(n, m);
            pending.fill(&mut later[..m]);
            assert_eq!(now[..n], later[..m], "segment {i}");
        }
        let (_, pending) = split.write_segment_unsummed(0, &mut vec![0u8; 1100]);
        let mut short = vec![0x45u8; 30];
        pending.fill(&mut short);
        assert_eq!(short, vec![0x45u8; 30]);
    }

    #[test]
    fn tso_split_then_coalesce_is_identity() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let big = tcp4(1000, TCP_ACK | TCP_PSH, &payload);
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1400, ..Default::default() };
        let split = GsoSplit::new(&big, &hdr).unwrap();
        assert_eq!(split.count(), 8);
        let mut segs = Vec::new();
        for i in 0..split.count() {
            let mut buf = vec![0u8; 2000];
            let n = split.write_segment(i, &mut buf);
            buf.truncate(n);
            assert!(valid(&buf), "segment {i} checksums");
            let flags = buf[33];
            assert_eq!(flags & TCP_PSH != 0, i == 7, "PSH only on the last segment");
            segs.push(buf);
        }
        assert_eq!(segs[7].len(), 52 + 10_000 - 7 * 1400);
        let mut c = Coalescer::default();
        let mut batch = TunWriteBatch::default();
        for s in &segs {
            assert!(c.push(s, &mut batch));
        }
        c.drain(&mut batch);
        let out = batch.packets();
        assert_eq!(out.len(), 1, "one super-packet");
        let v = VnetHdr::parse(&out[0]).unwrap();
        assert_eq!((v.gso_type, v.gso_size, v.hdr_len, v.csum_start, v.csum_offset), (GSO_TCPV4, 1400, 52, 20, 16));
        let merged = &out[0][VNET_HDR_LEN..];
        assert_eq!(&merged[52..], &payload[..]);
        assert_eq!(u16::from_be_bytes([merged[2], merged[3]]) as usize, merged.len());
        assert_eq!(fold(sum(&merged[..20], 0)), 0xffff);
        // Completing the partial checksum gives the original super-packet's checksum.
        let mut done = merged.to_vec();
        complete_checksum(&mut done, 20, 16).unwrap();
        assert!(valid(&done));
    }

    #[test]
    fn coalescer_keeps_order_and_refuses_gaps() {
        let mut c = Coalescer::default();
        let mut b = TunWriteBatch::default();
        assert!(c.push(&tcp4(0, TCP_ACK, &[1; 100]), &mut b));
        assert!(c.push(&tcp4(100, TCP_ACK, &[2; 100]), &mut b));
        assert!(c.push(&tcp4(300, TCP_ACK, &[3; 100]), &mut b)); // gap: new item
        assert!(c.push(&tcp4(400, TCP_ACK | TCP_FIN, &[4; 10]), &mut b)); // FIN: never merged
        assert!(!c.push(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], &mut b)); // UDP
        c.drain(&mut b);
        let sizes: Vec<usize> = b.packets().iter().map(|d| d.len() - VNET_HDR_LEN).collect();
        assert_eq!(sizes, vec![52 + 200, 52 + 100, 52 + 10]);
        assert!(c.is_empty());
    }

    /// A segment whose checksum fails (corrupted before it was sealed) is never merged: it
    /// is written alone and unchanged, and its flow's valid neighbours still coalesce around it
    /// in order.
    #[test]
    fn a_corrupted_segment_is_written_alone_as_it_came() {
        let mut c = Coalescer::with_udp(true);
        let mut b = TunWriteBatch::default();
        let mut bad = tcp4(100, TCP_ACK, &[2; 100]);
        bad[60] ^= 0x40; // a flipped bit in the payload
        assert!(!valid(&bad));
        assert!(c.push(&tcp4(0, TCP_ACK, &[1; 100]), &mut b));
        assert!(c.push(&bad, &mut b));
        assert!(c.push(&tcp4(200, TCP_ACK, &[3; 100]), &mut b));
        assert!(c.push(&tcp4(300, TCP_ACK, &[4; 100]), &mut b));
        c.drain(&mut b);
        let out: Vec<&[u8]> = b.packets().iter().map(|d| &d[VNET_HDR_LEN..]).collect();
        assert_eq!(out.len(), 3, "good, bad alone, then the next two merged");
        assert_eq!(out[1], &bad[..], "the corrupted segment is written unchanged");
        assert_eq!(VnetHdr::parse(b.packets()[1].as_slice()).unwrap().flags & F_NEEDS_CSUM, 0);
        assert_eq!(out[2].len(), 52 + 200);
        // UDP: the same, and a datagram without a checksum (IPv4 zero) still coalesces.
        let mut c = Coalescer::with_udp(true);
        let mut b = TunWriteBatch::default();
        let mut bad = udp6(&[5; 100]);
        bad[70] ^= 1;
        for p in [udp6(&[5; 100]), bad.clone(), udp6(&[5; 100]), udp6(&[5; 100])] {
            assert!(c.push(&p, &mut b));
        }
        c.drain(&mut b);
        let sizes: Vec<usize> = b.packets().iter().map(|d| d.len() - VNET_HDR_LEN).collect();
        assert_eq!(sizes, vec![148, 148, 248]);
        assert_eq!(&b.packets()[1][VNET_HDR_LEN..], &bad[..]);
    }

    #[test]
    fn needs_csum_completion() {
        let mut p = tcp4(5, TCP_ACK, b"abcdefg");
        let good = p.clone();
        // What the kernel hands over: the pseudo-header sum in the field.
        let pseudo = fold(pseudo_header_sum(&p, p.len() - 20));
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut p, 20, 16).unwrap();
        assert_eq!(p, good);
        assert_eq!(complete_checksum(&mut p, 20, 9999), Err(OffloadError::BadChecksumOffsets));
        assert_eq!(complete_checksum(&mut p, usize::MAX, 2), Err(OffloadError::BadChecksumOffsets));
    }

    #[test]
    fn malformed_super_packets_are_refused() {
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1400, ..Default::default() };
        assert!(GsoSplit::new(&[0x45; 10], &hdr).is_err());
        let mut p = tcp4(1, TCP_ACK, &[0; 4]);
        p[32] = 15 << 4; // a 60-byte TCP header in a 56-byte packet
        assert!(GsoSplit::new(&p, &hdr).is_err());
        let zero = VnetHdr { gso_size: 0, ..hdr };
        assert_eq!(GsoSplit::new(&tcp4(1, TCP_ACK, &[0; 10]), &zero).err(), Some(OffloadError::ZeroSegmentSize));
    }

    /// A UDP/IPv6 datagram with a valid checksum.
    fn udp6(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[6] = PROTO_UDP;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[40..42].copy_from_slice(&4000u16.to_be_bytes());
        p[42..44].copy_from_slice(&5201u16.to_be_bytes());
        p.extend_from_slice(payload);
        let len = p.len();
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[44..46].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        let c = !fold(sum(&p[40..], pseudo_header_sum(&p, len - 40)));
        p[46..48].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn udp_valid(p: &[u8]) -> bool {
        let ip_hl = if p[0] >> 4 == 6 { 40 } else { 20 };
        u16::from_be_bytes([p[ip_hl + 4], p[ip_hl + 5]]) as usize == p.len() - ip_hl
            && fold(sum(&p[ip_hl..], pseudo_header_sum(p, p.len() - ip_hl))) == 0xffff
    }

    #[test]
    fn uso_split_then_udp_coalesce_is_identity() {
        let payload: Vec<u8> = (0..5_000u32).map(|i| (i * 13) as u8).collect();
        let big = udp6(&payload);
        let hdr = VnetHdr { gso_type: GSO_UDP_L4, gso_size: 1200, ..Default::default() };
        let split = GsoSplit::new(&big, &hdr).unwrap();
        assert_eq!(split.count(), 5);
        let mut segs = Vec::new();
        for i in 0..split.count() {
            let mut buf = vec![0u8; 2000];
            let n = split.write_segment(i, &mut buf);
            buf.truncate(n);
            assert!(udp_valid(&buf), "datagram {i} has its own length and checksum");
            segs.push(buf);
        }
        assert_eq!(segs[4].len(), 48 + 5_000 - 4 * 1200);
        // Without USO on the TUN the coalescer leaves UDP alone.
        let mut out = TunWriteBatch::default();
        assert!(!Coalescer::default().push(&segs[0], &mut out));
        let mut c = Coalescer::with_udp(true);
        for s in &segs {
            assert!(c.push(s, &mut out));
        }
        c.drain(&mut out);
        assert_eq!(out.len(), 1, "one GSO_UDP_L4 packet");
        let v = VnetHdr::parse(&out.packets()[0]).unwrap();
        assert_eq!((v.gso_type, v.gso_size, v.hdr_len, v.csum_start, v.csum_offset), (GSO_UDP_L4, 1200, 48, 40, 6));
        let mut merged = out.packets()[0][VNET_HDR_LEN..].to_vec();
        assert_eq!(&merged[48..], &payload[..]);
        complete_checksum(&mut merged, 40, 6).unwrap();
        assert_eq!(merged, big, "completing the partial checksum gives back the super-packet");
    }

    #[test]
    fn udp_coalescing_stops_at_a_short_datagram_and_a_new_flow() {
        let mut out = TunWriteBatch::default();
        let mut c = Coalescer::with_udp(true);
        for len in [100, 100, 60, 100] {
            assert!(c.push(&udp6(&vec![1; len]), &mut out));
        }
        let mut other = udp6(&[2; 100]);
        other[41] ^= 1; // another source port: another flow
        assert!(c.push(&other, &mut out));
        c.drain(&mut out);
        let sizes: Vec<usize> = out.packets().iter().map(|d| d.len() - VNET_HDR_LEN - 48).collect();
        assert_eq!(sizes, vec![260, 100, 100], "100+100+60 merge; the next 100 starts anew");
    }
}
