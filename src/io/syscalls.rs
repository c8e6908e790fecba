//! The syscall backend: poll(2) on the TUN queue and the socket, non-blocking TUN reads,
//! recvmmsg/sendmmsg with UDP GRO/GSO cmsgs, one write(2) per TUN packet.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::batch::{Buf, SendBatch, TunWriteBatch};
use super::doorbell::Doorbell;
use super::mmsg::{BatchReceiver, BatchSender};
use super::poll::poll_readable;
use super::udp::OsSocket;
use super::vnet::tun_frame;
use super::{Backend, Socket, Tun, WorkerIo, TUN_BUF, TUN_READ_BATCH};

pub struct SyscallIo {
    tun: Tun,
    socket: Arc<Socket>,
    bell: Arc<Doorbell>,
    free_tun: Vec<Buf>,
    receiver: BatchReceiver,
    sender: BatchSender,
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
                    buf.start = 0;
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
