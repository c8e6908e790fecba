//! The worker backend over the twins: a `WorkerIo` that reads and writes a `TwinTun` and a
//! twin socket, with UDP GRO as the kernel would coalesce, and GSO refusal on demand.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Select;

use super::batch::MAX_SEGMENTS;
use super::batch::{Buf, SendBatch, TunWriteBatch};
use super::doorbell::Doorbell;
use super::twin::{Datagram, TwinSocket, TwinTun};
use super::vnet::tun_frame;
use super::{Backend, Socket, WorkerIo, TUN_BUF, TUN_READ_BATCH, UDP_BUF, UDP_RECV_BATCH};

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
    b.start = 0;
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
            while gro && count < MAX_SEGMENTS {
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
