//! The io_uring backend: one ring per worker. Reads are armed once and keep completing: a
//! multishot read on the TUN queue and a multishot `RECVMSG` on the UDP socket, each filling
//! buffers the kernel picks from a provided buffer ring of its own (`buf_ring.rs`). Sends and
//! TUN writes go into the same ring.
//!
//! The loop: `wait` first takes what the completion queue already holds, without a syscall.
//! It enters the kernel only to submit, to run completions the kernel deferred to this thread
//! (it says so in `IORING_SQ_TASKRUN`), or, with nothing ready, to block once until something
//! is. A busy worker therefore reaps without a syscall, and an idle one sleeps in one enter.
//!
//! Buffer ownership, the rules every path here keeps:
//! - A read buffer is either in its group's ring, where the kernel may write it at any moment
//!   while a read is armed, or lent to the worker by the completion that named its id. The
//!   worker gives it back through `recycle_*` only when it has finished with it, including
//!   work handed to other workers for parallel crypto (jobs come home before a round ends);
//!   only then does it go back into the ring.
//! - Sends and TUN writes point into the worker's batch: `send_udp` and `write_tun` return
//!   only after every one of their operations completed.
//! - A failed `io_uring_enter` with writes in flight is retried, reaping, until they complete;
//!   if it keeps failing the ring is broken: the batch's memory stays here (the kernel may
//!   still read it), later calls fail, and the worker stops the device (`broken`).
//! - On drop, every read is cancelled and reaped before a buffer is freed; where that does not
//!   finish, the buffers are leaked, never freed under the kernel.
//!
//! Fallbacks, probed and said: a kernel without `IORING_OP_READ_MULTISHOT` (before 6.7), one
//! that refuses a multishot when it is armed, or `multishot: false`, gets single reads with
//! buffer selection, several kept in flight. A kernel without provided buffer rings (before
//! 5.19) does not get this backend (`probe` fails and the worker runs on syscalls).
//!
//! The TUN fd is left blocking: the ring then arms a poll for it instead of handing the read
//! to an io-wq thread.

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, zeroed};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use socket2::SockAddr;
use tracing::warn;

use super::batch::{Buf, SendBatch, TunWriteBatch};
use super::buf_ring::ProvidedBufs;
use super::doorbell::Doorbell;
use super::mmsg::{gso_refused, send_one_by_one};
use super::udp::{fill_send_msghdr, from_storage, gro_segment_size, OsSocket, CMSG_ROOM};
use super::vnet::tun_frame;
use super::{Backend, Socket, Tun, UringOptions, WorkerIo, TUN_BUF, TUN_READ_BATCH, UDP_BUF, UDP_RECV_BATCH};

/// Single reads kept in flight per source where multishot is off (Lightway found a few
/// outstanding TUN reads beat many).
const SINGLE_READS_IN_FLIGHT: usize = 16;
/// Sends or TUN writes submitted together before waiting for them.
const WRITE_CHUNK: usize = 256;
const RING_ENTRIES: u32 = 1024;
/// Failed enters in a row with writes in flight before the ring is broken (a second in all).
const MAX_ENTER_FAILURES: u32 = 100;
const ENTER_RETRY_PAUSE: Duration = Duration::from_millis(10);
const TUN_GROUP: u16 = 0;
const UDP_GROUP: u16 = 1;
/// What a multishot `RECVMSG` writes ahead of the payload in each buffer: the kernel's
/// `io_uring_recvmsg_out`, then room for the name and the control data as armed.
const RECVMSG_OUT_LEN: usize = 16;
const UDP_PREFIX: usize = RECVMSG_OUT_LEN + size_of::<libc::sockaddr_storage>() + CMSG_ROOM;

const KIND_TUN_READ: u64 = 1;
const KIND_TUN_READ_MULTI: u64 = 2;
const KIND_UDP_RECV: u64 = 3;
const KIND_UDP_RECV_MULTI: u64 = 4;
const KIND_SEND: u64 = 5;
const KIND_TUN_WRITE: u64 = 6;
const KIND_CANCEL: u64 = 7;
const KIND_BELL: u64 = 8;

/// An operation's tag: its kind, the socket generation (receives) and an index.
fn user_data(kind: u64, generation: u64, index: usize) -> u64 {
    kind << 56 | (generation & 0xff_ffff) << 32 | (index as u64 & 0xffff_ffff)
}

fn split_user_data(data: u64) -> (u64, u64, usize) {
    (data >> 56, (data >> 32) & 0xff_ffff, (data & 0xffff_ffff) as usize)
}

/// The C structures one UDP receive or send points at. They live in Vecs allocated once at
/// full size and never grown, so they never move while the kernel holds a pointer to them.
struct MsgSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    control: [u64; CMSG_ROOM / 8],
}

impl MsgSlot {
    fn new() -> MsgSlot {
        // SAFETY: msghdr, iovec and sockaddr_storage are plain C structs; all-zero is valid.
        unsafe { zeroed() }
    }

    /// Points the header at this slot's own address and control room (and, for a single
    /// receive, an iovec whose buffer the kernel selects).
    fn arm(&mut self, buf_len: usize) {
        self.iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: buf_len };
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
struct Reads {
    bufs: ProvidedBufs,
    multishot: bool,
    /// Reads armed and not yet ended on the current socket (a multishot counts once).
    armed: usize,
    /// Completed reads the worker has not taken yet, in completion order.
    ready: VecDeque<Buf>,
    /// Buffers a completion named without data (an error or an empty read), to give back.
    spent: Vec<Buf>,
    /// Times an armed read found the ring empty (ENOBUFS) and ended.
    ran_dry: u64,
    /// A read completed with data: a multishot refused after that is not the kernel's lack.
    ever_read: bool,
}

impl Reads {
    fn new(bufs: ProvidedBufs, multishot: bool) -> Reads {
        Reads { bufs, multishot, armed: 0, ready: VecDeque::new(), spent: Vec::new(), ran_dry: 0, ever_read: false }
    }

    /// Moves the buffer a completion named out of the ring: ready when it carries data.
    fn take(&mut self, flags: u32, result: i32) -> Option<Buf> {
        let id = cqueue::buffer_select(flags)?;
        let buf = self.bufs.lend(id, result.max(0) as usize)?;
        if result > 0 {
            self.ever_read = true;
            return Some(buf);
        }
        self.spent.push(buf);
        None
    }

    fn hand_out(&mut self, out: &mut Vec<Buf>, most: usize) {
        let n = self.ready.len().min(most);
        out.extend(self.ready.drain(..n));
    }
}

/// A probed ring with its two buffer groups registered.
pub struct ProbedRing {
    ring: IoUring,
    tun_bufs: ProvidedBufs,
    udp_bufs: ProvidedBufs,
    multishot_read: bool,
    multishot: bool,
}

pub struct UringIo {
    ring: IoUring,
    tun: Tun,
    socket: Arc<Socket>,
    bell: Arc<Doorbell>,
    /// A poll on the doorbell is in flight (one-shot: re-armed after it fires).
    bell_armed: bool,
    generation: u64,
    /// Sockets replaced while receives were still armed on them (generation, socket, receives
    /// armed), kept alive until those end.
    retired: Vec<(u64, Arc<Socket>, usize)>,
    tun_reads: Reads,
    udp_reads: Reads,
    /// Single receives: slot i holds receive i's header, address and control data.
    udp_slots: Vec<MsgSlot>,
    free_udp_slots: Vec<usize>,
    /// A multishot receive's header: only its name and control lengths count.
    udp_template: Box<MsgSlot>,
    send_slots: Vec<MsgSlot>,
    send_addrs: Vec<SockAddr>,
    cqes: Vec<(u64, i32, u32)>,
    /// Sends or TUN writes submitted and not yet completed.
    writes_pending: usize,
    first_write_error: Option<io::Error>,
    /// Which sends failed for want of GSO (by send slot), to resend one by one.
    gso_failed: Vec<usize>,
    read_error: Option<io::Error>,
    /// The ring was created disabled and waits for its worker thread to enable it.
    disabled: bool,
    /// Why the ring may no longer be used, once it may not.
    broken: Option<String>,
    /// Memory of writes that never completed on a broken ring: kept, and leaked on drop.
    held: Vec<Vec<u8>>,
    /// Fault injection for tests: the next this many enters fail with EIO without entering.
    inject_enter_failures: u32,
}

// SAFETY: the raw pointers in the msghdrs point only into this struct's boxed slots, its own
// buffers, or a caller's batch for the length of one call; the ring is used by one thread at a
// time, the one that owns this value.
unsafe impl Send for UringIo {}

fn os(socket: &Socket) -> io::Result<&OsSocket> {
    match socket {
        Socket::Os(s) => Ok(s),
        Socket::Twin(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "a twin socket on the io_uring backend")),
    }
}

/// A ring with its buffer groups, if this kernel can run the backend. Refusals: ENOSYS (no
/// io_uring), EPERM (the io_uring_disabled sysctl, seccomp), EINVAL or Unsupported (an
/// opcode or feature missing, provided buffer rings among them).
///
/// Where the kernel has them (6.1+), the ring is single-issuer with deferred task work: the
/// kernel then completes reads only when the worker asks for completions, instead of
/// interrupting it with task work mid-round, and flags in the ring when it has some deferred
/// (`IORING_SETUP_TASKRUN_FLAG`). It is created disabled, because the worker that will submit
/// is another thread than this one, and enabled by the worker's first wait.
pub fn probe(options: &UringOptions) -> io::Result<ProbedRing> {
    let ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_r_disabled()
        .build(RING_ENTRIES)
    {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?,
        Err(e) => return Err(e),
    };
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "no IORING_FEAT_EXT_ARG (kernel before 5.11)"));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("opcode IORING_OP_{name} not supported")));
        }
    }
    let multishot_read = probe.is_supported(opcode::ReadMulti::CODE);
    let count = options.buffers;
    let no_rings = |e: io::Error| io::Error::new(e.kind(), format!("no provided buffer rings ({e})"));
    let tun_bufs = ProvidedBufs::register(&ring, TUN_GROUP, count, TUN_BUF).map_err(no_rings)?;
    let udp_bufs = ProvidedBufs::register(&ring, UDP_GROUP, count, UDP_PREFIX + UDP_BUF).map_err(no_rings)?;
    Ok(ProbedRing { ring, tun_bufs, udp_bufs, multishot_read, multishot: options.multishot })
}

impl UringIo {
    /// Takes a probed ring, leaves the TUN blocking and arms the reads.
    pub fn new(probed: ProbedRing, tun: Tun, socket: Arc<Socket>, bell: Arc<Doorbell>) -> io::Result<UringIo> {
        os(&socket)?;
        if bell.fd().is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a twin doorbell on the io_uring backend"));
        }
        tun.set_nonblocking(false)?;
        let ProbedRing { ring, tun_bufs, udp_bufs, multishot_read, multishot } = probed;
        // Single-issuer rings are the ones `probe` created disabled.
        let ring_disabled = ring.params().is_setup_single_issuer();
        let mut template = Box::new(MsgSlot::new());
        template.arm(0);
        let mut u = UringIo {
            ring,
            tun,
            socket,
            bell,
            bell_armed: false,
            generation: 0,
            retired: Vec::new(),
            tun_reads: Reads::new(tun_bufs, multishot && multishot_read),
            udp_reads: Reads::new(udp_bufs, multishot),
            udp_slots: (0..SINGLE_READS_IN_FLIGHT).map(|_| MsgSlot::new()).collect(),
            free_udp_slots: (0..SINGLE_READS_IN_FLIGHT).rev().collect(),
            udp_template: template,
            send_slots: (0..WRITE_CHUNK).map(|_| MsgSlot::new()).collect(),
            send_addrs: Vec::with_capacity(WRITE_CHUNK),
            cqes: Vec::new(),
            writes_pending: 0,
            first_write_error: None,
            gso_failed: Vec::new(),
            read_error: None,
            disabled: ring_disabled,
            broken: None,
            held: Vec::new(),
            inject_enter_failures: 0,
        };
        u.arm_reads();
        u.arm_bell()?;
        if !u.disabled {
            u.ring.submit()?;
        }
        Ok(u)
    }

    /// What engaged, for the start-up line.
    fn reads_engaged(&self) -> String {
        let how = |multishot: bool| if multishot { "multishot" } else { "single" };
        format!(
            "{} TUN reads, {} UDP receives, {} provided buffers each",
            how(self.tun_reads.multishot),
            how(self.udp_reads.multishot),
            self.tun_reads.bufs.in_ring() + self.tun_reads.bufs.lent()
        )
    }

    /// Enables a ring created disabled, on the thread that will submit from now on.
    fn enable(&mut self) -> io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        Ok(())
    }

    /// Polls the doorbell's eventfd (a poll needs no buffer, so nothing to keep alive).
    fn arm_bell(&mut self) -> io::Result<()> {
        if self.bell_armed {
            return Ok(());
        }
        let fd = self.bell.fd().unwrap_or(-1);
        let entry =
            opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().user_data(user_data(KIND_BELL, 0, 0));
        self.push(&entry)?;
        self.bell_armed = true;
        Ok(())
    }

    /// Submits what is queued and, with `want`, waits for that many completions.
    fn enter(&mut self, want: usize) -> io::Result<usize> {
        if self.inject_enter_failures > 0 {
            self.inject_enter_failures -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.ring.submit_and_wait(want) // 0: submit only (and run deferred completions)
    }

    /// Queues one submission, submitting first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built here points at memory that stays valid until its
            // completion is reaped: fixed slots, the provided buffer rings, or a caller's
            // batch that the call does not return before its operations complete (or, when
            // the ring broke, that the backend keeps: `hold_*`).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.enter(0)?;
        }
    }

    fn refuse_if_broken(&self) -> io::Result<()> {
        match &self.broken {
            Some(why) => Err(io::Error::other(why.clone())),
            None => Ok(()),
        }
    }

    /// After a failed write: settles what is in flight, or keeps the batch's memory (broken).
    fn settle_tun_batch(&mut self, batch: &mut TunWriteBatch) {
        if self.complete_writes().is_err() {
            self.held.extend(batch.take_packets());
        }
    }

    fn settle_send_batch(&mut self, batch: &mut SendBatch) {
        if self.complete_writes().is_err() {
            for i in 0..batch.chunk_count() {
                self.held.push(batch.take_chunk(i));
                batch.put_chunk(i, vec![0u8; crate::io::batch::SEND_CHUNK]);
            }
        }
    }

    /// Arms what reads the buffers in the rings allow: one multishot per source, re-armed
    /// after it ended, or single reads up to `SINGLE_READS_IN_FLIGHT`, never more than the
    /// ring has buffers (a read without one would end at once with ENOBUFS).
    fn arm_reads(&mut self) {
        if let Err(e) = self.arm_tun_reads().and_then(|_| self.arm_udp_recvs()) {
            self.read_error.get_or_insert(e);
        }
    }

    fn arm_tun_reads(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.tun.fd());
        let group = self.tun_reads.bufs.group();
        if self.tun_reads.multishot {
            if self.tun_reads.armed == 0 && self.tun_reads.bufs.in_ring() > 0 {
                let entry = opcode::ReadMulti::new(fd, 0, group).build().user_data(user_data(KIND_TUN_READ_MULTI, 0, 0));
                self.push(&entry)?;
                self.tun_reads.armed = 1;
            }
            return Ok(());
        }
        let len = self.tun_reads.bufs.buf_size() as u32;
        while self.tun_reads.armed < SINGLE_READS_IN_FLIGHT.min(self.tun_reads.bufs.in_ring()) {
            let entry = opcode::Read::new(fd, std::ptr::null_mut(), len)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(KIND_TUN_READ, 0, 0));
            self.push(&entry)?;
            self.tun_reads.armed += 1;
        }
        Ok(())
    }

    fn arm_udp_recvs(&mut self) -> io::Result<()> {
        let fd = types::Fd(os(&self.socket)?.fd());
        let group = self.udp_reads.bufs.group();
        if self.udp_reads.multishot {
            if self.udp_reads.armed == 0 && self.udp_reads.bufs.in_ring() > 0 {
                let hdr: *const libc::msghdr = &self.udp_template.hdr;
                let entry = opcode::RecvMsgMulti::new(fd, hdr, group)
                    .build()
                    .user_data(user_data(KIND_UDP_RECV_MULTI, self.generation, 0));
                self.push(&entry)?;
                self.udp_reads.armed = 1;
            }
            return Ok(());
        }
        let len = self.udp_reads.bufs.buf_size();
        while self.udp_reads.armed < SINGLE_READS_IN_FLIGHT.min(self.udp_reads.bufs.in_ring()) {
            let Some(i) = self.free_udp_slots.pop() else { break };
            let slot = &mut self.udp_slots[i];
            slot.arm(len);
            let entry = opcode::RecvMsg::new(fd, &mut slot.hdr)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(KIND_UDP_RECV, self.generation, i));
            self.push(&entry)?;
            self.udp_reads.armed += 1;
        }
        Ok(())
    }

    /// Sorts every completion there is: reads become ready buffers, writes are counted.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for &(data, result, flags) in &cqes {
            let (kind, generation, i) = split_user_data(data);
            match kind {
                KIND_TUN_READ | KIND_TUN_READ_MULTI => self.on_tun_read(result, flags),
                KIND_UDP_RECV | KIND_UDP_RECV_MULTI => {
                    self.on_udp_recv(kind == KIND_UDP_RECV_MULTI, generation, i, result, flags)
                }
                KIND_SEND | KIND_TUN_WRITE => {
                    self.writes_pending = self.writes_pending.saturating_sub(1);
                    if result < 0 {
                        let e = io::Error::from_raw_os_error(-result);
                        if kind == KIND_SEND && gso_refused(&e) {
                            self.gso_failed.push(i);
                        }
                        self.first_write_error.get_or_insert(e);
                    }
                }
                KIND_BELL => {
                    self.bell_armed = false;
                    self.bell.clear();
                }
                _ => {} // KIND_CANCEL: nothing to do; the cancelled read reports itself
            }
        }
        cqes.clear();
        self.cqes = cqes;
        self.retired.retain(|(_, _, armed)| *armed > 0);
        self.tun_reads.bufs.give_back(&mut self.tun_reads.spent);
        self.udp_reads.bufs.give_back(&mut self.udp_reads.spent);
    }

    fn on_tun_read(&mut self, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.tun_reads.armed = self.tun_reads.armed.saturating_sub(1);
        }
        if let Some(buf) = self.tun_reads.take(flags, result) {
            self.tun_reads.ready.push_back(buf);
        }
        if result < 0 {
            self.read_failed(true, -result);
        }
    }

    fn on_udp_recv(&mut self, multishot: bool, generation: u64, slot: usize, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            if !multishot {
                self.free_udp_slots.push(slot);
            }
            if generation == self.generation & 0xff_ffff {
                self.udp_reads.armed = self.udp_reads.armed.saturating_sub(1);
            } else if let Some(r) = self.retired.iter_mut().find(|r| r.0 & 0xff_ffff == generation) {
                r.2 = r.2.saturating_sub(1);
            }
        }
        if let Some(mut buf) = self.udp_reads.take(flags, result) {
            let parsed = if multishot {
                parse_multishot(&mut buf, &self.udp_template.hdr)
            } else {
                let s = &self.udp_slots[slot];
                buf.src = from_storage(&s.addr);
                buf.stride = gro_segment_size(&s.hdr).unwrap_or(buf.len);
                true
            };
            if parsed && buf.len > 0 {
                self.udp_reads.ready.push_back(buf);
            } else {
                self.udp_reads.spent.push(buf);
            }
        }
        if result < 0 {
            self.read_failed(false, -result);
        }
    }

    /// A read ended with `errno`. A kernel that refuses the multishot the first time it is
    /// armed cannot do it: that source falls back to single reads, and says so.
    fn read_failed(&mut self, tun: bool, errno: i32) {
        let reads = if tun { &mut self.tun_reads } else { &mut self.udp_reads };
        match errno {
            libc::ENOBUFS => reads.ran_dry += 1,
            libc::EINTR | libc::EAGAIN | libc::ECANCELED => {}
            libc::EINVAL | libc::EOPNOTSUPP if reads.multishot && !reads.ever_read => {
                reads.multishot = false;
                let what = if tun { "TUN reads" } else { "UDP receives" };
                warn!("io_uring refused multishot {what} ({}); single reads from now on", io::Error::from_raw_os_error(errno));
            }
            _ => {
                self.read_error.get_or_insert(io::Error::from_raw_os_error(errno));
            }
        }
    }

    fn has_ready(&self) -> bool {
        !self.tun_reads.ready.is_empty() || !self.udp_reads.ready.is_empty()
    }

    /// Submits what is queued and waits until `writes_pending` is zero; a failed enter is
    /// tried again, and after `MAX_ENTER_FAILURES` in a row the ring is broken.
    fn complete_writes(&mut self) -> io::Result<()> {
        self.refuse_if_broken()?;
        let mut failures = 0;
        while self.writes_pending > 0 {
            match self.enter(1) {
                Ok(_) => failures = 0,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_ENTER_FAILURES {
                        let why = format!("io_uring_enter kept failing with writes in flight ({e})");
                        self.broken = Some(why);
                        return Err(e);
                    }
                    std::thread::sleep(ENTER_RETRY_PAUSE);
                }
            }
            self.reap();
        }
        Ok(())
    }

    fn send_chunk(&mut self, batch: &SendBatch, first: usize) -> io::Result<usize> {
        let socket = self.socket.clone();
        let sock = os(&socket)?;
        let groups = &batch.groups()[first..];
        let n = groups.len().min(WRITE_CHUNK);
        self.send_addrs.clear();
        self.send_addrs.extend(groups[..n].iter().map(|g| sock.to_sockaddr(g.addr)));
        for (i, g) in groups[..n].iter().enumerate() {
            let slot = &mut self.send_slots[i];
            fill_send_msghdr(&mut slot.hdr, &mut slot.iov, &self.send_addrs[i], batch.bytes(g), &mut slot.control, g);
            let entry =
                opcode::SendMsg::new(types::Fd(sock.fd()), &slot.hdr).build().user_data(user_data(KIND_SEND, 0, i));
            self.push(&entry)?;
            self.writes_pending += 1;
        }
        self.complete_writes()?;
        for i in std::mem::take(&mut self.gso_failed) {
            let g = groups[i];
            if g.count > 1 {
                send_one_by_one(sock, batch, &g);
            }
        }
        Ok(n)
    }

    /// Cancels every read armed on `fd` (the TUN queue or a socket).
    fn cancel_reads_on(&mut self, fd: i32) {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all());
        let _ = self.push(&cancel.build().user_data(user_data(KIND_CANCEL, 0, 0)));
    }

    fn reads_in_flight(&self) -> bool {
        self.tun_reads.armed > 0 || self.udp_reads.armed > 0 || self.retired.iter().any(|r| r.2 > 0)
    }
}

/// Where a multishot receive's payload, source and GRO segment size are in its buffer; false
/// if the kernel's header does not fit.
fn parse_multishot(buf: &mut Buf, template: &libc::msghdr) -> bool {
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

impl WorkerIo for UringIo {
    fn backend(&self) -> Backend {
        Backend::Uring
    }

    fn engaged(&self) -> Option<String> {
        Some(self.reads_engaged())
    }

    fn tun_read_limit(&self) -> usize {
        TUN_READ_BATCH
    }

    fn udp_recv_limit(&self) -> usize {
        UDP_RECV_BATCH
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.enable()?;
        self.reap();
        self.arm_reads();
        self.arm_bell()?;
        if self.has_ready() {
            // Busy: only enter to submit, or to run completions the kernel deferred to us.
            if !self.ring.submission().is_empty() || self.ring.submission().taskrun() {
                self.ring.submit_and_wait(0)?;
                self.reap();
            }
        } else {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
            self.reap();
        }
        match self.read_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn read_tun(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        self.tun_reads.hand_out(out, TUN_READ_BATCH);
        Ok(())
    }

    fn recv_udp(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        self.udp_reads.hand_out(out, UDP_RECV_BATCH);
        Ok(())
    }

    fn recycle_tun(&mut self, bufs: &mut Vec<Buf>) {
        self.tun_reads.bufs.give_back(bufs);
        if let Err(e) = self.arm_tun_reads() {
            self.read_error.get_or_insert(e);
        }
    }

    fn recycle_udp(&mut self, bufs: &mut Vec<Buf>) {
        self.udp_reads.bufs.give_back(bufs);
        if let Err(e) = self.arm_udp_recvs() {
            self.read_error.get_or_insert(e);
        }
    }

    fn send_udp(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        if let Err(e) = self.refuse_if_broken() {
            batch.clear();
            return Err(e);
        }
        self.first_write_error = None;
        let total = batch.groups().len();
        let mut sent = 0;
        let mut gso_off = false;
        while sent < total {
            match self.send_chunk(batch, sent) {
                Ok(n) => sent += n,
                Err(e) => {
                    self.settle_send_batch(batch);
                    batch.clear();
                    return Err(e);
                }
            }
            if let Some(e) = &self.first_write_error {
                gso_off |= gso_refused(e);
            }
        }
        if gso_off {
            batch.disable_gso();
        }
        batch.clear();
        match self.first_write_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn write_tun(&mut self, batch: &mut TunWriteBatch) -> io::Result<()> {
        if let Err(e) = self.refuse_if_broken() {
            batch.clear();
            return Err(e);
        }
        self.first_write_error = None;
        let vnet = self.tun.has_vnet_hdr();
        let fd = self.tun.fd();
        for chunk in batch.packets().chunks(WRITE_CHUNK) {
            for (i, p) in chunk.iter().enumerate() {
                let frame = tun_frame(p, vnet);
                let entry = opcode::Write::new(types::Fd(fd), frame.as_ptr(), frame.len() as u32)
                    .build()
                    .user_data(user_data(KIND_TUN_WRITE, 0, i));
                if let Err(e) = self.push(&entry) {
                    self.settle_tun_batch(batch);
                    batch.clear();
                    return Err(e);
                }
                self.writes_pending += 1;
            }
            if let Err(e) = self.complete_writes() {
                self.settle_tun_batch(batch);
                batch.clear();
                return Err(e);
            }
        }
        batch.clear();
        match self.first_write_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn broken(&self) -> Option<String> {
        self.broken.clone()
    }

    fn set_socket(&mut self, socket: Arc<Socket>) {
        let old = std::mem::replace(&mut self.socket, socket);
        let armed = std::mem::take(&mut self.udp_reads.armed);
        // Receives armed on the old socket end (cancelled) and are armed on the new one as
        // they do; the old socket lives until then.
        if armed > 0 {
            if let Ok(fd) = os(&old).map(|s| s.fd()) {
                self.cancel_reads_on(fd);
            }
            self.retired.push((self.generation, old, armed));
        }
        self.generation += 1;
        self.arm_reads();
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // Writes that never completed on a broken ring may still be read by the kernel after
        // the ring closes: their memory is leaked, not freed (one batch, on a failure path).
        std::mem::forget(std::mem::take(&mut self.held));
        // The buffers of reads still in flight must outlive them: cancel every read and reap
        // until none is left. If that does not finish, the buffers are leaked.
        let mut fds = vec![self.tun.fd()];
        fds.extend(std::iter::once(&self.socket).chain(self.retired.iter().map(|r| &r.1)).filter_map(|s| os(s).ok()).map(|s| s.fd()));
        for fd in fds {
            self.cancel_reads_on(fd);
        }
        for _ in 0..100 {
            if !self.reads_in_flight() {
                return;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        if self.reads_in_flight() {
            self.tun_reads.bufs.leak();
            self.udp_reads.bufs.leak();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this runs under CI (`CI=true`), where skipping is failing.
    fn under_ci() -> bool {
        std::env::vars().any(|(k, v)| k == "CI" && v == "true")
    }

    /// A ring on a TUN of a network namespace of this test thread's own (root only; under
    /// CI, always root, a missing root fails the test instead of skipping it).
    fn ring_on_a_private_tun() -> Option<UringIo> {
        // SAFETY: geteuid only reads the caller's credentials.
        if unsafe { libc::geteuid() } != 0 {
            assert!(!under_ci(), "this test needs root under CI");
            eprintln!("SKIP: needs root");
            return None;
        }
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread (the test's own) to a new,
        // empty network namespace; nothing else of the process changes.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", io::Error::last_os_error());
        let ring = match probe() {
            Ok(r) => r,
            Err(e) => {
                assert!(!under_ci(), "no io_uring under CI: {e}");
                eprintln!("SKIP: io_uring refused: {e}");
                return None;
            }
        };
        let tun = Tun::open("wgturing0", false, false).expect("a TUN in the private namespace");
        let socket = Arc::new(Socket::Os(OsSocket::bind(0, 0, false).expect("a UDP socket")));
        let bell = Arc::new(Doorbell::event().expect("an eventfd"));
        let mut io = UringIo::new(ring, tun, socket, bell).expect("the backend");
        io.wait(Duration::ZERO).expect("enabled on this thread");
        Some(io)
    }

    fn packets(n: usize) -> TunWriteBatch {
        let mut batch = TunWriteBatch::default();
        for i in 0..n {
            let mut p = [0u8; 40];
            p[0] = 0x45;
            p[3] = 40;
            p[8] = 64;
            p[9] = 17;
            p[19] = i as u8;
            batch.push_plain(&p);
        }
        batch
    }

    /// io_uring_enter failing while writes are queued or in flight: a few failures are
    /// retried until every write completed (the batch only then comes back); failures that
    /// go on break the ring, which keeps the batch's memory and refuses every later call.
    #[test]
    fn a_failing_enter_never_hands_back_a_batch_the_kernel_may_hold() {
        let Some(mut io) = ring_on_a_private_tun() else { return };
        io.inject_enter_failures = 3;
        let mut batch = packets(300);
        let _ = io.write_tun(&mut batch); // the writes' own results (a TUN that is down) do not matter
        assert_eq!(io.writes_pending, 0, "every write completed before the batch came back");
        assert!(io.broken().is_none() && io.held.is_empty());

        io.inject_enter_failures = 10 * MAX_ENTER_FAILURES;
        let mut batch = packets(10);
        let ptrs: Vec<*const u8> = batch.packets().iter().map(|p| p.as_ptr()).collect();
        assert!(io.write_tun(&mut batch).is_err());
        assert!(io.broken().is_some(), "the ring is broken");
        assert_eq!(io.held.len(), 10, "the queued writes' memory stays with the backend");
        assert!(io.held.iter().all(|p| ptrs.contains(&p.as_ptr())));
        assert!(batch.is_empty());
        let reused = batch.take_buf();
        assert!(!ptrs.contains(&reused.as_ptr()), "none of it goes back to the batch's pool");
        // From now on nothing reaches the ring.
        let mut more = packets(5);
        assert!(io.write_tun(&mut more).is_err());
        let mut sends = SendBatch::new(1, 8, false);
        let (_, space) = sends.reserve(8);
        space.fill(1);
        sends.commit(8, "127.0.0.1:9".parse().unwrap());
        assert!(io.send_udp(&mut sends).is_err());
    }
}
