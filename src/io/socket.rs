//! A UDP socket of the device, whatever its backend, with the batch operations the threads
//! outside the workers use (the side socket's reader, the control thread, the load
//! generator): batch send and receive, skim, and thinning chosen sources before they queue.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::batch::{Buf, SendBatch};
use super::mmsg::{BatchReceiver, BatchSender};
use super::thin::{Source, Spare};
use super::twin;
use super::udp::OsSocket;
use super::UDP_RECV_BATCH;

/// How long a twin receive with `wait` waits (a kernel socket: its receive timeout).
const TWIN_WAIT: Duration = Duration::from_millis(500);

/// The message arrays and spare buffers one thread uses for batch I/O on its sockets.
#[derive(Default)]
pub struct SocketBatcher {
    receiver: BatchReceiver,
    sender: BatchSender,
}

impl SocketBatcher {
    /// Gives received buffers back for the next receive.
    pub fn recycle(&mut self, bufs: &mut Vec<Buf>) {
        self.receiver.recycle(bufs);
    }
}

/// A UDP socket of the device: the kernel's, or the twin's.
pub enum Socket {
    Os(OsSocket),
    Twin(twin::TwinSocket),
}

impl Socket {
    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        match self {
            Socket::Os(s) => s.send_to(buf, addr),
            Socket::Twin(s) => s.send_to(buf, addr),
        }
    }

    pub fn local_port(&self) -> io::Result<u16> {
        match self {
            Socket::Os(s) => s.local_port(),
            Socket::Twin(s) => Ok(s.port()),
        }
    }

    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        match self {
            Socket::Os(s) => s.set_fwmark(mark),
            Socket::Twin(_) => Ok(()),
        }
    }

    /// Wakes the worker blocked on this socket once it is replaced.
    pub fn shutdown(&self) {
        match self {
            Socket::Os(s) => s.shutdown(),
            Socket::Twin(s) => s.shutdown(),
        }
    }

    /// Sends every datagram of `batch` (GSO groups where the batch made them) and clears it:
    /// for senders outside the workers, such as the control thread's cookie replies.
    pub fn send_batch(&self, batcher: &mut SocketBatcher, batch: &mut SendBatch) -> io::Result<()> {
        match self {
            Socket::Os(s) => batcher.sender.send(s, batch),
            Socket::Twin(s) => {
                let mut result = Ok(());
                for g in batch.groups() {
                    for d in batch.datagrams(g) {
                        if let Err(e) = s.send_to(d, g.addr) {
                            result = Err(e);
                        }
                    }
                }
                batch.clear();
                result
            }
        }
    }

    /// Receives what the socket has into `out` (each buffer a datagram or a GRO train with its
    /// stride): for readers outside the workers, such as a load generator or a sink. With
    /// `wait`, blocks until one datagram arrives or half a second passes.
    pub fn recv_batch(&self, batcher: &mut SocketBatcher, out: &mut Vec<Buf>, wait: bool) -> io::Result<()> {
        match self {
            Socket::Os(s) => batcher.receiver.recv(s, out, wait),
            Socket::Twin(s) => {
                s.recv_into(out, UDP_RECV_BATCH, wait.then_some(TWIN_WAIT));
                Ok(())
            }
        }
    }

    /// As `recv_batch`, but copies at most `keep` bytes of each receive: the rest of a GRO
    /// train is dropped uncopied, and the buffer's `cut` says how many bytes that was. For a
    /// reader that will refuse most of what it reads anyway (a flood past its budget): a
    /// train is one source's datagrams, so its first is a fair sample of the rest.
    pub fn skim_batch(
        &self,
        batcher: &mut SocketBatcher,
        out: &mut Vec<Buf>,
        wait: bool,
        keep: usize,
    ) -> io::Result<()> {
        match self {
            Socket::Os(s) => batcher.receiver.skim(s, out, wait, keep),
            Socket::Twin(s) => {
                let from = out.len();
                s.recv_into(out, UDP_RECV_BATCH, wait.then_some(TWIN_WAIT));
                for b in &mut out[from..] {
                    let kept = b.len.min(keep.max(1));
                    b.cut = b.len - kept;
                    b.len = kept;
                }
                Ok(())
            }
        }
    }

    /// Receives dropped on this socket so far (its queue full, or its filter); wraps at 2^32.
    pub fn kernel_drops(&self) -> io::Result<u32> {
        match self {
            Socket::Os(s) => s.kernel_drops(),
            Socket::Twin(s) => Ok(s.drops()),
        }
    }

    /// Keeps one receive in `keep_one_in` (a power of two) from each of `sources` and drops
    /// the rest before they are queued (the kernel: a BPF filter, `thin::thin_program`); an
    /// empty list lifts it. Datagrams that match a spare are always kept.
    pub fn thin_sources(&self, sources: &[Source], keep_one_in: u32, spares: &[Spare]) -> io::Result<()> {
        match self {
            Socket::Os(s) => s.thin_sources(sources, keep_one_in, spares),
            Socket::Twin(s) => s.thin_sources(sources, keep_one_in, spares),
        }
    }

    /// Whether a send may carry several datagrams (UDP GSO).
    pub fn supports_gso(&self) -> bool {
        match self {
            Socket::Os(s) => s.supports_gso(),
            Socket::Twin(_) => true,
        }
    }
}
