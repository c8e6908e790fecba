//! The io_uring backend: one ring per worker keeps TUN reads and UDP receives in flight all
//! the time, and takes UDP sends and TUN writes in the same submissions, so one thread serves
//! both directions with about one `io_uring_enter` per batch.
//!
//! Buffers: a read's buffer belongs to the ring while the read is in flight; once it completes
//! it is moved to the worker, and re-armed when the worker gives it back. Sends and TUN writes
//! point into the worker's batches, so `send_udp` and `write_tun` return only after every one
//! of their operations completed.
//!
//! A failed `io_uring_enter` with writes queued or in flight is retried, reaping, until they
//! complete; if it keeps failing the ring is broken: the batch's memory stays here (the kernel
//! may still read it), later calls fail, and the worker stops the device (`broken`).
//!
//! The TUN fd is left blocking: the ring then arms a poll for it instead of handing the read
//! to an io-wq thread. Plain `IORING_OP_READ` is used, since multishot reads on a TUN fd fail
//! with EINVAL on some 6.x kernels.

use std::io;
use std::mem::{size_of, zeroed};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use socket2::SockAddr;

use super::batch::{Buf, SendBatch, TunWriteBatch};
use super::doorbell::Doorbell;
use super::mmsg::{gso_refused, send_one_by_one};
use super::udp::{fill_send_msghdr, from_storage, gro_segment_size, OsSocket, CMSG_ROOM};
use super::vnet::tun_frame;
use super::{Backend, Socket, Tun, WorkerIo, TUN_BUF, UDP_BUF};

/// TUN reads and UDP receives kept in flight (Lightway found a few outstanding TUN reads beat
/// many).
const TUN_READS_IN_FLIGHT: usize = 16;
const UDP_RECVS_IN_FLIGHT: usize = 32;
/// Sends or TUN writes submitted together before waiting for them.
const WRITE_CHUNK: usize = 256;
const RING_ENTRIES: u32 = 1024;
/// Failed enters in a row with writes in flight before the ring is broken (a second in all).
const MAX_ENTER_FAILURES: u32 = 100;
const ENTER_RETRY_PAUSE: Duration = Duration::from_millis(10);

const KIND_TUN_READ: u64 = 1;
const KIND_UDP_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_TUN_WRITE: u64 = 4;
const KIND_CANCEL: u64 = 5;
const KIND_BELL: u64 = 6;

fn user_data(kind: u64, index: usize) -> u64 {
    kind << 32 | index as u64
}

/// The C structures one UDP receive or send points at. They live in Vecs allocated once at
/// full size and never grown, so they never move while the kernel holds a pointer to them.
struct MsgSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    control: [u64; CMSG_ROOM / 8],
    /// The socket generation a receive was armed on.
    generation: u64,
}

impl MsgSlot {
    fn new() -> MsgSlot {
        // SAFETY: msghdr, iovec and sockaddr_storage are plain C structs; all-zero is valid.
        unsafe { zeroed() }
    }
}

pub struct UringIo {
    ring: IoUring,
    tun: Tun,
    socket: Arc<Socket>,
    bell: Arc<Doorbell>,
    /// A poll on the doorbell is in flight (one-shot: re-armed after it fires).
    bell_armed: bool,
    generation: u64,
    /// Sockets replaced while receives were still armed on them, kept alive until those end.
    retired: Vec<(u64, Arc<Socket>)>,
    /// Slot i: the buffer of TUN read i while in flight, None while lent to the worker.
    tun_bufs: Vec<Option<Buf>>,
    tun_ready: Vec<Buf>,
    udp_bufs: Vec<Option<Buf>>,
    udp_slots: Vec<MsgSlot>,
    udp_ready: Vec<Buf>,
    send_slots: Vec<MsgSlot>,
    send_addrs: Vec<SockAddr>,
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

/// A ring, if this kernel can run the backend. Refusals: ENOSYS (no io_uring), EPERM (the
/// io_uring_disabled sysctl, seccomp), EINVAL or Unsupported (an opcode or feature missing).
///
/// Where the kernel has them (6.1+), the ring is single-issuer with deferred task work: the
/// kernel then completes reads only when the worker asks for completions, instead of
/// interrupting it with task work mid-round. It is created disabled, because the worker that
/// will submit is another thread than this one, and enabled by the worker's first wait.
pub fn probe() -> io::Result<IoUring> {
    let ring =
        match IoUring::builder().setup_single_issuer().setup_defer_taskrun().setup_r_disabled().build(RING_ENTRIES) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::builder().setup_coop_taskrun().build(RING_ENTRIES).or_else(|_| IoUring::new(RING_ENTRIES))?
            }
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
    Ok(ring)
}

impl UringIo {
    /// Takes a probed ring, leaves the TUN blocking and arms the reads.
    pub fn new(ring: IoUring, tun: Tun, socket: Arc<Socket>, bell: Arc<Doorbell>) -> io::Result<UringIo> {
        os(&socket)?;
        if bell.fd().is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a twin doorbell on the io_uring backend"));
        }
        tun.set_nonblocking(false)?;
        // Single-issuer rings are the ones `probe` created disabled.
        let ring_disabled = ring.params().is_setup_single_issuer();
        let mut u = UringIo {
            ring,
            tun,
            socket,
            bell,
            bell_armed: false,
            generation: 0,
            retired: Vec::new(),
            tun_bufs: (0..TUN_READS_IN_FLIGHT).map(|_| None).collect(),
            tun_ready: Vec::new(),
            udp_bufs: (0..UDP_RECVS_IN_FLIGHT).map(|_| None).collect(),
            udp_slots: (0..UDP_RECVS_IN_FLIGHT).map(|_| MsgSlot::new()).collect(),
            udp_ready: Vec::new(),
            send_slots: (0..WRITE_CHUNK).map(|_| MsgSlot::new()).collect(),
            send_addrs: Vec::with_capacity(WRITE_CHUNK),
            writes_pending: 0,
            first_write_error: None,
            gso_failed: Vec::new(),
            read_error: None,
            disabled: ring_disabled,
            broken: None,
            held: Vec::new(),
            inject_enter_failures: 0,
        };
        for i in 0..TUN_READS_IN_FLIGHT {
            u.arm_tun_read(i, Buf::new(TUN_BUF))?;
        }
        for i in 0..UDP_RECVS_IN_FLIGHT {
            u.arm_udp_recv(i, Buf::new(UDP_BUF))?;
        }
        u.arm_bell()?;
        if !u.disabled {
            u.ring.submit()?;
        }
        Ok(u)
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
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().user_data(user_data(KIND_BELL, 0));
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
        self.ring.submit_and_wait(want) // 0: submit only
    }

    /// Queues one submission, submitting first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built here points at memory that stays valid until its
            // completion is reaped: fixed slots and ring-owned buffers, or a caller's batch
            // that the call does not return before its operations complete (or, when the ring
            // broke, that the backend keeps: `hold_*`).
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

    fn arm_tun_read(&mut self, i: usize, mut buf: Buf) -> io::Result<()> {
        let entry = opcode::Read::new(types::Fd(self.tun.fd()), buf.data.as_mut_ptr(), buf.data.len() as u32)
            .build()
            .user_data(user_data(KIND_TUN_READ, i));
        self.tun_bufs[i] = Some(buf);
        self.push(&entry)
    }

    fn arm_udp_recv(&mut self, i: usize, mut buf: Buf) -> io::Result<()> {
        let fd = os(&self.socket)?.fd();
        let slot = &mut self.udp_slots[i];
        slot.iov = libc::iovec { iov_base: buf.data.as_mut_ptr().cast(), iov_len: buf.data.len() };
        slot.hdr.msg_name = (&mut slot.addr as *mut libc::sockaddr_storage).cast();
        slot.hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.hdr.msg_control = slot.control.as_mut_ptr().cast();
        slot.hdr.msg_controllen = CMSG_ROOM;
        slot.hdr.msg_flags = 0;
        slot.generation = self.generation;
        let entry = opcode::RecvMsg::new(types::Fd(fd), &mut slot.hdr).build().user_data(user_data(KIND_UDP_RECV, i));
        self.udp_bufs[i] = Some(buf);
        self.push(&entry)
    }

    /// Sorts every completion there is: reads become ready buffers, writes are counted.
    fn reap(&mut self) {
        let cqes: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (data, result) in cqes {
            let (kind, i) = (data >> 32, (data & 0xffff_ffff) as usize);
            match kind {
                KIND_TUN_READ => self.on_tun_read(i, result),
                KIND_UDP_RECV => self.on_udp_recv(i, result),
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
                _ => {} // KIND_CANCEL: nothing to do; the cancelled receive reports itself
            }
        }
        let live: Vec<u64> =
            self.udp_slots.iter().zip(&self.udp_bufs).filter(|(_, b)| b.is_some()).map(|(s, _)| s.generation).collect();
        self.retired.retain(|(g, _)| live.contains(g));
    }

    fn on_tun_read(&mut self, i: usize, result: i32) {
        let Some(mut buf) = self.tun_bufs.get_mut(i).and_then(Option::take) else { return };
        if result >= 0 {
            buf.len = result as usize;
            buf.stride = buf.len;
            self.tun_ready.push(buf);
            return;
        }
        if !matches!(-result, libc::EINTR | libc::EAGAIN | libc::ECANCELED) {
            self.read_error.get_or_insert(io::Error::from_raw_os_error(-result));
        }
        let _ = self.arm_tun_read(i, buf);
    }

    fn on_udp_recv(&mut self, i: usize, result: i32) {
        let Some(mut buf) = self.udp_bufs.get_mut(i).and_then(Option::take) else { return };
        if result > 0 {
            let slot = &self.udp_slots[i];
            buf.len = result as usize;
            buf.src = from_storage(&slot.addr);
            buf.stride = gro_segment_size(&slot.hdr).unwrap_or(buf.len);
            self.udp_ready.push(buf);
            return;
        }
        if result < 0 && !matches!(-result, libc::EINTR | libc::EAGAIN | libc::ECANCELED) {
            self.read_error.get_or_insert(io::Error::from_raw_os_error(-result));
        }
        let _ = self.arm_udp_recv(i, buf);
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
                opcode::SendMsg::new(types::Fd(sock.fd()), &slot.hdr).build().user_data(user_data(KIND_SEND, i));
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
}

impl WorkerIo for UringIo {
    fn backend(&self) -> Backend {
        Backend::Uring
    }

    fn tun_read_limit(&self) -> usize {
        TUN_READS_IN_FLIGHT
    }

    fn udp_recv_limit(&self) -> usize {
        UDP_RECVS_IN_FLIGHT
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.enable()?;
        self.reap();
        if !self.bell_armed {
            self.arm_bell()?;
        }
        if self.tun_ready.is_empty() && self.udp_ready.is_empty() {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
            self.reap();
        } else {
            self.ring.submit()?;
        }
        match self.read_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn read_tun(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        out.append(&mut self.tun_ready);
        Ok(())
    }

    fn recv_udp(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        out.append(&mut self.udp_ready);
        Ok(())
    }

    fn recycle_tun(&mut self, bufs: &mut Vec<Buf>) {
        // A buffer of another size (a placeholder) would cut a later read short: a fresh one
        // takes its place.
        for buf in bufs.drain(..).map(|b| if b.data.len() == TUN_BUF { b } else { Buf::new(TUN_BUF) }) {
            let Some(i) = self.tun_bufs.iter().position(Option::is_none) else { break };
            if let Err(e) = self.arm_tun_read(i, buf) {
                self.read_error.get_or_insert(e);
            }
        }
    }

    fn recycle_udp(&mut self, bufs: &mut Vec<Buf>) {
        for buf in bufs.drain(..).map(|b| if b.data.len() == UDP_BUF { b } else { Buf::new(UDP_BUF) }) {
            let Some(i) = self.udp_bufs.iter().position(Option::is_none) else { break };
            if let Err(e) = self.arm_udp_recv(i, buf) {
                self.read_error.get_or_insert(e);
            }
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
                    .user_data(user_data(KIND_TUN_WRITE, i));
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
        let old_generation = self.generation;
        self.generation += 1;
        // Receives armed on the old socket end (cancelled, or by its shutdown) and are re-armed
        // on the new one as they complete; the old socket lives until then.
        let armed: Vec<usize> = (0..UDP_RECVS_IN_FLIGHT).filter(|&i| self.udp_bufs[i].is_some()).collect();
        if !armed.is_empty() {
            self.retired.push((old_generation, old));
        }
        for i in armed {
            let entry =
                opcode::AsyncCancel::new(user_data(KIND_UDP_RECV, i)).build().user_data(user_data(KIND_CANCEL, i));
            let _ = self.push(&entry);
        }
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // Writes that never completed on a broken ring may still be read by the kernel after
        // the ring closes: their memory is leaked, not freed (one batch, on a failure path).
        std::mem::forget(std::mem::take(&mut self.held));
        // The buffers of reads still in flight must outlive them: cancel every read and reap
        // until none is left. Closing the ring (dropped before the buffers, as declared first)
        // also cancels them, so a failure here only costs time.
        let tun = (0..TUN_READS_IN_FLIGHT).filter(|&i| self.tun_bufs[i].is_some());
        let udp = (0..UDP_RECVS_IN_FLIGHT).filter(|&i| self.udp_bufs[i].is_some());
        let targets: Vec<u64> =
            tun.map(|i| user_data(KIND_TUN_READ, i)).chain(udp.map(|i| user_data(KIND_UDP_RECV, i))).collect();
        for t in targets {
            let _ = self.push(&opcode::AsyncCancel::new(t).build().user_data(user_data(KIND_CANCEL, 0)));
        }
        for _ in 0..100 {
            if self.tun_bufs.iter().chain(&self.udp_bufs).all(Option::is_none) {
                break;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            for c in self.ring.completion() {
                let (kind, i) = (c.user_data() >> 32, (c.user_data() & 0xffff_ffff) as usize);
                match kind {
                    KIND_TUN_READ => self.tun_bufs[i] = None,
                    KIND_UDP_RECV => self.udp_bufs[i] = None,
                    _ => {}
                }
            }
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
