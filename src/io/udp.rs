//! The kernel's UDP sockets for the tunnel's outer packets, and their cmsg details (UDP GSO's
//! segment size on send, UDP GRO's stride on receive). The batch calls that use them live in
//! `syscalls.rs` and `uring.rs`.

use std::io;
use std::mem::{size_of, size_of_val};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::batch::Group;
use super::thin::{thin_program, Source, Spare};

/// Socket buffers sized for multi-gigabit bursts (the default 208 KiB drops under load).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// SOL_UDP options (<linux/udp.h>).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room for one cmsg carrying an int, with alignment.
pub const CMSG_ROOM: usize = 64;

pub struct OsSocket {
    socket: Socket,
    dual_stack: bool,
}

impl OsSocket {
    /// Binds `[::]:port` (dual stack) with SO_REUSEPORT so every worker can own a socket on
    /// the same port; falls back to IPv4 only where IPv6 is off. `gro` asks for UDP GRO.
    pub fn bind(port: u16, fwmark: u32, gro: bool) -> io::Result<OsSocket> {
        let (socket, dual_stack) = match Self::make(Domain::IPV6, port, gro) {
            Ok(s) => (s, true),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(_) => (Self::make(Domain::IPV4, port, gro)?, false),
        };
        let sock = OsSocket { socket, dual_stack };
        if fwmark != 0 {
            sock.set_fwmark(fwmark)?;
        }
        Ok(sock)
    }

    /// Whether `port` is free for us: a bind without SO_REUSEPORT (dual stack, or IPv4 where
    /// IPv6 is off) fails with AddrInUse when any socket holds it, another daemon's
    /// SO_REUSEPORT group included, which a bind with SO_REUSEPORT would silently join (and its
    /// steering program would then take both daemons' traffic). wireguard-go answers
    /// EADDRINUSE there too.
    pub fn probe_free(port: u16) -> io::Result<()> {
        let probe = |domain: Domain| -> io::Result<()> {
            let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
            let addr: SocketAddr = if domain == Domain::IPV6 {
                s.set_only_v6(false)?;
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))
            } else {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            };
            s.bind(&addr.into())
        };
        match probe(Domain::IPV6) {
            Err(e) if e.kind() != io::ErrorKind::AddrInUse => probe(Domain::IPV4),
            other => other,
        }
    }

    fn make(domain: Domain, port: u16, gro: bool) -> io::Result<Socket> {
        let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        if domain == Domain::IPV6 {
            s.set_only_v6(false)?;
        }
        // Root may exceed net.core.rmem_max; others get what the sysctl allows.
        if set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER_BYTES as i32).is_err() {
            let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        }
        if set_int_opt(&s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER_BYTES as i32).is_err() {
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
        if gro {
            // Best effort: without UDP_GRO each datagram simply arrives on its own.
            let _ = set_int_opt(&s, libc::SOL_UDP, UDP_GRO, 1);
        }
        Ok(s)
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
    pub fn to_sockaddr(&self, addr: SocketAddr) -> SockAddr {
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

    /// Whether the kernel knows UDP_SEGMENT (sending may still fail later with EIO/EINVAL,
    /// which the backends handle by turning GSO off).
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

impl OsSocket {
    /// Steers the SO_REUSEPORT group this socket is in by a datagram's first byte: one whose
    /// first byte is `bulk` goes to socket (word at bytes 4..8, big-endian) mod `spread`, the
    /// first `spread` sockets bound; every other to socket `spread`, meant to be this one,
    /// bound last. A classic BPF program the kernel runs on the UDP payload before it picks a
    /// socket (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5); a datagram too short for the word goes to
    /// socket 0. The caller keeps the group's binding order (indices are binding order).
    pub fn steer_by_first_byte(&self, bulk: u8, spread: u32) -> io::Result<()> {
        if spread == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no sockets to spread over"));
        }
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
        let program = [
            op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 3, u32::from(bulk)),
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 4),
            op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, 0, spread),
            op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, spread),
        ];
        attach_cbpf(&self.socket, libc::SO_ATTACH_REUSEPORT_CBPF, &program)
    }
}

impl OsSocket {
    /// Receives the kernel dropped on this socket so far (its buffer full, or its filter):
    /// SO_MEMINFO's drop count, which wraps at 2^32.
    pub fn kernel_drops(&self) -> io::Result<u32> {
        // SK_MEMINFO_VARS: 9 on Linux 6.x (the kernel copies at most what it has, and says how much).
        let mut info = [0u32; 16];
        let mut len = size_of_val(&info) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a live local array of that size.
        let rc = unsafe {
            libc::getsockopt(self.fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let drops = libc::SK_MEMINFO_DROPS as usize;
        if (len as usize) < (drops + 1) * size_of::<u32>() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "SO_MEMINFO without a drop count"));
        }
        Ok(info[drops])
    }

    /// Keeps one receive in `keep_one_in` from each of `sources` and drops the rest in the
    /// kernel (`thin::thin_program`); an empty list removes the filter. Replaces the previous
    /// filter atomically.
    pub fn thin_sources(&self, sources: &[Source], keep_one_in: u32, spares: &[Spare]) -> io::Result<()> {
        if sources.is_empty() {
            // The kernel ignores the value but wants an int's length. ENOENT: there was none.
            return match set_int_opt(&self.socket, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
                _ => Ok(()),
            };
        }
        attach_cbpf(&self.socket, libc::SO_ATTACH_FILTER, &thin_program(sources, keep_one_in, spares)?)
    }
}

/// Attaches a classic BPF program as socket option `option` (a socket filter, or a reuseport
/// group's steering program).
fn attach_cbpf(s: &Socket, option: libc::c_int, program: &[libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?;
    let fprog = libc::sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: setsockopt reads a sock_fprog whose filter points at `program`, which lives
    // until the call returns (the kernel copies the program).
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_int_opt(s: &Socket, level: libc::c_int, name: libc::c_int, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads size_of::<i32>() bytes from a live i32.
    let rc = unsafe {
        libc::setsockopt(s.as_raw_fd(), level, name, (&value as *const i32).cast(), size_of::<i32>() as libc::socklen_t)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The peer address in a sockaddr_storage the kernel filled; v4-mapped addresses as IPv4.
pub fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is large and aligned enough for any socket address, and
    // SockAddr::new takes its length from the family (checked by as_socket below).
    let addr = unsafe { SockAddr::new(*storage, size_of::<libc::sockaddr_storage>() as libc::socklen_t) };
    addr.as_socket().map(crate::addr::canonical)
}

/// The UDP_GRO segment size in a received message's control data, if any.
pub fn gro_segment_size(msg: &libc::msghdr) -> Option<usize> {
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

/// Points `msg` at one send group of a batch: its bytes (through `iov`), its destination and,
/// when it carries more than one datagram, a UDP_SEGMENT cmsg in `control`. Every UDP sender
/// of both kernel backends fills its headers here. Everything pointed at must outlive the send.
pub fn fill_send_msghdr(
    msg: &mut libc::msghdr,
    iov: &mut libc::iovec,
    addr: &SockAddr,
    bytes: &[u8],
    control: &mut [u64; CMSG_ROOM / 8],
    group: &Group,
) {
    *iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_flags = 0;
    set_segment_cmsg(msg, control, group.segment, group.count);
}

/// Fills `msg`'s control data with a UDP_SEGMENT cmsg of `segment` bytes when `count > 1`,
/// or clears it. `room` must be CMSG_ROOM bytes, 8-byte aligned, and outlive the send.
pub fn set_segment_cmsg(msg: &mut libc::msghdr, room: &mut [u64; CMSG_ROOM / 8], segment: usize, count: usize) {
    if count <= 1 {
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
        return;
    }
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    msg.msg_control = room.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at CMSG_ROOM aligned bytes, more than `space`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, segment as u16);
    }
}
