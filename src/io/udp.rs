//! UDP sockets for the tunnel's outer packets, and batched recvmmsg/sendmmsg.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Socket buffers sized for multi-gigabit bursts (the default 208 KiB drops under load).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

pub struct UdpSocket {
    socket: Socket,
    dual_stack: bool,
}

impl UdpSocket {
    /// Binds `[::]:port` (dual stack) with SO_REUSEPORT so every worker can own a socket on
    /// the same port; falls back to IPv4 only where IPv6 is off.
    pub fn bind(port: u16, fwmark: u32) -> io::Result<UdpSocket> {
        let (socket, dual_stack) = match Self::make(Domain::IPV6, port) {
            Ok(s) => (s, true),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(_) => (Self::make(Domain::IPV4, port)?, false),
        };
        let sock = UdpSocket { socket, dual_stack };
        if fwmark != 0 {
            sock.set_fwmark(fwmark)?;
        }
        Ok(sock)
    }

    fn make(domain: Domain, port: u16) -> io::Result<Socket> {
        let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        if domain == Domain::IPV6 {
            s.set_only_v6(false)?;
        }
        // Root may exceed net.core.rmem_max; others get what the sysctl allows.
        if set_int_opt(&s, libc::SO_RCVBUFFORCE, SOCKET_BUFFER_BYTES as i32).is_err() {
            let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        }
        if set_int_opt(&s, libc::SO_SNDBUFFORCE, SOCKET_BUFFER_BYTES as i32).is_err() {
            let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        }
        // Blocked receivers wake up now and then to notice a stop request.
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let addr: SocketAddr = if domain == Domain::IPV6 {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))
        } else {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        };
        s.bind(&addr.into())?;
        Ok(s)
    }

    /// Another socket on the same port (SO_REUSEPORT), for another worker.
    pub fn clone_on_same_port(&self, fwmark: u32) -> io::Result<UdpSocket> {
        UdpSocket::bind(self.local_port()?, fwmark)
    }

    pub fn local_port(&self) -> io::Result<u16> {
        self.socket
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("socket has no inet address"))
    }

    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.socket.set_mark(mark)
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Addresses as the socket wants them: IPv4 becomes v4-mapped on a dual-stack socket.
    fn to_sockaddr(&self, addr: SocketAddr) -> SockAddr {
        match addr {
            SocketAddr::V4(v4) if self.dual_stack => {
                SockAddr::from(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => SockAddr::from(other),
        }
    }

    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(buf, &self.to_sockaddr(addr))
    }

    /// Wakes receivers blocked on this socket (they see a zero-length read).
    pub fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Read);
    }
}

fn set_int_opt(s: &Socket, name: libc::c_int, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads size_of::<i32>() bytes from a live i32.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A v4-mapped IPv6 address is the IPv4 peer it stands for.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(canonical(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ))))
        }
        _ => None,
    }
}

/// Preallocated buffers for one recvmmsg call.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
    storage: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside iovecs/headers only ever point into this struct's own
// buffers and are rebuilt before every use; nothing is shared across threads.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(count: usize, slot_size: usize) -> Self {
        RecvBatch {
            bufs: (0..count).map(|_| vec![0u8; slot_size]).collect(),
            lens: vec![0; count],
            addrs: vec![None; count],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero is valid.
            storage: (0..count).map(|_| unsafe { zeroed() }).collect(),
            iovecs: (0..count).map(|_| unsafe { zeroed() }).collect(),
            headers: (0..count).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Receives up to a batch; blocks for the first datagram (until the socket's timeout).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovecs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: self.bufs[i].len() };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.storage[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let got = unsafe {
            libc::recvmmsg(sock.fd(), self.headers.as_mut_ptr(), n as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        for i in 0..got {
            self.lens[i] = self.headers[i].msg_len as usize;
            self.addrs[i] = from_storage(&self.storage[i]);
        }
        Ok(got)
    }

    pub fn packet_mut(&mut self, i: usize) -> (&mut [u8], Option<SocketAddr>) {
        let len = self.lens[i];
        (&mut self.bufs[i][..len], self.addrs[i])
    }
}

/// Datagrams waiting for one sendmmsg call. Callers fill a slot in place, then commit it.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    addrs: Vec<SockAddr>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    count: usize,
}

// SAFETY: as for RecvBatch, the raw pointers are rebuilt from owned buffers before each call.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(count: usize, slot_size: usize) -> Self {
        SendBatch {
            bufs: (0..count).map(|_| vec![0u8; slot_size]).collect(),
            lens: vec![0; count],
            addrs: (0..count).map(|_| SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)))).collect(),
            // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
            iovecs: (0..count).map(|_| unsafe { zeroed() }).collect(),
            headers: (0..count).map(|_| unsafe { zeroed() }).collect(),
            count: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.count == self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The next free slot to fill; None when the batch is full.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        self.bufs.get_mut(self.count).map(|b| b.as_mut_slice())
    }

    pub fn commit(&mut self, len: usize, addr: SocketAddr, sock: &UdpSocket) {
        if self.count < self.bufs.len() {
            self.lens[self.count] = len;
            self.addrs[self.count] = sock.to_sockaddr(addr);
            self.count += 1;
        }
    }

    /// Sends everything committed. Datagrams the kernel refuses are dropped, as UDP would.
    pub fn flush(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.count;
        for i in 0..n {
            self.iovecs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: self.lens[i] };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.addrs[i].len();
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut sent = 0;
        let mut result = Ok(0);
        while sent < n {
            // SAFETY: headers[sent..n] point at live buffers and addresses owned by self.
            let rc = unsafe { libc::sendmmsg(sock.fd(), self.headers[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Skip the datagram that failed (unreachable endpoint, ...) and go on.
                sent += 1;
                result = Err(e);
                continue;
            }
            sent += rc as usize;
        }
        self.count = 0;
        result.map(|_| n)
    }
}
