//! The io_uring backend's ring: probing what the kernel offers, creating the ring and its two
//! provided buffer groups, and the submit and enter calls every other part goes through.

use std::io;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::buf_ring::ProvidedBufs;
use super::udp::CMSG_ROOM;
use super::{UringOptions, TUN_BUF, UDP_BUF};

const RING_ENTRIES: u32 = 1024;
pub(super) const TUN_GROUP: u16 = 0;
pub(super) const UDP_GROUP: u16 = 1;
/// What a multishot `RECVMSG` writes ahead of the payload in each buffer: the kernel's
/// `io_uring_recvmsg_out`, then room for the name and the control data as armed.
const RECVMSG_OUT_LEN: usize = 16;
pub(super) const UDP_PREFIX: usize = RECVMSG_OUT_LEN + size_of::<libc::sockaddr_storage>() + CMSG_ROOM;

pub(super) const KIND_TUN_READ: u64 = 1;
pub(super) const KIND_TUN_READ_MULTI: u64 = 2;
pub(super) const KIND_UDP_RECV: u64 = 3;
pub(super) const KIND_UDP_RECV_MULTI: u64 = 4;
pub(super) const KIND_SEND: u64 = 5;
pub(super) const KIND_TUN_WRITE: u64 = 6;
pub(super) const KIND_CANCEL: u64 = 7;
pub(super) const KIND_BELL: u64 = 8;

/// An operation's tag: its kind, the socket generation (receives) and an index.
pub(super) fn user_data(kind: u64, generation: u64, index: usize) -> u64 {
    kind << 56 | (generation & 0xff_ffff) << 32 | (index as u64 & 0xffff_ffff)
}

pub(super) fn split_user_data(data: u64) -> (u64, u64, usize) {
    (data >> 56, (data >> 32) & 0xff_ffff, (data & 0xffff_ffff) as usize)
}

/// A probed ring with its two buffer groups registered.
pub struct ProbedRing {
    pub(super) ring: IoUring,
    pub(super) tun_bufs: ProvidedBufs,
    pub(super) udp_bufs: ProvidedBufs,
    /// Multishot TUN reads (wanted, and `IORING_OP_READ_MULTISHOT`, 6.7, is there) and
    /// multishot UDP receives (wanted).
    pub(super) multishot_tun: bool,
    pub(super) multishot_udp: bool,
}

/// A ring if this kernel can run the backend, with its buffer groups. Refusals: ENOSYS (no
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
    Ok(ProbedRing {
        ring,
        tun_bufs,
        udp_bufs,
        multishot_tun: options.multishot && multishot_read,
        multishot_udp: options.multishot,
    })
}

/// The ring and the calls into it.
pub(super) struct Ring {
    pub ring: IoUring,
    /// The ring was created disabled and waits for its worker thread to enable it.
    disabled: bool,
    /// Fault injection for tests: the next this many enters fail with EIO without entering.
    pub inject_enter_failures: u32,
}

impl Ring {
    pub fn new(ring: IoUring) -> Ring {
        // Single-issuer rings are the ones `probe` created disabled.
        let disabled = ring.params().is_setup_single_issuer();
        Ring { ring, disabled, inject_enter_failures: 0 }
    }

    /// Enables a ring created disabled, on the thread that will submit from now on.
    pub fn enable(&mut self) -> io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        Ok(())
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Submits what is queued and, with `want`, waits for that many completions; with 0, it
    /// still runs completions the kernel deferred to this thread if it flagged any.
    pub fn enter(&mut self, want: usize) -> io::Result<usize> {
        if self.inject_enter_failures > 0 {
            self.inject_enter_failures -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.ring.submit_and_wait(want)
    }

    /// Submits what is queued and waits up to `timeout` for one completion.
    pub fn wait_one(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether an enter has work: submissions queued, or completions the kernel deferred.
    pub fn has_work_for_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        !sq.is_empty() || sq.taskrun()
    }

    /// Queues one submission, submitting first if the queue is full.
    pub fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry the backend builds points at memory that stays valid until
            // its completion is reaped: fixed slots, the provided buffer rings, or a caller's
            // batch that the call does not return before its operations complete (or, when
            // the ring broke, that the backend keeps). See the rules in `uring.rs`.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.enter(0)?;
        }
    }

    /// Cancels every operation armed on `fd` (the TUN queue or a socket).
    pub fn cancel_all_on(&mut self, fd: i32) {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all());
        let _ = self.push(&cancel.build().user_data(user_data(KIND_CANCEL, 0, 0)));
    }

    /// Takes every completion there is into `out` (tag, result, flags).
    pub fn completions(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
    }
}
