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

//! The parts: `uring_ring.rs` probes and owns the ring, `uring_reads.rs` arms the reads and
//! reads their completions, `buf_ring.rs` holds the provided buffers; this file has the
//! writes, the wait and the worker's seam.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types};
use socket2::SockAddr;

use super::batch::{Buf, SendBatch, TunWriteBatch};
use super::doorbell::Doorbell;
use super::mmsg::{gso_refused, send_one_by_one};
use super::udp::{fill_send_msghdr, OsSocket};
use super::uring_reads::{MsgSlot, ReadSide};
pub use super::uring_ring::{probe, ProbedRing};
use super::uring_ring::{
    split_user_data, user_data, Ring, KIND_BELL, KIND_SEND, KIND_TUN_READ, KIND_TUN_READ_MULTI, KIND_TUN_WRITE,
    KIND_UDP_RECV, KIND_UDP_RECV_MULTI,
};
use super::vnet::tun_frame;
use super::{Backend, Socket, Tun, WorkerIo, TUN_READ_BATCH, UDP_RECV_BATCH};

/// Sends or TUN writes submitted together before waiting for them.
const WRITE_CHUNK: usize = 256;
/// Failed enters in a row with writes in flight before the ring is broken (a second in all).
const MAX_ENTER_FAILURES: u32 = 100;
const ENTER_RETRY_PAUSE: Duration = Duration::from_millis(10);

pub struct UringIo {
    ring: Ring,
    tun: Tun,
    socket: Arc<Socket>,
    bell: Arc<Doorbell>,
    /// A poll on the doorbell is in flight (one-shot: re-armed after it fires).
    bell_armed: bool,
    reads: ReadSide,
    send_slots: Vec<MsgSlot>,
    send_addrs: Vec<SockAddr>,
    cqes: Vec<(u64, i32, u32)>,
    /// Sends or TUN writes submitted and not yet completed.
    writes_pending: usize,
    first_write_error: Option<io::Error>,
    /// Which sends failed for want of GSO (by send slot), to resend one by one.
    gso_failed: Vec<usize>,
    /// Why the ring may no longer be used, once it may not.
    broken: Option<String>,
    /// Memory of writes that never completed on a broken ring: kept, and leaked on drop.
    held: Vec<Vec<u8>>,
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

impl UringIo {
    /// Takes a probed ring, leaves the TUN blocking and arms the reads.
    pub fn new(probed: ProbedRing, tun: Tun, socket: Arc<Socket>, bell: Arc<Doorbell>) -> io::Result<UringIo> {
        os(&socket)?;
        if bell.fd().is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a twin doorbell on the io_uring backend"));
        }
        tun.set_nonblocking(false)?;
        let ProbedRing { ring, tun_bufs, udp_bufs, multishot_tun, multishot_udp } = probed;
        let mut u = UringIo {
            ring: Ring::new(ring),
            tun,
            socket,
            bell,
            bell_armed: false,
            reads: ReadSide::new(tun_bufs, udp_bufs, multishot_tun, multishot_udp),
            send_slots: (0..WRITE_CHUNK).map(|_| MsgSlot::new()).collect(),
            send_addrs: Vec::with_capacity(WRITE_CHUNK),
            cqes: Vec::new(),
            writes_pending: 0,
            first_write_error: None,
            gso_failed: Vec::new(),
            broken: None,
            held: Vec::new(),
        };
        u.arm_reads();
        u.arm_bell()?;
        if !u.ring.is_disabled() {
            u.ring.ring.submit()?;
        }
        Ok(u)
    }

    /// Polls the doorbell's eventfd (a poll needs no buffer, so nothing to keep alive).
    fn arm_bell(&mut self) -> io::Result<()> {
        if self.bell_armed {
            return Ok(());
        }
        let fd = self.bell.fd().unwrap_or(-1);
        let entry =
            opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().user_data(user_data(KIND_BELL, 0, 0));
        self.ring.push(&entry)?;
        self.bell_armed = true;
        Ok(())
    }

    fn arm_reads(&mut self) {
        match os(&self.socket) {
            Ok(s) => self.reads.arm(&mut self.ring, self.tun.fd(), s.fd()),
            Err(e) => {
                self.reads.error.get_or_insert(e);
            }
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

    /// Sorts every completion there is: reads become ready buffers, writes are counted.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.completions(&mut cqes);
        for &(data, result, flags) in &cqes {
            let (kind, generation, i) = split_user_data(data);
            match kind {
                KIND_TUN_READ | KIND_TUN_READ_MULTI => self.reads.on_tun_read(result, flags),
                KIND_UDP_RECV | KIND_UDP_RECV_MULTI => {
                    self.reads.on_udp_recv(kind == KIND_UDP_RECV_MULTI, generation, i, result, flags)
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
        self.reads.settle();
    }

    /// Submits what is queued and waits until `writes_pending` is zero; a failed enter is
    /// tried again, and after `MAX_ENTER_FAILURES` in a row the ring is broken.
    fn complete_writes(&mut self) -> io::Result<()> {
        self.refuse_if_broken()?;
        let mut failures = 0;
        while self.writes_pending > 0 {
            match self.ring.enter(1) {
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
            self.ring.push(&entry)?;
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

    fn engaged(&self) -> Option<String> {
        Some(self.reads.engaged())
    }

    fn tun_read_limit(&self) -> usize {
        TUN_READ_BATCH
    }

    fn udp_recv_limit(&self) -> usize {
        UDP_RECV_BATCH
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.ring.enable()?;
        self.reap();
        self.arm_reads();
        self.arm_bell()?;
        if self.reads.has_ready() {
            // Busy: enter only to submit, or to run completions the kernel deferred to us.
            if self.ring.has_work_for_enter() {
                self.ring.enter(0)?;
                self.reap();
            }
        } else {
            self.ring.wait_one(timeout)?;
            self.reap();
        }
        match self.reads.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn read_tun(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        self.reads.tun.hand_out(out, TUN_READ_BATCH);
        Ok(())
    }

    fn recv_udp(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        self.reads.udp.hand_out(out, UDP_RECV_BATCH);
        Ok(())
    }

    fn recycle_tun(&mut self, bufs: &mut Vec<Buf>) {
        self.reads.tun.bufs.give_back(bufs);
        if let Err(e) = self.reads.arm_tun(&mut self.ring, self.tun.fd()) {
            self.reads.error.get_or_insert(e);
        }
    }

    fn recycle_udp(&mut self, bufs: &mut Vec<Buf>) {
        self.reads.udp.bufs.give_back(bufs);
        let armed = os(&self.socket).and_then(|s| self.reads.arm_udp(&mut self.ring, s.fd()));
        if let Err(e) = armed {
            self.reads.error.get_or_insert(e);
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
                if let Err(e) = self.ring.push(&entry) {
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

    fn reads_ran_dry(&self) -> [u64; 2] {
        [self.reads.tun.ran_dry, self.reads.udp.ran_dry]
    }

    fn worker_restarted(&mut self) {
        // What the worker held is gone with its state; without new buffers in their place
        // the rings would shrink by a batch each time, and reads stop once they are empty.
        self.reads.tun.bufs.replace_lent();
        self.reads.udp.bufs.replace_lent();
    }

    fn set_socket(&mut self, socket: Arc<Socket>) {
        let old = std::mem::replace(&mut self.socket, socket);
        let old_fd = os(&old).ok().map(|s| s.fd());
        self.reads.retire(&mut self.ring, old, old_fd);
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
        let sockets = std::iter::once(&self.socket).chain(self.reads.retired_sockets());
        let mut fds: Vec<i32> = sockets.filter_map(|s| os(s).ok()).map(|s| s.fd()).collect();
        fds.push(self.tun.fd());
        for fd in fds {
            self.ring.cancel_all_on(fd);
        }
        for _ in 0..100 {
            if !self.reads.in_flight() {
                return;
            }
            let _ = self.ring.wait_one(Duration::from_millis(10));
            self.reap();
        }
        if self.reads.in_flight() {
            self.reads.tun.bufs.leak();
            self.reads.udp.bufs.leak();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::UringOptions;

    /// Whether this runs under CI (`CI=true`), where skipping is failing.
    fn under_ci() -> bool {
        std::env::vars().any(|(k, v)| k == "CI" && v == "true")
    }

    /// A ring on a TUN of a network namespace of this test thread's own (root only; under
    /// CI, always root, a missing root fails the test instead of skipping it).
    fn ring_on_a_private_tun() -> Option<UringIo> {
        ring_with(&UringOptions::default())
    }

    fn ring_with(options: &UringOptions) -> Option<UringIo> {
        // SAFETY: geteuid only reads the caller's credentials.
        if unsafe { libc::geteuid() } != 0 {
            assert!(!under_ci(), "this test needs root under CI");
            eprintln!("SKIP: needs root");
            return None;
        }
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread (the test's own) to a new,
        // empty network namespace; nothing else of the process changes.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", io::Error::last_os_error());
        let ring = match probe(options) {
            Ok(r) => r,
            Err(e) => {
                assert!(!under_ci(), "no io_uring under CI: {e}");
                eprintln!("SKIP: io_uring refused: {e}");
                return None;
            }
        };
        let tun = Tun::open("wgturing0", false, false).expect("a TUN in the private namespace");
        let socket = Arc::new(Socket::Os(OsSocket::bind(0, 0, true).expect("a UDP socket")));
        let bell = Arc::new(Doorbell::event().expect("an eventfd"));
        let mut io = UringIo::new(ring, tun, socket, bell).expect("the backend");
        io.wait(Duration::ZERO).expect("enabled on this thread");
        Some(io)
    }

    /// Runs `test` on a thread of its own: `ring_with` moves its thread to a network
    /// namespace of its own, and each test's TUN must be alone there.
    fn on_own_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test).join().expect("the test thread");
    }

    /// Brings the private TUN up as 10.9.0.1/24 and returns a UDP socket whose datagrams to
    /// 10.9.0.2 the kernel routes into it.
    fn traffic_into_the_tun() -> std::net::UdpSocket {
        // No IPv6 on it: the kernel's own router solicitations would be reads too.
        for cmd in [
            "ip link set lo up",
            "sysctl -qw net.ipv6.conf.wgturing0.disable_ipv6=1",
            "ip link set wgturing0 up",
            "ip addr add 10.9.0.1/24 dev wgturing0",
        ] {
            let ok = std::process::Command::new("sh").arg("-c").arg(cmd).status().map(|s| s.success());
            assert!(matches!(ok, Ok(true)), "{cmd}");
        }
        std::net::UdpSocket::bind("10.9.0.1:0").expect("a socket on the TUN's address")
    }

    /// Waits (up to a second) until `n` TUN reads are ready, and takes them.
    fn read_tun_packets(io: &mut UringIo, n: usize) -> Vec<Buf> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while got.len() < n && std::time::Instant::now() < deadline {
            io.wait(Duration::from_millis(50)).expect("wait");
            io.read_tun(&mut got).expect("read");
        }
        got
    }

    /// The kernel's ring of TUN buffers runs dry while the worker holds them all: the armed
    /// multishot read ends with ENOBUFS (the packets wait in the TUN's queue), and once the
    /// buffers are back the read is armed again and the waiting packets arrive, in order.
    /// Single reads are never armed beyond the buffers in the ring, and resume the same way.
    #[test]
    fn a_ring_that_runs_dry_is_armed_again_when_buffers_come_back() {
        for multishot in [true, false] {
            on_own_thread(move || {
                let Some(mut io) = ring_with(&UringOptions { multishot, buffers: 2 }) else { return };
                let sender = traffic_into_the_tun();
                assert_eq!(io.reads.tun.multishot, multishot, "this kernel has multishot reads");
                for i in 0..6u8 {
                    sender.send_to(&[i; 20], "10.9.0.2:9").expect("send");
                }
                let mut held = read_tun_packets(&mut io, 2);
                assert_eq!(held.len(), 2, "the two buffers of the ring filled");
                // Nothing more can be read until buffers come back, and the read says why.
                assert!(read_tun_packets(&mut io, 1).is_empty());
                if multishot {
                    assert!(io.reads.tun.ran_dry > 0, "the armed read ended with ENOBUFS");
                } else {
                    assert_eq!(io.reads.tun.armed, 0, "no single read is armed without a buffer for it");
                }
                let mut payloads = Vec::new();
                for _ in 0..3 {
                    payloads.extend(held.iter().map(|b| b.filled()[28]));
                    io.recycle_tun(&mut held);
                    held = read_tun_packets(&mut io, 2);
                }
                assert!(held.is_empty() || held.len() == 2);
                assert_eq!(payloads, [0, 1, 2, 3, 4, 5], "every packet, in order");
            });
        }
    }

    /// A worker that panicked dropped the buffers it held; the backend puts fresh ones in
    /// their place, so reads go on instead of stopping with an empty ring.
    #[test]
    fn buffers_a_restarted_worker_dropped_are_replaced() {
        on_own_thread(|| {
            let Some(mut io) = ring_with(&UringOptions { multishot: true, buffers: 2 }) else { return };
            let sender = traffic_into_the_tun();
            for i in 0..4u8 {
                sender.send_to(&[i; 20], "10.9.0.2:9").expect("send");
            }
            let held = read_tun_packets(&mut io, 2);
            assert_eq!(held.len(), 2);
            drop(held); // as a panicking worker's state is
            assert!(read_tun_packets(&mut io, 1).is_empty(), "the ring is empty");
            io.worker_restarted();
            let next = read_tun_packets(&mut io, 2);
            assert_eq!(next.iter().map(|b| b.filled()[28]).collect::<Vec<_>>(), [2, 3], "reads go on");
        });
    }

    /// UDP receives through the multishot RECVMSG: the payload, its source and the GRO
    /// segment size are read from the buffer's header; with single receives from the slot.
    #[test]
    fn udp_receives_carry_payload_and_source_either_way() {
        for multishot in [true, false] {
            on_own_thread(move || {
                let Some(mut io) = ring_with(&UringOptions { multishot, buffers: 4 }) else { return };
                let _ = traffic_into_the_tun();
                let port = io.socket.local_port().expect("port");
                let sender = std::net::UdpSocket::bind("10.9.0.1:0").expect("a sender");
                for i in 0..10u8 {
                    sender.send_to(&[i; 100], ("10.9.0.1", port)).expect("send");
                }
                // An empty datagram reaches the worker too (which counts it as malformed).
                sender.send_to(&[], ("10.9.0.1", port)).expect("send");
                let mut got = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(1);
                while got.len() < 11 && std::time::Instant::now() < deadline {
                    io.wait(Duration::from_millis(50)).expect("wait");
                    let mut bufs = Vec::new();
                    io.recv_udp(&mut bufs).expect("receive");
                    for b in &bufs {
                        assert_eq!(b.src, Some(sender.local_addr().unwrap()), "the source");
                        got.push(b.filled().first().copied().map(|x| (x, b.len)));
                    }
                    io.recycle_udp(&mut bufs);
                }
                let want: Vec<_> = (0..10).map(|i| Some((i, 100))).chain([None]).collect();
                assert_eq!(got, want, "every datagram, in order, the empty one too (multishot {multishot})");
                // A GSO send of ten 100-byte datagrams arrives as one GRO receive: its
                // segment size comes from the control data.
                let segment: libc::c_int = 100;
                // SAFETY: sets UDP_SEGMENT (103) from a live c_int on the sender's own fd.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&sender),
                        libc::SOL_UDP,
                        103,
                        (&segment as *const libc::c_int).cast(),
                        size_of::<libc::c_int>() as u32,
                    )
                };
                assert_eq!(rc, 0);
                sender.send_to(&[7; 1000], ("10.9.0.1", port)).expect("a GSO send");
                let mut bufs = Vec::new();
                while bufs.is_empty() && std::time::Instant::now() < deadline + Duration::from_secs(1) {
                    io.wait(Duration::from_millis(50)).expect("wait");
                    io.recv_udp(&mut bufs).expect("receive");
                }
                assert_eq!(bufs.len(), 1, "one receive");
                assert_eq!((bufs[0].len, bufs[0].stride), (1000, 100), "ten segments of 100 bytes");
                io.recycle_udp(&mut bufs);
            });
        }
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
        io.ring.inject_enter_failures = 3;
        let mut batch = packets(300);
        let _ = io.write_tun(&mut batch); // the writes' own results (a TUN that is down) do not matter
        assert_eq!(io.writes_pending, 0, "every write completed before the batch came back");
        assert!(io.broken().is_none() && io.held.is_empty());

        io.ring.inject_enter_failures = 10 * MAX_ENTER_FAILURES;
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
