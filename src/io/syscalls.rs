//! The syscall backend: poll(2) on the TUN queue and the socket, non-blocking TUN reads,
//! recvmmsg/sendmmsg with UDP GRO/GSO cmsgs, one write(2) per TUN packet.

use std::io;
use std::mem::{size_of, zeroed};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockAddr;

use super::batch::{Buf, SendBatch, TunWriteBatch};
use super::doorbell::Doorbell;
use super::udp::{from_storage, gro_segment_size, set_segment_cmsg, OsSocket, CMSG_ROOM};
use super::{Backend, Socket, Tun, WorkerIo, TUN_BUF, TUN_READ_BATCH, UDP_BUF, UDP_RECV_BATCH};
use crate::io::vnet::VNET_HDR_LEN;

/// sendmmsg entries per call.
const SEND_CHUNK: usize = 256;

pub struct SyscallIo {
    tun: Tun,
    socket: Arc<Socket>,
    bell: Arc<Doorbell>,
    free_tun: Vec<Buf>,
    receiver: BatchReceiver,
    sender: BatchSender,
}

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

fn os(socket: &Socket) -> io::Result<&OsSocket> {
    match socket {
        Socket::Os(s) => Ok(s),
        Socket::Twin(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "a twin socket on the syscall backend")),
    }
}

impl SyscallIo {
    pub fn new(tun: Tun, socket: Arc<Socket>, bell: Arc<Doorbell>) -> io::Result<SyscallIo> {
        os(&socket)?;
        if bell.fd().is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a twin doorbell on the syscall backend"));
        }
        tun.set_nonblocking(true)?;
        Ok(SyscallIo {
            tun,
            socket,
            bell,
            free_tun: Vec::new(),
            receiver: BatchReceiver::default(),
            sender: BatchSender::default(),
        })
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
            let bytes = batch.bytes(g);
            self.send.iovecs[i] = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
            let h = &mut self.send.headers[i].msg_hdr;
            h.msg_name = self.send_addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.send_addrs[i].len();
            h.msg_iov = &mut self.send.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            set_segment_cmsg(h, &mut self.send.control[i], g.segment, g.count);
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

/// poll(2) on a few fds for input; returns a mask of those readable (bit i for `fds[i]`).
pub(crate) fn poll_readable(fds: &[i32], timeout: Duration) -> io::Result<u32> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().take(32).map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll reads and writes `pfds.len()` pollfds that live in this frame.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        return Ok(0);
    }
    Ok(pfds.iter().enumerate().filter(|(_, p)| p.revents != 0).fold(0, |m, (i, _)| m | 1 << i))
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

/// The TUN write for one framed packet: with or without its virtio_net_hdr.
pub(crate) fn tun_frame(framed: &[u8], vnet: bool) -> &[u8] {
    if vnet {
        framed
    } else {
        &framed[VNET_HDR_LEN.min(framed.len())..]
    }
}

impl WorkerIo for SyscallIo {
    fn backend(&self) -> Backend {
        Backend::Syscalls
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let sock = os(&self.socket)?.fd();
        let bell = self.bell.fd().unwrap_or(-1);
        if poll_readable(&[self.tun.fd(), sock, bell], timeout)? & 0b100 != 0 {
            self.bell.clear();
        }
        Ok(())
    }

    fn read_tun(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        for _ in 0..TUN_READ_BATCH {
            let mut buf = self.free_tun.pop().unwrap_or_else(|| Buf::new(TUN_BUF));
            match self.tun.read(&mut buf.data) {
                Ok(n) => {
                    buf.len = n;
                    buf.stride = n;
                    buf.cut = 0;
                    out.push(buf);
                }
                Err(e) => {
                    self.free_tun.push(buf);
                    return match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
                        _ => Err(e),
                    };
                }
            }
        }
        Ok(())
    }

    fn recv_udp(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        let socket = self.socket.clone();
        self.receiver.recv(os(&socket)?, out, false)
    }

    fn recycle_tun(&mut self, bufs: &mut Vec<Buf>) {
        bufs.retain(|b| b.data.len() == TUN_BUF);
        self.free_tun.append(bufs);
        self.free_tun.truncate(TUN_READ_BATCH);
    }

    fn recycle_udp(&mut self, bufs: &mut Vec<Buf>) {
        self.receiver.recycle(bufs);
    }

    fn send_udp(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        let socket = self.socket.clone();
        self.sender.send(os(&socket)?, batch)
    }

    fn write_tun(&mut self, batch: &mut TunWriteBatch) -> io::Result<()> {
        let vnet = self.tun.has_vnet_hdr();
        let mut result = Ok(());
        for p in batch.packets() {
            if let Err(e) = self.tun.write(tun_frame(p, vnet)) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        batch.clear();
        result
    }

    fn set_socket(&mut self, socket: Arc<Socket>) {
        self.socket = socket;
    }
}
