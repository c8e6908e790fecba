//! Linux TUN devices (/dev/net/tun) and the interface ioctls the daemon needs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::vnet::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};

const IFNAMSIZ: usize = 16;

/// struct ifreq with the union as flags or an int (MTU); 40 bytes as in <linux/if.h>.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) || bytes.contains(&b'/') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid interface name '{name}'")));
        }
        let mut r = IfReq { name: [0; IFNAMSIZ], data: [0; 24] };
        r.name[..bytes.len()].copy_from_slice(bytes);
        Ok(r)
    }
}

pub struct Tun {
    file: File,
    name: String,
    vnet_hdr: bool,
}

/// TUNSETOFFLOAD: _IOW('T', 208, unsigned int).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

impl Tun {
    /// Creates (or attaches a queue to) the TUN interface `name`. `multi_queue` lets several
    /// workers each own a queue; `vnet_hdr` prefixes every packet with a virtio_net_hdr so
    /// the kernel can hand us TSO super-packets and take GRO ones.
    pub fn open(name: &str, multi_queue: bool, vnet_hdr: bool) -> io::Result<Tun> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
        let mut req = IfReq::new(name)?;
        let mut flags = (libc::IFF_TUN | libc::IFF_NO_PI) as u16;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE as u16;
        }
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR as u16;
        }
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; `req` is one, laid out as the kernel's.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("cannot create TUN interface '{name}': {e}")));
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Tun { file, name, vnet_hdr })
    }

    /// Whether packets on this queue carry a virtio_net_hdr.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Asks for checksum and segmentation offloads (TUN_F_* flags); the kernel refuses
    /// flags it does not know with EINVAL.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let rc = unsafe { libc::ioctl(self.fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Another queue of the same multi-queue interface.
    pub fn open_queue(&self) -> io::Result<Tun> {
        Tun::open(&self.name, true, self.vnet_hdr)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Non-blocking for the syscall backend; blocking for io_uring, which then arms a poll
    /// instead of handing the read to a worker thread.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL on an fd we own; no memory is passed.
        let flags = unsafe { libc::fcntl(self.fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        // SAFETY: as above.
        if unsafe { libc::fcntl(self.fd(), libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one packet.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of buf.len() bytes for the duration of the call.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one packet.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: `packet` is valid for reads of packet.len() bytes for the duration of the call.
        let n = unsafe { libc::write(self.fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn control_socket() -> io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))
}

/// The interface's MTU.
/// Whether an interface of that name exists in this network namespace.
pub fn exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: if_nametoindex reads the NUL-terminated name and nothing else.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

pub fn get_mtu(name: &str) -> io::Result<u32> {
    let sock = control_socket()?;
    let mut req = IfReq::new(name)?;
    // SAFETY: SIOCGIFMTU fills the int at the start of the ifreq union; `req` is a full ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]) as u32)
}

pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = IfReq::new(name)?;
    req.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
    // SAFETY: SIOCSIFMTU reads the int at the start of the ifreq union; `req` is a full ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The TUN as opened: its queues, whether they carry a virtio_net_hdr, whether USO engaged,
/// and what to say about it.
pub struct OpenedTun {
    pub queues: Vec<Tun>,
    pub vnet: bool,
    pub uso: bool,
    pub engaged: &'static str,
}

/// Opens the TUN `iface`: `queues` queues with vnet_hdr offloads where the kernel allows,
/// falling back step by step (no USO, then no TSO, then no vnet_hdr and one queue), each step
/// logged once.
pub fn open_queues(iface: &str, queues: usize, offloads: bool) -> io::Result<OpenedTun> {
    let first = match Tun::open(iface, queues > 1, offloads) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!("multi-queue/vnet_hdr TUN refused ({e}); falling back to one plain queue and one worker");
            Tun::open(iface, false, false)?
        }
        Err(e) => return Err(e),
    };
    let mut vnet = first.has_vnet_hdr();
    let mut uso = false;
    let mut engaged = "TUN offloads off";
    if vnet {
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        match first.set_offload(tso | TUN_F_USO4 | TUN_F_USO6) {
            Ok(()) => {
                uso = true;
                engaged = "TUN checksum+TSO4+TSO6+USO4+USO6, TCP and UDP GRO";
            }
            Err(e) => {
                tracing::warn!("TUN USO refused ({e}); inner UDP goes packet by packet");
                match first.set_offload(tso) {
                    Ok(()) => engaged = "TUN checksum+TSO4+TSO6, TCP GRO (no USO)",
                    Err(e) => {
                        tracing::warn!("TUN offloads refused ({e}); packets come one by one");
                        engaged = "TUN vnet_hdr without TSO";
                    }
                }
            }
        }
    }
    let wanted = queues;
    let mut queues = vec![first];
    for _ in 1..wanted {
        match queues[0].open_queue() {
            Ok(q) => queues.push(q),
            Err(e) => {
                tracing::warn!("cannot open another TUN queue ({e}); running {} worker(s)", queues.len());
                break;
            }
        }
    }
    vnet &= queues.iter().all(|q| q.has_vnet_hdr());
    Ok(OpenedTun { queues, vnet, uso, engaged })
}
