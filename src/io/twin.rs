//! In-memory twins of the TUN and of UDP (wireguard-go's tuntest and bindtest; the worker
//! backend over them is `twin_io`), so whole
//! devices run in one process without root, and faults a real kernel will not produce on
//! demand (GSO refused, a full receive queue) can be injected.
//!
//! Every twin socket has the address 127.0.0.1:port on one [`TwinNet`]. A GSO send is cut into
//! its datagrams on delivery, as the kernel would; receives carry one datagram each.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use super::batch::Buf;
use super::thin::{Source, Spare};

/// Datagrams a twin socket holds before it drops, like a full socket buffer.
pub const TWIN_SOCKET_QUEUE: usize = 8192;
/// Packets the twin TUN holds each way.
pub const TWIN_TUN_QUEUE: usize = 8192;

pub(super) type Datagram = (Vec<u8>, SocketAddr);

/// The sockets bound to one port.
#[derive(Default)]
struct Group {
    members: Vec<Member>,
    /// With steering (`bind_steered`): where datagrams that do not start with `bulk` go, and
    /// the byte; datagrams that do are spread by the word at bytes 4..8, as the kernel's
    /// reuseport program spreads them.
    side: Option<Member>,
    bulk: u8,
}

#[derive(Clone)]
struct Member {
    tx: Sender<Datagram>,
    state: Arc<SocketState>,
}

/// What a socket's receive path knows besides its queue: its filter and its drop count.
#[derive(Default)]
struct SocketState {
    filter: Mutex<Option<Thinner>>,
    drops: AtomicU32,
}

/// The twin of `thin::thin_program`: keep one datagram in `keep_one_in` from each listed
/// source (a counter where the kernel draws a random number), and every spare.
struct Thinner {
    sources: Vec<Source>,
    keep_one_in: u32,
    spares: Vec<Spare>,
    seen: u32,
}

impl Thinner {
    fn keeps(&mut self, bytes: &[u8], from: SocketAddr) -> bool {
        let word = |at: u32| bytes.get(at as usize..at as usize + 4).is_some_and(|w| w != [0; 4]);
        if self.spares.iter().any(|s| bytes.first() == Some(&s.first_byte) && (word(s.words.0) || word(s.words.1))) {
            return true;
        }
        let from = crate::addr::canonical(from);
        let listed = self.sources.iter().any(|s| {
            let (a, b) = (s.ip.to_canonical(), from.ip());
            let prefix_matches = match (a, b) {
                (IpAddr::V4(a), IpAddr::V4(b)) => a == b,
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    let n = usize::from(s.words) * 4;
                    a.octets()[..n] == b.octets()[..n]
                }
                _ => false,
            };
            prefix_matches && s.port.is_none_or(|p| p == from.port())
        });
        if !listed {
            return true;
        }
        self.seen = self.seen.wrapping_add(1);
        self.keep_one_in != 0 && self.seen.is_multiple_of(self.keep_one_in)
    }
}

/// A network of twin sockets.
#[derive(Default)]
pub struct TwinNet {
    /// The sockets on each port: several share one with SO_REUSEPORT semantics (a source
    /// always lands on the same one).
    ports: Mutex<HashMap<u16, Group>>,
    /// Fault injection: every GSO send fails with EIO, as on some NICs.
    pub refuse_gso: AtomicBool,
    /// Datagrams dropped because the receiver's queue was full or nobody listened.
    pub dropped: AtomicU64,
    /// GSO sends (several datagrams in one message) seen, to tell that GSO was used.
    pub gso_sends: AtomicU64,
    /// While on, every datagram delivered is also kept here (from, to, bytes), up to a bound.
    pub recording: AtomicBool,
    /// Steering as the kernel's reuseport program does it (`bind_steered`): off by default,
    /// because each twin TUN queue has a host side of its own, and tests that read one queue
    /// rely on a source always reaching the same worker.
    pub steering: AtomicBool,
    /// UDP GRO on the receiving side: consecutive datagrams of one source and size (the last
    /// may be shorter) come up as one receive, as the kernel coalesces them.
    pub gro: AtomicBool,
    recorded: Mutex<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
}

/// Datagrams kept while recording, at most.
const RECORD_MAX: usize = 100_000;

impl TwinNet {
    pub fn new() -> Arc<TwinNet> {
        Arc::new(TwinNet::default())
    }

    pub fn address(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Group>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket on `port` (0: a free one). A port in use gives AddrInUse, as bind(2) does.
    pub fn bind(self: &Arc<Self>, port: u16) -> io::Result<TwinSocket> {
        self.bind_group(port, 1)?.pop().ok_or_else(|| io::ErrorKind::AddrInUse.into())
    }

    /// `count` sockets sharing `port`, as SO_REUSEPORT siblings: datagrams from one source
    /// always go to the same one.
    pub fn bind_group(self: &Arc<Self>, port: u16, count: usize) -> io::Result<Vec<TwinSocket>> {
        Ok(self.bind_steered(port, count, None)?.0)
    }

    /// As `bind_group`, and with `steer = Some(byte)` (and `steering` on) one more socket that
    /// receives every datagram not starting with `byte`, the others spread by the word at
    /// bytes 4..8 (the kernel's steered group, `Network::bind`).
    pub fn bind_steered(
        self: &Arc<Self>,
        port: u16,
        count: usize,
        steer: Option<u8>,
    ) -> io::Result<(Vec<TwinSocket>, Option<TwinSocket>)> {
        let mut ports = self.ports();
        let port = if port == 0 {
            (40_000..=u16::MAX).find(|p| !ports.contains_key(p)).ok_or(io::ErrorKind::AddrInUse)?
        } else if ports.contains_key(&port) {
            return Err(io::ErrorKind::AddrInUse.into());
        } else {
            port
        };
        let socket = || {
            let (tx, rx) = bounded(TWIN_SOCKET_QUEUE);
            TwinSocket { net: self.clone(), port, tx, rx, state: Arc::default() }
        };
        let sockets: Vec<TwinSocket> = (0..count.max(1)).map(|_| socket()).collect();
        let steer = steer.filter(|_| self.steering.load(Ordering::Relaxed));
        let side = steer.map(|_| socket());
        let member = |s: &TwinSocket| Member { tx: s.tx.clone(), state: s.state.clone() };
        let group = Group {
            members: sockets.iter().map(member).collect(),
            side: side.as_ref().map(member),
            bulk: steer.unwrap_or(0),
        };
        ports.insert(port, group);
        Ok((sockets, side))
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
            let spread = group.members.len().max(1);
            if let Some(side) = &group.side {
                if bytes.first() != Some(&group.bulk) || bytes.len() < 8 {
                    return Some(side.clone());
                }
                let word = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
                return group.members.get(word % spread).cloned();
            }
            let ip = match from.ip() {
                IpAddr::V4(v4) => u32::from(v4),
                IpAddr::V6(v6) => v6.octets().iter().fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(*b)),
            };
            let hash = (ip ^ u32::from(from.port())) as usize;
            group.members.get(hash % spread).cloned()
        });
        let delivered = match target {
            Some(member) if to.ip() == Ipv4Addr::LOCALHOST => {
                let filter = &mut *member.state.filter.lock().unwrap_or_else(|e| e.into_inner());
                if filter.as_mut().is_some_and(|f| !f.keeps(bytes, from)) {
                    member.state.drops.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match member.tx.try_send((bytes.to_vec(), from)) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        member.state.drops.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
            }
            _ => false,
        };
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub struct TwinSocket {
    pub(super) net: Arc<TwinNet>,
    port: u16,
    tx: Sender<Datagram>,
    pub(super) rx: Receiver<Datagram>,
    state: Arc<SocketState>,
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

    /// Datagrams this socket's filter dropped or its full queue refused.
    pub fn drops(&self) -> u32 {
        self.state.drops.load(Ordering::Relaxed)
    }

    /// The twin of `OsSocket::thin_sources`.
    pub fn thin_sources(&self, sources: &[Source], keep_one_in: u32, spares: &[Spare]) -> io::Result<()> {
        let thinner = (!sources.is_empty()).then(|| Thinner {
            sources: sources.to_vec(),
            keep_one_in,
            spares: spares.to_vec(),
            seen: 0,
        });
        *self.state.filter.lock().unwrap_or_else(|e| e.into_inner()) = thinner;
        Ok(())
    }

    /// Closes the port (a socket rebound on it since keeps it).
    pub fn shutdown(&self) {
        let mut ports = self.net.ports();
        if let Some(group) = ports.get_mut(&self.port) {
            group.members.retain(|m| !m.tx.same_channel(&self.tx));
            if group.side.as_ref().is_some_and(|m| m.tx.same_channel(&self.tx)) {
                group.side = None;
            }
            if group.members.is_empty() && group.side.is_none() {
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

pub(super) fn datagram_buf((bytes, src): Datagram) -> Buf {
    let len = bytes.len();
    Buf { data: bytes.into_boxed_slice(), start: 0, len, src: Some(src), stride: len, cut: 0 }
}

/// The device's side of a twin TUN queue.
pub struct TwinTun {
    pub(super) vnet: bool,
    pub(super) from_host: Receiver<Vec<u8>>,
    pub(super) to_host: Sender<Vec<u8>>,
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
