//! Batched UDP on a kernel socket: recvmmsg and sendmmsg with the UDP GRO/GSO control
//! messages, and the fallback when a device refuses GSO, written once for every sender (the
//! syscall workers, the io_uring workers' fallback, the side socket, the control thread).

use std::io;
use std::mem::{size_of, zeroed};

use socket2::SockAddr;

use super::batch::{Buf, SendBatch};
use super::udp::{fill_send_msghdr, from_storage, gro_segment_size, OsSocket, CMSG_ROOM};
use super::{UDP_BUF, UDP_RECV_BATCH};

/// sendmmsg entries per call.
const SEND_CHUNK: usize = 256;

/// Sends a `SendBatch` with sendmmsg, a GSO group per message where the batch made groups;
/// falls back to one datagram per message when the kernel refuses GSO. The workers' backend
/// and the control thread (cookie replies under a flood) both send through one.
pub struct BatchSender {
    send: MmsgArrays,
    send_addrs: Vec<SockAddr>,
}

impl Default for BatchSender {
    fn default() -> Self {
        BatchSender { send: MmsgArrays::new(SEND_CHUNK), send_addrs: Vec::with_capacity(SEND_CHUNK) }
    }
}

/// Receives up to `UDP_RECV_BATCH` buffers with one recvmmsg: each a datagram or a GRO train
/// (with its stride), with its source. The workers' backend and the side socket's reader both
/// receive through one.
pub struct BatchReceiver {
    recv: MmsgArrays,
    free: Vec<Buf>,
}

impl Default for BatchReceiver {
    fn default() -> Self {
        BatchReceiver { recv: MmsgArrays::new(UDP_RECV_BATCH), free: Vec::new() }
    }
}

impl BatchReceiver {
    /// Appends what the socket has to `out`. With `wait`, blocks until one datagram arrives
    /// or the socket's receive timeout passes (then `out` stays empty); without, never blocks.
    pub fn recv(&mut self, sock: &OsSocket, out: &mut Vec<Buf>, wait: bool) -> io::Result<()> {
        self.receive(sock, out, wait, UDP_BUF)
    }

    /// As `recv`, but copies at most `keep` bytes of each receive: the kernel drops the rest
    /// of a GRO train without copying it, and the buffer's `cut` says how many bytes that was.
    /// For a reader that will refuse most of what it reads anyway (a flood past its budget):
    /// a train is one source's datagrams, so its first is a fair sample of the rest.
    pub fn skim(&mut self, sock: &OsSocket, out: &mut Vec<Buf>, wait: bool, keep: usize) -> io::Result<()> {
        self.receive(sock, out, wait, keep.clamp(1, UDP_BUF))
    }

    fn receive(&mut self, sock: &OsSocket, out: &mut Vec<Buf>, wait: bool, keep: usize) -> io::Result<()> {
        let n = UDP_RECV_BATCH;
        let mut bufs: Vec<Buf> = (0..n).map(|_| self.free.pop().unwrap_or_else(|| Buf::new(UDP_BUF))).collect();
        let r = &mut self.recv;
        for (i, b) in bufs.iter_mut().enumerate() {
            r.iovecs[i] = libc::iovec { iov_base: b.data.as_mut_ptr().cast(), iov_len: b.data.len().min(keep) };
            let h = &mut r.headers[i].msg_hdr;
            h.msg_name = (&mut r.storage[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut r.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = r.control[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_ROOM;
            h.msg_flags = 0;
            r.headers[i].msg_len = 0;
        }
        let mut flags = if wait { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT };
        if keep < UDP_BUF {
            // The kernel then reports each receive's whole length, not what it copied.
            flags |= libc::MSG_TRUNC;
        }
        // SAFETY: every header points at a live buffer, address and control area sized as
        // declared; `bufs` outlives the call.
        let got = unsafe { libc::recvmmsg(sock.fd(), r.headers.as_mut_ptr(), n as u32, flags, std::ptr::null_mut()) };
        let result = if got < 0 { Err(io::Error::last_os_error()) } else { Ok(got as usize) };
        let got = *result.as_ref().unwrap_or(&0);
        for (i, mut b) in bufs.into_iter().enumerate() {
            if i < got {
                let whole = r.headers[i].msg_len as usize;
                b.start = 0;
                b.len = whole.min(keep);
                b.cut = whole - b.len;
                b.src = from_storage(&r.storage[i]);
                b.stride = gro_segment_size(&r.headers[i].msg_hdr).unwrap_or(whole);
                out.push(b);
            } else {
                self.free.push(b);
            }
        }
        match result {
            Err(e) if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Err(e),
            _ => Ok(()),
        }
    }

    /// Takes buffers back for the next receive.
    pub fn recycle(&mut self, bufs: &mut Vec<Buf>) {
        // A buffer of another size (a twin's datagram) would cut a later receive short.
        bufs.retain(|b| b.data.len() == UDP_BUF);
        self.free.append(bufs);
        self.free.truncate(UDP_RECV_BATCH);
    }
}

/// The C arrays one recvmmsg/sendmmsg call points into.
struct MmsgArrays {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    storage: Vec<libc::sockaddr_storage>,
    control: Vec<[u64; CMSG_ROOM / 8]>,
}

// SAFETY: the raw pointers inside the mmsghdr/iovec arrays only ever point into buffers the
// caller owns or borrows for one call, and are rebuilt before every call; so the senders,
// receivers and backends holding these arrays may move between threads.
unsafe impl Send for MmsgArrays {}

impl MmsgArrays {
    fn new(n: usize) -> Self {
        MmsgArrays {
            // SAFETY: mmsghdr, iovec and sockaddr_storage are plain C structs; all-zero is valid.
            headers: (0..n).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: as above.
            iovecs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: as above.
            storage: (0..n).map(|_| unsafe { zeroed() }).collect(),
            control: vec![[0u64; CMSG_ROOM / 8]; n],
        }
    }
}

impl BatchSender {
    /// Sends every group of `batch` and clears it. A group the kernel refuses (an unreachable
    /// endpoint, ...) is skipped and its error returned after the rest went out.
    pub fn send(&mut self, sock: &OsSocket, batch: &mut SendBatch) -> io::Result<()> {
        let total = batch.groups().len();
        let mut sent = 0;
        let mut result = Ok(());
        while sent < total {
            let (n, r) = self.send_chunk(batch, sent, sock);
            sent += n;
            if let Err(e) = r {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let g = batch.groups()[sent];
                if g.count > 1 && gso_refused(&e) {
                    batch.disable_gso();
                    send_one_by_one(sock, batch, &g);
                }
                result = Err(e);
                // Skip the group that failed and go on.
                sent += 1;
            }
        }
        batch.clear();
        result
    }

    fn send_chunk(&mut self, batch: &SendBatch, first: usize, sock: &OsSocket) -> (usize, io::Result<()>) {
        let groups = &batch.groups()[first..];
        let n = groups.len().min(SEND_CHUNK);
        self.send_addrs.clear();
        self.send_addrs.extend(groups[..n].iter().map(|g| sock.to_sockaddr(g.addr)));
        for (i, g) in groups[..n].iter().enumerate() {
            let send = &mut self.send;
            let (h, iov, control) = (&mut send.headers[i].msg_hdr, &mut send.iovecs[i], &mut send.control[i]);
            fill_send_msghdr(h, iov, &self.send_addrs[i], batch.bytes(g), control, g);
        }
        // SAFETY: headers[..n] point at the batch's arena, the addresses and control data
        // above, all alive for the call; the kernel only reads them.
        let rc = unsafe { libc::sendmmsg(sock.fd(), self.send.headers.as_mut_ptr(), n as u32, 0) };
        if rc >= 0 {
            // sendmmsg sends at least one message or fails; count one either way so a
            // zero can never spin this loop.
            return ((rc as usize).max(1), Ok(()));
        }
        (0, Err(io::Error::last_os_error()))
    }
}

/// Sends a GSO group the kernel refused, one datagram at a time.
pub(crate) fn send_one_by_one(sock: &OsSocket, batch: &SendBatch, g: &super::batch::Group) {
    for d in batch.datagrams(g) {
        let _ = sock.send_to(d, g.addr);
    }
}

/// Whether an error from a GSO send means "this device cannot do UDP GSO".
pub(crate) fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}
