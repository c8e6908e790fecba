//! Everything that talks to the kernel: TUN, UDP, io_uring, interface ioctls, and an in-memory
//! twin of TUN and UDP for tests. Knows nothing of WireGuard. All of the crate's `unsafe`
//! lives here, each block with its reason.
//!
//! The seam the workers use is [`WorkerIo`]: one TUN queue and one UDP socket, read and written
//! in batches. It is one object per worker rather than a TUN half and a UDP half because the
//! io_uring backend drives both through the worker's single ring. Three backends implement it:
//! [`uring::UringIo`], [`syscalls::SyscallIo`] (poll, read/write, recvmmsg/sendmmsg) and
//! [`twin::TwinIo`]. Offload choices arrive as parameters; nothing here reads the environment.
#![allow(unsafe_code)]

pub mod batch;
mod buf_ring;
pub mod doorbell;
mod mmsg;
mod poll;
mod socket;
pub mod syscalls;
pub mod systemd;
pub mod thin;
pub mod tun;
pub mod twin;
mod twin_io;
pub mod udp;
pub mod unix;
pub mod uring;
mod uring_reads;
mod uring_ring;
pub mod vnet;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use batch::{Buf, SendBatch, TunWriteBatch, MAX_SEGMENTS};
pub use doorbell::Doorbell;
pub use poll::poll_readable;
pub use socket::{Socket, SocketBatcher};
pub use tun::Tun;
use udp::OsSocket;

/// TUN packets a worker reads per round, and UDP receives (each up to 64 KiB with GRO).
pub const TUN_READ_BATCH: usize = 64;
pub const UDP_RECV_BATCH: usize = 64;
/// A TUN read buffer: the virtio_net_hdr and the largest (TSO) packet.
pub const TUN_BUF: usize = vnet::VNET_HDR_LEN + 65_536;
/// A UDP receive buffer: 64 KiB of GRO-coalesced datagrams.
pub const UDP_BUF: usize = 65_536;

/// One worker's I/O: its TUN queue and its UDP socket.
pub trait WorkerIo: Send {
    /// Which backend this is, for the start-up line.
    fn backend(&self) -> Backend;
    /// What of the backend's mechanisms engaged, for the start-up line.
    fn engaged(&self) -> Option<String> {
        None
    }
    /// Waits up to `timeout` until the TUN or the socket has something to read, or the
    /// worker's doorbell rings.
    fn wait(&mut self, timeout: Duration) -> io::Result<()>;
    /// Moves the TUN packets read so far (without blocking, at most a batch) into `out`.
    fn read_tun(&mut self, out: &mut Vec<Buf>) -> io::Result<()>;
    /// Moves the UDP receives done so far (without blocking, at most a batch) into `out`.
    fn recv_udp(&mut self, out: &mut Vec<Buf>) -> io::Result<()>;
    /// The most packets one `read_tun` returns: a read that returned this many may have left
    /// more in the queue.
    fn tun_read_limit(&self) -> usize {
        TUN_READ_BATCH
    }
    /// The most receives one `recv_udp` returns.
    fn udp_recv_limit(&self) -> usize {
        UDP_RECV_BATCH
    }
    /// Gives read buffers back once processed.
    fn recycle_tun(&mut self, bufs: &mut Vec<Buf>);
    fn recycle_udp(&mut self, bufs: &mut Vec<Buf>);
    /// Sends every datagram in `batch` and empties it. When the kernel refuses GSO (EIO or
    /// EINVAL on some devices), the group goes out datagram by datagram and the batch's GSO is
    /// turned off for good (`batch.gso_enabled()` tells the caller, who says so once).
    fn send_udp(&mut self, batch: &mut SendBatch) -> io::Result<()>;
    /// Writes every packet in `batch` to the TUN and empties it; returns the first error.
    fn write_tun(&mut self, batch: &mut TunWriteBatch) -> io::Result<()>;
    /// The device rebound its port: use this socket from now on.
    fn set_socket(&mut self, socket: Arc<Socket>);
    /// Times a read found its buffers all taken and had to wait for them (io_uring's
    /// provided buffer rings running dry, ENOBUFS), TUN and UDP: counts since the start.
    fn reads_ran_dry(&self) -> [u64; 2] {
        [0, 0]
    }
    /// The worker restarted after a panic and dropped the read buffers it held: they will
    /// not come back through `recycle_*`.
    fn worker_restarted(&mut self) {}
    /// Why this backend can no longer be used at all, if so (an io_uring ring whose enters
    /// keep failing with writes in flight): the worker then stops the device.
    fn broken(&self) -> Option<String> {
        None
    }
}

/// Whether a TUN read error means the interface is gone (deleted, also from another
/// namespace it was moved to): the kernel answers EBADFD once the netdev is unregistered.
pub fn tun_is_gone(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBADFD)
}

/// Which I/O backend a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Syscalls,
    Twin,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Uring => "io_uring",
            Backend::Syscalls => "syscalls",
            Backend::Twin => "in-memory twin",
        })
    }
}

/// Where sockets come from: the kernel (with or without UDP GRO), or a twin network.
#[derive(Clone)]
pub enum Network {
    Os { gro: bool },
    Twin(Arc<twin::TwinNet>),
}

impl Network {
    /// `count` sockets on one port (SO_REUSEPORT), one per worker; fewer if the kernel
    /// refuses siblings. Port 0 picks a free one. With `steer = Some(byte)` (kernel sockets
    /// only), one more socket is bound last and the group steered
    /// (`OsSocket::steer_by_first_byte`): datagrams starting with `byte` are spread over the
    /// workers' sockets by the word at bytes 4..8, all others go to the side socket. Where the
    /// kernel refuses, there is no side socket and the kernel's hash spreads everything.
    /// A port some other socket holds is AddrInUse, even one bound with SO_REUSEPORT.
    pub fn bind(&self, port: u16, fwmark: u32, count: usize, steer: Option<u8>) -> io::Result<Bound> {
        match self {
            Network::Os { gro } => {
                if port != 0 {
                    OsSocket::probe_free(port)?;
                }
                let first = OsSocket::bind(port, fwmark, *gro)?;
                let port = first.local_port()?;
                let mut sockets = vec![Arc::new(Socket::Os(first))];
                for _ in 1..count {
                    match OsSocket::bind(port, fwmark, *gro) {
                        Ok(s) => sockets.push(Arc::new(Socket::Os(s))),
                        Err(e) => {
                            tracing::warn!("one UDP socket for all workers: SO_REUSEPORT sibling failed ({e})");
                            break;
                        }
                    }
                }
                let side = steer.and_then(|byte| {
                    let steered = OsSocket::bind(port, fwmark, *gro)
                        .and_then(|side| side.steer_by_first_byte(byte, sockets.len() as u32).map(|()| side));
                    match steered {
                        Ok(side) => Some(Arc::new(Socket::Os(side))),
                        Err(e) => {
                            // Dropping the unsteered extra socket takes it out of the group.
                            tracing::warn!(
                                "no socket of its own for non-bulk datagrams ({e}); the kernel's hash spreads all"
                            );
                            None
                        }
                    }
                });
                Ok(Bound { sockets, side })
            }
            Network::Twin(net) => {
                let (sockets, side) = net.bind_steered(port, count, steer)?;
                let sockets = sockets.into_iter().map(|s| Arc::new(Socket::Twin(s))).collect();
                Ok(Bound { sockets, side: side.map(|s| Arc::new(Socket::Twin(s))) })
            }
        }
    }
}

/// The sockets of one port: one per worker, and (when steered) the side socket.
pub struct Bound {
    pub sockets: Vec<Arc<Socket>>,
    pub side: Option<Arc<Socket>>,
}

/// A TUN queue: the kernel's, or the twin's.
pub enum TunQueue {
    Os(Tun),
    Twin(twin::TwinTun),
}

/// How the io_uring backend reads: multishot (where the kernel has it) or single reads, and
/// how many buffers each of its provided buffer rings holds (a power of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringOptions {
    pub multishot: bool,
    pub buffers: u16,
}

impl Default for UringOptions {
    /// 128 buffers a ring: two rounds' worth of reads (`TUN_READ_BATCH`), so the kernel has
    /// a full batch to fill while the worker holds the last one.
    fn default() -> Self {
        UringOptions { multishot: true, buffers: 128 }
    }
}

/// What a worker's I/O is built with.
pub struct WorkerIoConfig {
    pub backend: Backend,
    pub uring: UringOptions,
    /// Send runs of equal datagrams as one UDP GSO message.
    pub gso: bool,
}

impl TunQueue {
    /// A doorbell the backend for this queue can wait on.
    pub fn doorbell(&self) -> io::Result<Doorbell> {
        match self {
            TunQueue::Os(_) => Doorbell::event(),
            TunQueue::Twin(_) => Ok(Doorbell::twin()),
        }
    }
}

/// Builds a worker's I/O on the backend asked for, waking when `bell` rings. io_uring falls
/// back to syscalls when the kernel refuses it; the reason comes back for the caller to say.
pub fn worker_io(
    tun: TunQueue,
    socket: Arc<Socket>,
    bell: Arc<Doorbell>,
    config: &WorkerIoConfig,
) -> io::Result<(Box<dyn WorkerIo>, Option<String>)> {
    match tun {
        TunQueue::Twin(t) => Ok((Box::new(twin_io::TwinIo::new(t, socket, bell)), None)),
        TunQueue::Os(t) => {
            if config.backend == Backend::Uring {
                return match uring::probe(&config.uring) {
                    Ok(ring) => Ok((Box::new(uring::UringIo::new(ring, t, socket, bell)?), None)),
                    Err(e) => {
                        let reason = format!("io_uring unavailable ({e}); using syscalls");
                        Ok((Box::new(syscalls::SyscallIo::new(t, socket, bell)?), Some(reason)))
                    }
                };
            }
            Ok((Box::new(syscalls::SyscallIo::new(t, socket, bell)?), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};

    /// A port another daemon's SO_REUSEPORT group holds is refused, not joined.
    #[test]
    fn a_port_another_group_holds_is_in_use() {
        let other = Network::Os { gro: false }.bind(0, 0, 2, None).expect("bind a group");
        let port = other.sockets[0].local_port().unwrap();
        let err = Network::Os { gro: false }.bind(port, 0, 2, None).err().expect("the port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let plain = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        let port = plain.local_addr().unwrap().port();
        let err = Network::Os { gro: false }.bind(port, 0, 1, None).err().expect("the port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(other);
        drop(plain);
        assert!(Network::Os { gro: false }.bind(port, 0, 2, None).is_ok(), "free again");
    }

    /// The kernel steers a bound group on loopback: datagrams whose first byte is the bulk
    /// byte go to worker socket (word at 4..8) mod 2, every other to the side socket.
    #[test]
    fn a_steered_group_sends_other_datagrams_to_the_side_socket() {
        let bound = Network::Os { gro: false }.bind(0, 0, 2, Some(4)).expect("bind a group");
        let Some(side) = bound.side.clone() else {
            // A kernel without SO_ATTACH_REUSEPORT_CBPF (before 4.5): nothing to check.
            eprintln!("steering refused by this kernel; skipped");
            return;
        };
        assert_eq!(bound.sockets.len(), 2);
        let port = side.local_port().unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut handshake = [0u8; 148];
        handshake[0] = 1;
        sender.send_to(&handshake, to).unwrap();
        sender.send_to(&[9, 0, 0, 0, 1, 2, 3], to).unwrap();
        for word in 0u32..6 {
            let mut transport = [0u8; 32];
            transport[0] = 4;
            transport[4..8].copy_from_slice(&word.to_be_bytes());
            sender.send_to(&transport, to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut receiver = mmsg::BatchReceiver::default();
        let mut received = |socket: &Socket| -> Vec<Vec<u8>> {
            let Socket::Os(os) = socket else { unreachable!() };
            let mut bufs = Vec::new();
            receiver.recv(os, &mut bufs, false).unwrap();
            let got = bufs.iter_mut().map(|b| b.filled_mut().to_vec()).collect();
            receiver.recycle(&mut bufs);
            got
        };
        let side_got = received(&side);
        assert_eq!(side_got.len(), 2, "the handshake and the unknown type");
        assert_eq!(side_got[0][0], 1);
        assert_eq!(side_got[1][0], 9);
        for (i, socket) in bound.sockets.iter().enumerate() {
            let got = received(socket);
            assert_eq!(got.len(), 3, "worker socket {i}");
            for d in got {
                assert_eq!(d[0], 4);
                assert_eq!(u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize % 2, i);
            }
        }
    }

    /// A skimming receive copies the first datagram of a GRO train and reports the rest as
    /// cut; a plain receive after it gets the next train whole.
    #[test]
    fn a_skimmed_gro_train_keeps_its_first_datagram() {
        let receiver_socket = udp::OsSocket::bind(0, 0, true).expect("bind with GRO");
        let to = SocketAddr::from(([127, 0, 0, 1], receiver_socket.local_port().unwrap()));
        let sender_socket = udp::OsSocket::bind(0, 0, false).expect("bind");
        if !sender_socket.supports_gso() {
            eprintln!("no UDP GSO on this kernel; skipped");
            return;
        }
        let mut batch = SendBatch::new(1, 64, true);
        let mut sender = mmsg::BatchSender::default();
        for round in 0..2u8 {
            for i in 0..10u8 {
                let (_, space) = batch.reserve(148);
                space[..148].fill(round * 16 + i);
                batch.commit(148, to);
            }
            sender.send(&sender_socket, &mut batch).expect("send a GSO train");
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut receiver = mmsg::BatchReceiver::default();
        let mut bufs = Vec::new();
        receiver.skim(&receiver_socket, &mut bufs, false, 148).unwrap();
        let first = &mut bufs[0];
        if first.stride != 148 {
            eprintln!("the kernel did not coalesce the train (stride {}); skipped", first.stride);
            return;
        }
        assert_eq!((first.len, first.cut), (148, 9 * 148));
        assert!(first.filled_mut().iter().all(|&b| b == 0));
        // The skim took one train per buffer: the second is its own receive, skimmed too.
        assert_eq!(bufs.len(), 2);
        assert_eq!((bufs[1].len, bufs[1].cut), (148, 9 * 148));
        assert!(bufs[1].filled_mut().iter().all(|&b| b == 16));
        receiver.recycle(&mut bufs);
        // Recycled buffers read whole again.
        for i in 0..3u8 {
            let (_, space) = batch.reserve(148);
            space[..148].fill(40 + i);
            batch.commit(148, to);
        }
        sender.send(&sender_socket, &mut batch).expect("send a GSO train");
        std::thread::sleep(Duration::from_millis(50));
        receiver.recv(&receiver_socket, &mut bufs, false).unwrap();
        assert_eq!((bufs[0].len, bufs[0].cut, bufs[0].stride), (3 * 148, 0, 148));
        assert_eq!(bufs[0].filled_mut()[2 * 148], 42);
    }

    /// The kernel runs the thinning filter on loopback: a listed endpoint's datagrams are
    /// dropped (keep none) unless they carry a nonzero word where the spare says, other
    /// endpoints (v4, v6, the same address on another port) pass, and an empty list lifts it.
    #[test]
    fn a_thinned_endpoint_is_dropped_in_the_kernel_but_its_proofs_pass() {
        use std::net::UdpSocket;
        let receiver_socket = udp::OsSocket::bind(0, 0, false).expect("bind");
        let port = receiver_socket.local_port().unwrap();
        let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
        let neighbour = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = UdpSocket::bind("[::1]:0").ok();
        let spares = [thin::Spare { first_byte: 1, words: (132, 148) }];
        let plain = {
            let mut m = [0u8; 148];
            m[0] = 1;
            m
        };
        let proven = {
            let mut m = plain;
            m[147] = 9;
            m
        };
        let mut receiver = mmsg::BatchReceiver::default();
        let mut drain = |expect: &str| -> Vec<(SocketAddr, u8)> {
            std::thread::sleep(Duration::from_millis(30));
            let mut bufs = Vec::new();
            receiver.recv(&receiver_socket, &mut bufs, false).unwrap();
            let got = bufs.iter_mut().map(|b| (b.src.unwrap(), b.filled_mut()[147])).collect();
            receiver.recycle(&mut bufs);
            eprintln!("{expect}: {got:?}");
            got
        };
        let to4 = SocketAddr::from(([127, 0, 0, 1], port));
        let flooder_at = flooder.local_addr().unwrap();
        // Listed both as itself and v4-mapped (the form a dual-stack socket reports).
        let mapped =
            SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped()), flooder_at.port());
        let mut listed = vec![thin::Source::endpoint(mapped)];
        if let Some(v6) = &v6 {
            listed.push(thin::Source::endpoint(v6.local_addr().unwrap()));
        }
        let drops_before = receiver_socket.kernel_drops().expect("SO_MEMINFO");
        receiver_socket.thin_sources(&listed, 0, &spares).expect("attach the filter");
        for _ in 0..5 {
            flooder.send_to(&plain, to4).unwrap();
        }
        flooder.send_to(&proven, to4).unwrap();
        neighbour.send_to(&plain, to4).unwrap();
        let got = drain("filtered");
        assert_eq!(got.len(), 2, "the flooder's proof and the neighbour: {got:?}");
        assert!(got.contains(&(flooder_at, 9)));
        assert!(got.contains(&(neighbour.local_addr().unwrap(), 0)));
        assert_eq!(receiver_socket.kernel_drops().unwrap().wrapping_sub(drops_before), 5, "the kernel counts them");
        if let Some(v6) = &v6 {
            let to6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            v6.send_to(&plain, to6).unwrap();
            v6.send_to(&proven, to6).unwrap();
            let other6 = UdpSocket::bind("[::1]:0").unwrap();
            other6.send_to(&plain, to6).unwrap();
            let got = drain("v6");
            assert_eq!(got.len(), 2, "{got:?}");
            assert!(got.contains(&(v6.local_addr().unwrap(), 9)));
        }
        // A whole address, any port: the neighbour on 127.0.0.1 is thinned too, ::1 is not.
        let everyone = [thin::Source::address(std::net::Ipv4Addr::LOCALHOST.into())];
        receiver_socket.thin_sources(&everyone, 0, &spares).expect("attach the filter");
        flooder.send_to(&plain, to4).unwrap();
        neighbour.send_to(&plain, to4).unwrap();
        neighbour.send_to(&proven, to4).unwrap();
        if let Some(v6) = &v6 {
            v6.send_to(&plain, SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).unwrap();
        }
        let got = drain("address");
        assert_eq!(got.len(), 1 + usize::from(v6.is_some()), "the neighbour's proof (and ::1): {got:?}");
        assert!(got.contains(&(neighbour.local_addr().unwrap(), 9)));
        receiver_socket.thin_sources(&[], 0, &spares).expect("detach");
        flooder.send_to(&plain, to4).unwrap();
        assert_eq!(drain("lifted").len(), 1);
        // Keep one in two: over 400 datagrams, about half pass.
        receiver_socket.thin_sources(&listed, 2, &spares).expect("attach the filter");
        let mut passed = 0;
        for _ in 0..8 {
            for _ in 0..50 {
                flooder.send_to(&plain, to4).unwrap();
            }
            passed += drain("sampled").len();
        }
        assert!((120..=280).contains(&passed), "{passed} of 400");
    }
}
