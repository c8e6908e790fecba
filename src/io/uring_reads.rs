//! The io_uring backend's reads: a multishot read (or single reads) on the TUN queue and a
//! multishot `RECVMSG` (or single ones) on the UDP socket, each on its buffer group; what
//! their completions mean; and the C structures a receive or send points at.

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, zeroed};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types};
use tracing::warn;

use super::batch::Buf;
use super::buf_ring::ProvidedBufs;
use super::udp::{from_storage, gro_segment_size, CMSG_ROOM};
use super::uring_ring::{user_data, Ring, KIND_TUN_READ, KIND_TUN_READ_MULTI, KIND_UDP_RECV, KIND_UDP_RECV_MULTI};
use super::Socket;

/// Single reads kept in flight per source where multishot is off (Lightway found a few
/// outstanding TUN reads beat many).
const SINGLE_READS_IN_FLIGHT: usize = 16;

/// The C structures one UDP receive or send points at. They live in Vecs allocated once at
/// full size and never grown, so they never move while the kernel holds a pointer to them.
pub(super) struct MsgSlot {
    pub hdr: libc::msghdr,
    pub iov: libc::iovec,
    pub addr: libc::sockaddr_storage,
    pub control: [u64; CMSG_ROOM / 8],
}

impl MsgSlot {
    pub fn new() -> MsgSlot {
        // SAFETY: msghdr, iovec and sockaddr_storage are plain C structs; all-zero is valid.
        unsafe { zeroed() }
    }

    /// Points the header at this slot's own address and control room (and, for a single
    /// receive, an iovec whose buffer the kernel selects).
    pub fn arm(&mut self, buf_len: usize) {
        self.iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: buf_len };
        self.addr.ss_family = 0; // a receive without a source leaves none behind
        self.hdr.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        self.hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = self.control.as_mut_ptr().cast();
        self.hdr.msg_controllen = CMSG_ROOM;
        self.hdr.msg_flags = 0;
    }
}

/// One source of reads, the TUN queue or the UDP socket, and its buffer group.
pub(super) struct Reads {
    pub bufs: ProvidedBufs,
    pub multishot: bool,
    /// Reads armed and not yet ended on the current socket (a multishot counts once).
    pub armed: usize,
    /// Completed reads the worker has not taken yet, in completion order.
    pub ready: VecDeque<Buf>,
    /// Buffers a completion named without data (an error or an empty read), to give back.
    pub spent: Vec<Buf>,
    /// Times an armed read found the ring empty (ENOBUFS) and ended.
    pub ran_dry: u64,
    /// A read completed with data: a multishot refused after that is not the kernel's lack.
    pub ever_read: bool,
}

impl Reads {
    pub fn new(bufs: ProvidedBufs, multishot: bool) -> Reads {
        Reads { bufs, multishot, armed: 0, ready: VecDeque::new(), spent: Vec::new(), ran_dry: 0, ever_read: false }
    }

    /// Moves the buffer a completion named out of the ring, `result` bytes filled.
    pub fn take(&mut self, flags: u32, result: i32) -> Option<Buf> {
        let id = cqueue::buffer_select(flags)?;
        let buf = self.bufs.lend(id, result.max(0) as usize)?;
        if result >= 0 {
            self.ever_read = true;
            return Some(buf);
        }
        self.spent.push(buf);
        None
    }

    pub fn hand_out(&mut self, out: &mut Vec<Buf>, most: usize) {
        let n = self.ready.len().min(most);
        out.extend(self.ready.drain(..n));
    }
}

/// Where a multishot receive's payload, source and GRO segment size are in its buffer; false
/// if the kernel's header does not fit.
pub(super) fn parse_multishot(buf: &mut Buf, template: &libc::msghdr) -> bool {
    let whole = buf.len;
    let Ok(out) = types::RecvMsgOut::parse(&buf.data[..whole], template) else { return false };
    let start = out.payload_data().as_ptr() as usize - buf.data.as_ptr() as usize;
    let len = out.payload_data().len();
    // SAFETY: sockaddr_storage is plain data; the name bytes are copied into it, at most its size.
    let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
    let name = out.name_data();
    let n = name.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `n` bytes, within both the name and the storage.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut addr as *mut libc::sockaddr_storage).cast(), n) };
    // The control data, copied to aligned memory for the CMSG walkers.
    let mut control = [0u64; CMSG_ROOM / 8];
    let c = out.control_data();
    let c_len = c.len().min(CMSG_ROOM);
    // SAFETY: copies `c_len` bytes, within both the control data and `control`.
    unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), control.as_mut_ptr().cast::<u8>(), c_len) };
    // SAFETY: an all-zero msghdr is valid; only the control fields are read.
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = c_len;
    buf.src = from_storage(&addr);
    buf.start = start;
    buf.len = len;
    buf.stride = gro_segment_size(&hdr).unwrap_or(len);
    true
}

/// Both sources of reads and what their completions left: ready buffers, errors.
pub(super) struct ReadSide {
    pub tun: Reads,
    pub udp: Reads,
    /// The socket generation receives are armed on (bumped by a rebind).
    generation: u64,
    /// Sockets replaced while receives were still armed on them (generation, socket, receives
    /// armed), kept alive until those end.
    retired: Vec<(u64, Arc<Socket>, usize)>,
    /// Single receives: slot i holds receive i's header, address and control data.
    udp_slots: Vec<MsgSlot>,
    free_udp_slots: Vec<usize>,
    /// A multishot receive's header: only its name and control lengths count.
    udp_template: Box<MsgSlot>,
    pub error: Option<io::Error>,
}

impl ReadSide {
    pub fn new(tun_bufs: ProvidedBufs, udp_bufs: ProvidedBufs, multishot_tun: bool, multishot_udp: bool) -> ReadSide {
        let mut template = Box::new(MsgSlot::new());
        template.arm(0);
        ReadSide {
            tun: Reads::new(tun_bufs, multishot_tun),
            udp: Reads::new(udp_bufs, multishot_udp),
            generation: 0,
            retired: Vec::new(),
            udp_slots: (0..SINGLE_READS_IN_FLIGHT).map(|_| MsgSlot::new()).collect(),
            free_udp_slots: (0..SINGLE_READS_IN_FLIGHT).rev().collect(),
            udp_template: template,
            error: None,
        }
    }

    /// What engaged, for the start-up line.
    pub fn engaged(&self) -> String {
        let how = |multishot: bool| if multishot { "multishot" } else { "single" };
        format!(
            "{} TUN reads, {} UDP receives, {} provided buffers each",
            how(self.tun.multishot),
            how(self.udp.multishot),
            self.tun.bufs.count()
        )
    }

    pub fn has_ready(&self) -> bool {
        !self.tun.ready.is_empty() || !self.udp.ready.is_empty()
    }

    pub fn in_flight(&self) -> bool {
        self.tun.armed > 0 || self.udp.armed > 0 || self.retired.iter().any(|r| r.2 > 0)
    }

    /// Arms what reads the buffers in the rings allow: one multishot per source, armed again
    /// after it ended, or single reads up to `SINGLE_READS_IN_FLIGHT`, never more than the
    /// ring has buffers (a read without one would end at once with ENOBUFS).
    pub fn arm(&mut self, ring: &mut Ring, tun_fd: i32, socket_fd: i32) {
        if let Err(e) = self.arm_tun(ring, tun_fd).and_then(|_| self.arm_udp(ring, socket_fd)) {
            self.error.get_or_insert(e);
        }
    }

    pub fn arm_tun(&mut self, ring: &mut Ring, tun_fd: i32) -> io::Result<()> {
        let fd = types::Fd(tun_fd);
        let group = self.tun.bufs.group();
        if self.tun.multishot {
            if self.tun.armed == 0 && self.tun.bufs.in_ring() > 0 {
                let entry = opcode::ReadMulti::new(fd, 0, group).build();
                ring.push(&entry.user_data(user_data(KIND_TUN_READ_MULTI, 0, 0)))?;
                self.tun.armed = 1;
            }
            return Ok(());
        }
        let len = self.tun.bufs.buf_size() as u32;
        while self.tun.armed < SINGLE_READS_IN_FLIGHT.min(self.tun.bufs.in_ring()) {
            let entry = opcode::Read::new(fd, std::ptr::null_mut(), len)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(KIND_TUN_READ, 0, 0));
            ring.push(&entry)?;
            self.tun.armed += 1;
        }
        Ok(())
    }

    pub fn arm_udp(&mut self, ring: &mut Ring, socket_fd: i32) -> io::Result<()> {
        let fd = types::Fd(socket_fd);
        let group = self.udp.bufs.group();
        if self.udp.multishot {
            if self.udp.armed == 0 && self.udp.bufs.in_ring() > 0 {
                let hdr: *const libc::msghdr = &self.udp_template.hdr;
                let entry = opcode::RecvMsgMulti::new(fd, hdr, group).build();
                ring.push(&entry.user_data(user_data(KIND_UDP_RECV_MULTI, self.generation, 0)))?;
                self.udp.armed = 1;
            }
            return Ok(());
        }
        let len = self.udp.bufs.buf_size();
        while self.udp.armed < SINGLE_READS_IN_FLIGHT.min(self.udp.bufs.in_ring()) {
            let Some(i) = self.free_udp_slots.pop() else { break };
            let slot = &mut self.udp_slots[i];
            slot.arm(len);
            let entry = opcode::RecvMsg::new(fd, &mut slot.hdr)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(KIND_UDP_RECV, self.generation, i));
            ring.push(&entry)?;
            self.udp.armed += 1;
        }
        Ok(())
    }

    /// The device rebound its port: receives armed on `old` are cancelled, and `old` lives
    /// until they have ended; the next `arm` arms receives on the new socket.
    pub fn retire(&mut self, ring: &mut Ring, old: Arc<Socket>, old_fd: Option<i32>) {
        let armed = std::mem::take(&mut self.udp.armed);
        if armed > 0 {
            if let Some(fd) = old_fd {
                ring.cancel_all_on(fd);
            }
            self.retired.push((self.generation, old, armed));
        }
        self.generation += 1;
    }

    /// The sockets receives may still be armed on, for cancelling them all.
    pub fn retired_sockets(&self) -> impl Iterator<Item = &Arc<Socket>> {
        self.retired.iter().map(|r| &r.1)
    }

    /// After a batch of completions: buffers that carried nothing go back to their rings.
    pub fn settle(&mut self) {
        self.retired.retain(|(_, _, armed)| *armed > 0);
        self.tun.bufs.give_back(&mut self.tun.spent);
        self.udp.bufs.give_back(&mut self.udp.spent);
    }

    pub fn on_tun_read(&mut self, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.tun.armed = self.tun.armed.saturating_sub(1);
        }
        if let Some(buf) = self.tun.take(flags, result) {
            if buf.len > 0 {
                self.tun.ready.push_back(buf);
            } else {
                self.tun.spent.push(buf);
            }
        }
        if result < 0 {
            self.failed(true, -result);
        }
    }

    pub fn on_udp_recv(&mut self, multishot: bool, generation: u64, slot: usize, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            if !multishot {
                self.free_udp_slots.push(slot);
            }
            if generation == self.generation & 0xff_ffff {
                self.udp.armed = self.udp.armed.saturating_sub(1);
            } else if let Some(r) = self.retired.iter_mut().find(|r| r.0 & 0xff_ffff == generation) {
                r.2 = r.2.saturating_sub(1);
            }
        }
        if result == 0 && !multishot && cqueue::buffer_select(flags).is_none() {
            // An empty datagram took no buffer: it goes to the worker in an empty one.
            if let Some(src) = self.udp_slots.get(slot).and_then(|s| from_storage(&s.addr)) {
                let mut empty = Buf::new(0);
                empty.src = Some(src);
                self.udp.ready.push_back(empty);
            }
        }
        if let Some(mut buf) = self.udp.take(flags, result) {
            let parsed = if multishot {
                parse_multishot(&mut buf, &self.udp_template.hdr)
            } else if let Some(s) = self.udp_slots.get(slot) {
                buf.src = from_storage(&s.addr);
                buf.stride = gro_segment_size(&s.hdr).unwrap_or(buf.len);
                true
            } else {
                false
            };
            // An empty datagram has a source and goes to the worker, which counts it as
            // malformed; a receive without one is a socket shut down for the rebind.
            if parsed && buf.src.is_some() {
                self.udp.ready.push_back(buf);
            } else {
                self.udp.spent.push(buf);
            }
        }
        if result < 0 {
            self.failed(false, -result);
        }
    }

    /// A read ended with `errno`. A kernel that refuses the multishot the first time it is
    /// armed cannot do it: that source falls back to single reads, and says so.
    fn failed(&mut self, tun: bool, errno: i32) {
        let reads = if tun { &mut self.tun } else { &mut self.udp };
        match errno {
            libc::ENOBUFS => reads.ran_dry += 1,
            libc::EINTR | libc::EAGAIN | libc::ECANCELED => {}
            libc::EINVAL | libc::EOPNOTSUPP if reads.multishot && !reads.ever_read => {
                reads.multishot = false;
                let what = if tun { "TUN reads" } else { "UDP receives" };
                let e = io::Error::from_raw_os_error(errno);
                warn!("io_uring refused multishot {what} ({e}); single reads from now on");
            }
            _ => {
                self.error.get_or_insert(io::Error::from_raw_os_error(errno));
            }
        }
    }
}
