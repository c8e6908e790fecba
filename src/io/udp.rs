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
        if !crate::device::offloads_disabled() {
            // Best effort: without UDP_GRO each datagram simply arrives on its own.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one c_int from a live local.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_UDP,
                    UDP_GRO,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
        }
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

/// SOL_UDP options (<linux/udp.h>).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most segments one UDP GSO send may carry (UDP_MAX_SEGMENTS on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Room for one cmsg carrying an int, with alignment.
const CMSG_ROOM: usize = 64;

impl UdpSocket {
    /// Whether the kernel knows UDP_SEGMENT (sending may still fail later: see SendBatch::flush).
    pub fn supports_gso(&self) -> bool {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a live local.
        let rc = unsafe {
            libc::getsockopt(self.fd(), libc::SOL_UDP, UDP_SEGMENT, (&mut v as *mut libc::c_int).cast(), &mut len)
        };
        rc == 0
    }
}

/// Preallocated buffers for one recvmmsg call. With UDP GRO a buffer may hold several
/// datagrams back to back, each `stride` bytes but the last.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    strides: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
    storage: Vec<libc::sockaddr_storage>,
    control: Vec<[u64; CMSG_ROOM / 8]>,
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
            strides: vec![0; count],
            addrs: vec![None; count],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero is valid.
            storage: (0..count).map(|_| unsafe { zeroed() }).collect(),
            control: vec![[0u64; CMSG_ROOM / 8]; count],
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
            h.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_ROOM;
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
            self.strides[i] = gro_segment_size(&self.headers[i].msg_hdr).unwrap_or(self.lens[i]);
        }
        Ok(got)
    }

    /// Buffer `i` (one or more datagrams), its source and the datagram stride.
    pub fn packet_mut(&mut self, i: usize) -> (&mut [u8], Option<SocketAddr>, usize) {
        let len = self.lens[i];
        (&mut self.bufs[i][..len], self.addrs[i], self.strides[i].max(1))
    }
}

/// The UDP_GRO segment size in a received message's control data, if any.
fn gro_segment_size(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: the CMSG_* walkers stay within msg_control/msg_controllen as filled by the kernel.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return (v > 0).then_some(v as usize);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Datagrams to several endpoints, written in place into one arena. Consecutive datagrams to
/// the same endpoint with the same size (the last may be shorter) form one UDP GSO send.
pub struct SendBatch {
    arena: Vec<u8>,
    tail: usize,
    groups: Vec<Group>,
    gso: bool,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    control: Vec<[u64; CMSG_ROOM / 8]>,
}

struct Group {
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the group.
    closed: bool,
    addr: SockAddr,
}

// SAFETY: as for RecvBatch, the raw pointers are rebuilt from owned buffers before each call.
unsafe impl Send for SendBatch {}

/// Largest GSO send: the UDP length field's limit, less headroom for headers.
const MAX_GSO_BYTES: usize = 65_000;

impl SendBatch {
    /// An arena of `bytes`, at most `max_groups` sendmmsg entries; `gso` allows UDP GSO.
    pub fn new(bytes: usize, max_groups: usize, gso: bool) -> Self {
        SendBatch {
            arena: vec![0u8; bytes],
            tail: 0,
            groups: Vec::with_capacity(max_groups),
            gso,
            // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
            iovecs: (0..max_groups).map(|_| unsafe { zeroed() }).collect(),
            headers: (0..max_groups).map(|_| unsafe { zeroed() }).collect(),
            control: vec![[0u64; CMSG_ROOM / 8]; max_groups],
        }
    }

    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Room for `bytes` more bytes in up to `groups` more sends?
    pub fn has_room(&self, bytes: usize, groups: usize) -> bool {
        self.tail + bytes <= self.arena.len() && self.groups.len() + groups <= self.headers.len()
    }

    /// The free part of the arena, to write the next datagram into at its start.
    pub fn free_space(&mut self) -> &mut [u8] {
        &mut self.arena[self.tail..]
    }

    /// Appends the `len` bytes written at the start of `free_space()` as one datagram.
    pub fn commit(&mut self, len: usize, addr: SocketAddr, sock: &UdpSocket) {
        let addr = sock.to_sockaddr(addr);
        let start = self.tail;
        self.tail += len;
        if self.gso {
            if let Some(g) = self.groups.last_mut() {
                if same_addr(&g.addr, &addr)
                    && !g.closed
                    && len <= g.segment
                    && g.count < MAX_GSO_SEGMENTS
                    && g.len + len <= MAX_GSO_BYTES
                {
                    g.len += len;
                    g.count += 1;
                    g.closed = len < g.segment;
                    return;
                }
            }
        }
        self.groups.push(Group { start, len, segment: len, count: 1, closed: false, addr });
    }

    /// Sends everything committed. If the kernel refuses GSO (EIO/EINVAL on some devices),
    /// GSO is turned off for this batch's socket and the datagrams go out one by one; the
    /// caller learns it from `gso_enabled()` and logs it once.
    pub fn flush(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.groups.len();
        for i in 0..n {
            let g = &self.groups[i];
            self.iovecs[i] = libc::iovec { iov_base: self.arena[g.start..].as_mut_ptr().cast(), iov_len: g.len };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = g.addr.as_ptr() as *mut libc::c_void;
            h.msg_namelen = g.addr.len();
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            if g.count > 1 {
                let space = // SAFETY: CMSG_SPACE is a pure size computation.
                    unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
                h.msg_control = self.control[i].as_mut_ptr().cast();
                h.msg_controllen = space;
                // SAFETY: msg_control points at CMSG_ROOM aligned bytes, more than `space`.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, g.segment as u16);
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        let mut sent = 0;
        let mut result = Ok(n);
        while sent < n {
            // SAFETY: headers[sent..n] point at live buffers, addresses and control data in self.
            let rc = unsafe { libc::sendmmsg(sock.fd(), self.headers[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if rc >= 0 {
                sent += rc as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EIO) | Some(libc::EINVAL) if self.groups[sent].count > 1 => {
                    self.gso = false;
                    self.send_one_by_one(sent, sock);
                    result = Err(e);
                }
                _ => result = Err(e),
            }
            // Skip the group that failed (unreachable endpoint, ...) and go on.
            sent += 1;
        }
        self.groups.clear();
        self.tail = 0;
        result
    }

    fn send_one_by_one(&self, group: usize, sock: &UdpSocket) {
        let g = &self.groups[group];
        let mut off = g.start;
        let end = g.start + g.len;
        while off < end {
            let len = g.segment.min(end - off);
            let _ = sock.socket.send_to(&self.arena[off..off + len], &g.addr);
            off += len;
        }
    }
}

fn same_addr(a: &SockAddr, b: &SockAddr) -> bool {
    a.as_socket() == b.as_socket()
}
