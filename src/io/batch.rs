//! The batches that cross the I/O seam, as plain data: every backend (io_uring, syscalls, the
//! in-memory twin) fills or drains the same types, so the worker above never knows which runs.
//!
//! Reads hand out buffers the backend owns ([`Buf`]), moved to the worker and given back once
//! processed, so an io_uring read never points at memory the worker is using. Writes take
//! batches the worker owns ([`SendBatch`], [`TunWriteBatch`]); a backend returns from a write
//! call only when the kernel is done with them.

use std::net::SocketAddr;

use super::vnet::VNET_HDR_LEN;

/// One read buffer: a TUN packet (with its virtio_net_hdr first, when the queue has one) or a
/// UDP receive holding one or more datagrams of `stride` bytes (the last may be shorter).
pub struct Buf {
    pub data: Box<[u8]>,
    /// Where the received bytes start in `data` (after the header of an io_uring multishot
    /// receive; 0 otherwise), and how many there are.
    pub start: usize,
    pub len: usize,
    pub src: Option<SocketAddr>,
    pub stride: usize,
    /// Bytes of this receive the kernel discarded unread (a skimmed GRO train's tail).
    pub cut: usize,
}

impl Buf {
    pub fn new(size: usize) -> Self {
        Buf { data: vec![0u8; size].into_boxed_slice(), start: 0, len: 0, src: None, stride: 0, cut: 0 }
    }

    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }

    pub fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.start + self.len]
    }
}

/// Segments one offloaded packet holds at most, the kernel's limit both ways: datagrams in a
/// UDP GSO send (UDP_MAX_SEGMENTS on older kernels) or a GRO receive (UDP_GRO_CNT_MAX), and
/// the segments of a `GSO_UDP_L4` packet written to the TUN.
pub const MAX_SEGMENTS: usize = 64;
/// Largest GSO send: the UDP length field's limit, less room for headers.
const MAX_GSO_BYTES: usize = 65_000;

/// The arena of a send batch comes in chunks of this size: a chunk holds one full GSO group
/// (64 datagrams of a 1420-byte MTU do not fit; 45 do), and is the unit handed to another
/// thread to seal (moved out and back, never shared).
pub const SEND_CHUNK: usize = 64 * 1024;

/// A run of datagrams to one endpoint, sent as one message (UDP GSO) when `count > 1`. A group
/// never spans chunks.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub chunk: usize,
    pub start: usize,
    pub len: usize,
    pub segment: usize,
    pub count: usize,
    /// A shorter datagram ended the group.
    closed: bool,
    pub addr: SocketAddr,
}

/// Datagrams to several endpoints, written in place into a chunked arena. Consecutive
/// datagrams to the same endpoint with the same size (the last may be shorter) form one GSO
/// group.
pub struct SendBatch {
    chunks: Vec<Vec<u8>>,
    /// The chunk being written, and where its free space starts.
    current: usize,
    tail: usize,
    groups: Vec<Group>,
    max_groups: usize,
    gso: bool,
}

impl SendBatch {
    /// `chunks` chunks of `SEND_CHUNK` bytes, at most `max_groups` messages; `gso` allows UDP
    /// GSO groups.
    pub fn new(chunks: usize, max_groups: usize, gso: bool) -> Self {
        SendBatch {
            chunks: (0..chunks.max(1)).map(|_| vec![0u8; SEND_CHUNK]).collect(),
            current: 0,
            tail: 0,
            groups: Vec::with_capacity(max_groups),
            max_groups,
            gso,
        }
    }

    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// Used by a backend whose kernel refused GSO: every later datagram is its own message.
    pub fn disable_gso(&mut self) {
        self.gso = false;
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Room for one more datagram of up to `bytes`, even if it cannot join the last group?
    pub fn has_room(&self, bytes: usize) -> bool {
        self.groups.len() < self.max_groups
            && (self.tail + bytes <= self.chunks[self.current].len() || self.current + 1 < self.chunks.len())
    }

    /// Space for the next datagram of up to `bytes` (the caller checked `has_room`): in the
    /// current chunk, or at the start of the next. A datagram larger than a chunk (a jumbo MTU)
    /// grows its chunk once. Returns the chunk's index and the space.
    pub fn reserve(&mut self, bytes: usize) -> (usize, &mut [u8]) {
        if self.tail + bytes > self.chunks[self.current].len() && self.tail > 0 && self.current + 1 < self.chunks.len()
        {
            self.current += 1;
            self.tail = 0;
        }
        let chunk = &mut self.chunks[self.current];
        if chunk.len() < self.tail + bytes {
            chunk.resize(self.tail + bytes, 0);
        }
        (self.current, &mut chunk[self.tail..self.tail + bytes])
    }

    /// Appends the `len` bytes written at the start of the space `reserve` gave as one
    /// datagram; returns where it lies (chunk, offset).
    pub fn commit(&mut self, len: usize, addr: SocketAddr) -> (usize, usize) {
        let (chunk, start) = (self.current, self.tail);
        self.tail += len;
        if self.gso {
            if let Some(g) = self.groups.last_mut() {
                if g.chunk == chunk
                    && g.addr == addr
                    && !g.closed
                    && len <= g.segment
                    && g.count < MAX_SEGMENTS
                    && g.len + len <= MAX_GSO_BYTES
                {
                    g.len += len;
                    g.count += 1;
                    g.closed = len < g.segment;
                    return (chunk, start);
                }
            }
        }
        self.groups.push(Group { chunk, start, len, segment: len, count: 1, closed: false, addr });
        (chunk, start)
    }

    /// Ends the last group: the next datagram starts a message of its own even when it goes
    /// to the same endpoint with the same size. For a sender whose trains must be one flow's
    /// back-to-back datagrams, as a NIC's GRO would have built them.
    pub fn close_group(&mut self) {
        if let Some(g) = self.groups.last_mut() {
            g.closed = true;
        }
    }

    /// Moves chunk `i` out (to be sealed on another thread); `put_chunk` must bring it back
    /// before the batch is sent or written again.
    pub fn take_chunk(&mut self, i: usize) -> Vec<u8> {
        std::mem::take(&mut self.chunks[i])
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn put_chunk(&mut self, i: usize, chunk: Vec<u8>) {
        self.chunks[i] = chunk;
    }

    pub fn chunk_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.chunks[i]
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The bytes of a group (all its datagrams back to back).
    pub fn bytes(&self, g: &Group) -> &[u8] {
        &self.chunks[g.chunk][g.start..g.start + g.len]
    }

    /// The datagrams of a group one by one, for a backend that cannot send it whole.
    pub fn datagrams<'a>(&'a self, g: &Group) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.bytes(g).chunks(g.segment.max(1))
    }

    pub fn datagram_count(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    pub fn clear(&mut self) {
        self.groups.clear();
        self.current = 0;
        self.tail = 0;
    }
}

/// Buffers kept for reuse at most; beyond, a written buffer is freed (bounded memory).
const TUN_POOL_MAX: usize = 256;

/// Packets for the TUN, each `VNET_HDR_LEN` bytes of virtio_net_hdr then the packet. A queue
/// without vnet_hdr writes each from `VNET_HDR_LEN` on.
#[derive(Default)]
pub struct TunWriteBatch {
    packets: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
}

impl TunWriteBatch {
    /// An empty buffer to build one packet in (from the pool when there is one).
    pub fn take_buf(&mut self) -> Vec<u8> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v
    }

    /// A buffer holding a zeroed virtio_net_hdr (no offload) and `packet`.
    pub fn push_plain(&mut self, packet: &[u8]) {
        let mut v = self.take_buf();
        v.resize(VNET_HDR_LEN, 0);
        v.extend_from_slice(packet);
        self.packets.push(v);
    }

    /// A buffer built by the caller: virtio_net_hdr first.
    pub fn push(&mut self, framed: Vec<u8>) {
        self.packets.push(framed);
    }

    pub fn packets(&self) -> &[Vec<u8>] {
        &self.packets
    }

    /// Moves the packets out, for a backend that must keep their memory (the kernel may
    /// still read it); the batch is left empty.
    pub fn take_packets(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.packets)
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Empties the batch, keeping up to `TUN_POOL_MAX` buffers for reuse.
    pub fn clear(&mut self) {
        for v in self.packets.drain(..) {
            if self.pool.len() < TUN_POOL_MAX {
                self.pool.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn put(b: &mut SendBatch, len: usize, to: SocketAddr) -> (usize, usize) {
        assert!(b.has_room(len));
        b.reserve(len).1.fill(len as u8);
        b.commit(len, to)
    }

    #[test]
    fn equal_datagrams_to_one_endpoint_form_one_group() {
        let mut b = SendBatch::new(1, 16, true);
        for _ in 0..3 {
            put(&mut b, 100, addr(1));
        }
        put(&mut b, 60, addr(1)); // shorter: ends the group
        put(&mut b, 100, addr(1)); // so this starts a new one
        put(&mut b, 100, addr(2));
        let shape: Vec<_> = b.groups().iter().map(|g| (g.count, g.segment, g.len)).collect();
        assert_eq!(shape, vec![(4, 100, 360), (1, 100, 100), (1, 100, 100)]);
        let sizes: Vec<usize> = b.datagrams(&b.groups()[0]).map(|d| d.len()).collect();
        assert_eq!(sizes, vec![100, 100, 100, 60]);
        assert_eq!(b.datagram_count(), 6);
    }

    #[test]
    fn without_gso_every_datagram_is_a_group_and_room_counts_groups() {
        let mut b = SendBatch::new(1, 3, false);
        for _ in 0..3 {
            put(&mut b, 10, addr(1));
        }
        assert!(!b.has_room(10), "three groups is the limit");
        b.clear();
        assert!(b.is_empty() && b.has_room(10));
    }

    #[test]
    fn groups_stay_within_a_chunk_and_chunks_move_out_and_back() {
        let mut b = SendBatch::new(3, 64, true);
        let per_chunk = SEND_CHUNK / 1000;
        let mut places = Vec::new();
        for _ in 0..per_chunk + 1 {
            places.push(put(&mut b, 1000, addr(1)));
        }
        assert_eq!(places[per_chunk - 1], (0, (per_chunk - 1) * 1000));
        assert_eq!(places[per_chunk], (1, 0), "a datagram that does not fit starts the next chunk");
        assert!(b.groups().iter().all(|g| g.start + g.len <= SEND_CHUNK));
        assert_eq!(b.groups().last().map(|g| (g.chunk, g.count)), Some((1, 1)), "the group broke at the chunk");
        let out = b.take_chunk(0);
        assert_eq!(out.len(), SEND_CHUNK);
        b.put_chunk(0, out);
        assert_eq!(b.bytes(&b.groups()[0])[0], 1000u16 as u8);
        // The last chunk: room for one datagram while it has space, none after.
        put(&mut b, 1000, addr(2));
        let jumbo = SEND_CHUNK + 100;
        assert!(b.has_room(jumbo), "a third chunk is free");
        assert_eq!(put(&mut b, jumbo, addr(2)), (2, 0), "a jumbo datagram grows its own chunk");
        assert!(!b.has_room(1), "no chunk left");
    }

    #[test]
    fn tun_pool_is_bounded() {
        let mut t = TunWriteBatch::default();
        for _ in 0..TUN_POOL_MAX + 50 {
            t.push_plain(&[0x45; 20]);
        }
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.pool.len(), TUN_POOL_MAX);
    }
}
