//! In-memory twins of the TUN and of UDP (wireguard-go's tuntest and bindtest), so whole
//! devices run in one process without root, and faults a real kernel will not produce on
//! demand (GSO refused, a full receive queue) can be injected.
//!
//! Every twin socket has the address 127.0.0.1:port on one [`TwinNet`]. A GSO send is cut into
//! its datagrams on delivery, as the kernel would; receives carry one datagram each.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Select, Sender, TrySendError};

use super::batch::{Buf, SendBatch, TunWriteBatch};
use super::doorbell::Doorbell;
use super::syscalls::tun_frame;
use super::{Backend, Socket, WorkerIo, TUN_BUF, TUN_READ_BATCH, UDP_BUF, UDP_RECV_BATCH};

/// Datagrams a twin socket holds before it drops, like a full socket buffer.
pub const TWIN_SOCKET_QUEUE: usize = 8192;
/// Packets the twin TUN holds each way.
pub const TWIN_TUN_QUEUE: usize = 8192;

type Datagram = (Vec<u8>, SocketAddr);

/// A network of twin sockets.
#[derive(Default)]
pub struct TwinNet {
    /// The sockets on each port: several share one with SO_REUSEPORT semantics (a source
    /// always lands on the same one).
    ports: Mutex<HashMap<u16, Vec<Sender<Datagram>>>>,
    /// Fault injection: every GSO send fails with EIO, as on some NICs.
    pub refuse_gso: AtomicBool,
    /// Datagrams dropped because the receiver's queue was full or nobody listened.
    pub dropped: AtomicU64,
    /// GSO sends (several datagrams in one message) seen, to tell that GSO was used.
    pub gso_sends: AtomicU64,
    /// While on, every datagram delivered is also kept here (from, to, bytes), up to a bound.
    pub recording: AtomicBool,
    /// UDP GRO on the receiving side: consecutive datagrams of one source and size (the last
    /// may be shorter) come up as one receive, as the kernel coalesces them.
    pub gro: AtomicBool,
    recorded: Mutex<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
}

/// Datagrams one GRO receive coalesces, at most (the kernel's UDP_GRO_CNT_MAX is 64).
const MAX_GRO_SEGMENTS: usize = 64;
/// Datagrams kept while recording, at most.
const RECORD_MAX: usize = 100_000;

impl TwinNet {
    pub fn new() -> Arc<TwinNet> {
        Arc::new(TwinNet::default())
    }

    pub fn address(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Vec<Sender<Datagram>>>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket on `port` (0: a free one). A port in use gives AddrInUse, as bind(2) does.
    pub fn bind(self: &Arc<Self>, port: u16) -> io::Result<TwinSocket> {
        self.bind_group(port, 1)?.pop().ok_or_else(|| io::ErrorKind::AddrInUse.into())
    }

    /// `count` sockets sharing `port`, as SO_REUSEPORT siblings: datagrams from one source
    /// always go to the same one.
    pub fn bind_group(self: &Arc<Self>, port: u16, count: usize) -> io::Result<Vec<TwinSocket>> {
        let mut ports = self.ports();
        let port = if port == 0 {
            (40_000..=u16::MAX).find(|p| !ports.contains_key(p)).ok_or(io::ErrorKind::AddrInUse)?
        } else if ports.contains_key(&port) {
            return Err(io::ErrorKind::AddrInUse.into());
        } else {
            port
        };
        let sockets: Vec<TwinSocket> = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = bounded(TWIN_SOCKET_QUEUE);
                TwinSocket { net: self.clone(), port, tx, rx }
            })
            .collect();
        ports.insert(port, sockets.iter().map(|s| s.tx.clone()).collect());
        Ok(sockets)
    }

    /// The datagrams recorded so far (see `recording`).
    pub fn take_recorded(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        std::mem::take(&mut *self.recorded.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Delivers one datagram from `from` to `to`, as an attacker or a test would send it.
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if self.recording.load(Ordering::Relaxed) {
            let mut r = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            if r.len() < RECORD_MAX {
                r.push((from, to, bytes.to_vec()));
            }
        }
        let target = self.ports().get(&to.port()).and_then(|group| {
            let ip = match from.ip() {
                IpAddr::V4(v4) => u32::from(v4),
                IpAddr::V6(v6) => v6.octets().iter().fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(*b)),
            };
            let hash = (ip ^ u32::from(from.port())) as usize;
            group.get(hash % group.len().max(1)).cloned()
        });
        let delivered = match target {
            Some(tx) if to.ip() == Ipv4Addr::LOCALHOST => match tx.try_send((bytes.to_vec(), from)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            _ => false,
        };
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub struct TwinSocket {
    net: Arc<TwinNet>,
    port: u16,
    tx: Sender<Datagram>,
    rx: Receiver<Datagram>,
}

impl TwinSocket {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.net.inject(TwinNet::address(self.port), to, buf);
        Ok(buf.len())
    }

    /// Moves up to `max` datagrams waiting on this socket into `out`, one buffer each; with
    /// `wait`, first waits up to `timeout` for one to arrive.
    pub fn recv_into(&self, out: &mut Vec<Buf>, max: usize, wait: Option<Duration>) {
        if let Some(timeout) = wait {
            match self.rx.recv_timeout(timeout) {
                Ok(d) => out.push(datagram_buf(d)),
                Err(_) => return,
            }
        }
        while out.len() < max {
            let Ok(d) = self.rx.try_recv() else { break };
            out.push(datagram_buf(d));
        }
    }

    /// Closes the port (a socket rebound on it since keeps it).
    pub fn shutdown(&self) {
        let mut ports = self.net.ports();
        if let Some(group) = ports.get_mut(&self.port) {
            group.retain(|tx| !tx.same_channel(&self.tx));
            if group.is_empty() {
                ports.remove(&self.port);
            }
        }
    }
}

impl Drop for TwinSocket {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn datagram_buf((bytes, src): Datagram) -> Buf {
    let len = bytes.len();
    Buf { data: bytes.into_boxed_slice(), len, src: Some(src), stride: len, cut: 0 }
}

/// The device's side of a twin TUN queue.
pub struct TwinTun {
    vnet: bool,
    from_host: Receiver<Vec<u8>>,
    to_host: Sender<Vec<u8>>,
}

/// The host's side: what the kernel's network stack would send into and read from the TUN.
/// With `vnet`, each packet starts with its virtio_net_hdr both ways.
pub struct TwinHost {
    pub send: Sender<Vec<u8>>,
    pub recv: Receiver<Vec<u8>>,
}

/// A twin TUN queue and its host side.
pub fn twin_tun(vnet: bool) -> (TwinTun, TwinHost) {
    let (host_tx, dev_rx) = bounded(TWIN_TUN_QUEUE);
    let (dev_tx, host_rx) = bounded(TWIN_TUN_QUEUE);
    (TwinTun { vnet, from_host: dev_rx, to_host: dev_tx }, TwinHost { send: host_tx, recv: host_rx })
}

impl TwinTun {
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet
    }
}

pub struct TwinIo {
    tun: TwinTun,
    socket: Arc<Socket>,
    bell: Arc<Doorbell>,
    /// A datagram taken from the socket that did not fit the last GRO train.
    pending: Option<Datagram>,
    free_tun: Vec<Buf>,
    free_udp: Vec<Buf>,
}

fn recycle(free: &mut Vec<Buf>, bufs: &mut Vec<Buf>) {
    for b in bufs.drain(..) {
        if free.len() < FREE_BUFS && !b.data.is_empty() {
            free.push(b);
        }
    }
}

impl TwinIo {
    pub fn new(tun: TwinTun, socket: Arc<Socket>, bell: Arc<Doorbell>) -> TwinIo {
        TwinIo { tun, socket, bell, pending: None, free_tun: Vec::new(), free_udp: Vec::new() }
    }

    fn socket(&self) -> io::Result<&TwinSocket> {
        match &*self.socket {
            Socket::Twin(s) => Ok(s),
            Socket::Os(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "a kernel socket on the twin backend")),
        }
    }
}

/// Buffers a twin keeps for reuse, as the kernel backends do (at most).
const FREE_BUFS: usize = 256;

/// A buffer holding `data`: a recycled one when it is large enough, else a new one.
fn fill(free: &mut Vec<Buf>, data: &[u8], size: usize) -> Buf {
    let mut b = match free.pop() {
        Some(b) if b.data.len() >= data.len() => b,
        _ => Buf::new(size.max(data.len())),
    };
    b.data[..data.len()].copy_from_slice(data);
    b.len = data.len();
    b.stride = data.len();
    b.cut = 0;
    b.src = None;
    b
}

impl WorkerIo for TwinIo {
    fn backend(&self) -> Backend {
        Backend::Twin
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let sock = self.socket()?;
        if !self.tun.from_host.is_empty() || !sock.rx.is_empty() {
            return Ok(());
        }
        let mut sel = Select::new();
        sel.recv(&self.tun.from_host);
        sel.recv(&sock.rx);
        if let Some(bell) = self.bell.receiver() {
            if !bell.is_empty() {
                self.bell.clear();
                return Ok(());
            }
            sel.recv(bell);
        }
        if sel.ready_timeout(timeout) == Ok(2) {
            self.bell.clear();
        }
        Ok(())
    }

    fn read_tun(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        for _ in 0..TUN_READ_BATCH {
            let Ok(p) = self.tun.from_host.try_recv() else { break };
            out.push(fill(&mut self.free_tun, &p, TUN_BUF));
        }
        Ok(())
    }

    fn recv_udp(&mut self, out: &mut Vec<Buf>) -> io::Result<()> {
        let socket = self.socket.clone();
        let Socket::Twin(sock) = &*socket else { return Err(io::ErrorKind::InvalidInput.into()) };
        let gro = sock.net.gro.load(Ordering::Relaxed);
        for _ in 0..UDP_RECV_BATCH {
            let Some((first, src)) = self.pending.take().or_else(|| sock.rx.try_recv().ok()) else { break };
            let mut b = fill(&mut self.free_udp, &first, UDP_BUF);
            b.src = Some(src);
            let stride = first.len();
            let mut count = 1;
            while gro && count < MAX_GRO_SEGMENTS {
                let Ok((next, from)) = sock.rx.try_recv() else { break };
                if from != src || next.len() > stride || next.is_empty() || b.len + next.len() > b.data.len() {
                    self.pending = Some((next, from));
                    break;
                }
                b.data[b.len..b.len + next.len()].copy_from_slice(&next);
                b.len += next.len();
                count += 1;
                if next.len() < stride {
                    break; // a shorter datagram ends the train
                }
            }
            out.push(b);
        }
        Ok(())
    }

    fn recycle_tun(&mut self, bufs: &mut Vec<Buf>) {
        recycle(&mut self.free_tun, bufs);
    }

    fn recycle_udp(&mut self, bufs: &mut Vec<Buf>) {
        recycle(&mut self.free_udp, bufs);
    }

    fn send_udp(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        let socket = self.socket.clone();
        let Socket::Twin(sock) = &*socket else { return Err(io::ErrorKind::InvalidInput.into()) };
        let net = &sock.net;
        let mut result = Ok(());
        for g in batch.groups().to_vec() {
            if g.count > 1 {
                if net.refuse_gso.load(Ordering::Relaxed) {
                    batch.disable_gso();
                    result = Err(io::Error::from_raw_os_error(libc::EIO));
                } else {
                    net.gso_sends.fetch_add(1, Ordering::Relaxed);
                }
            }
            for d in batch.datagrams(&g) {
                sock.send_to(d, g.addr)?;
            }
        }
        batch.clear();
        result
    }

    fn write_tun(&mut self, batch: &mut TunWriteBatch) -> io::Result<()> {
        let mut result = Ok(());
        for p in batch.packets() {
            if self.tun.to_host.try_send(tun_frame(p, self.tun.vnet).to_vec()).is_err() && result.is_ok() {
                result = Err(io::Error::from_raw_os_error(libc::ENOBUFS));
            }
        }
        batch.clear();
        result
    }

    fn set_socket(&mut self, socket: Arc<Socket>) {
        self.socket = socket;
    }
}
