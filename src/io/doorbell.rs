//! A doorbell wakes a worker blocked in `WorkerIo::wait` from another thread: an eventfd the
//! kernel backends wait on next to the TUN and the socket, or a channel for the twin.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crossbeam_channel::{bounded, Receiver, Sender};

pub enum Doorbell {
    Event(OwnedFd),
    Twin(Sender<()>, Receiver<()>),
}

impl Doorbell {
    /// An eventfd, for the io_uring and syscalls backends.
    pub fn event() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(Doorbell::Event(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A channel, for the twin backend.
    pub fn twin() -> Doorbell {
        let (tx, rx) = bounded(1);
        Doorbell::Twin(tx, rx)
    }

    /// Wakes the waiting worker, or makes its next wait return at once.
    pub fn ring(&self) {
        match self {
            Doorbell::Event(fd) => {
                let one: u64 = 1;
                // SAFETY: writes the 8 bytes of `one`, which lives in this frame. A full
                // counter (EAGAIN) means the bell is already rung.
                let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
            Doorbell::Twin(tx, _) => {
                let _ = tx.try_send(());
            }
        }
    }

    /// Silences the bell once its wake-up was taken.
    pub(crate) fn clear(&self) {
        match self {
            Doorbell::Event(fd) => {
                let mut count: u64 = 0;
                // SAFETY: reads at most 8 bytes into `count`, which lives in this frame; the fd
                // is non-blocking, so an unrung bell gives EAGAIN.
                let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            }
            Doorbell::Twin(_, rx) => {
                let _ = rx.try_recv();
            }
        }
    }

    pub(crate) fn fd(&self) -> Option<RawFd> {
        match self {
            Doorbell::Event(fd) => Some(fd.as_raw_fd()),
            Doorbell::Twin(..) => None,
        }
    }

    pub(crate) fn receiver(&self) -> Option<&Receiver<()>> {
        match self {
            Doorbell::Event(_) => None,
            Doorbell::Twin(_, rx) => Some(rx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::poll_readable;
    use std::time::{Duration, Instant};

    #[test]
    fn a_rung_eventfd_wakes_poll_and_clearing_silences_it() {
        let bell = Doorbell::event().unwrap();
        let fd = bell.fd().unwrap();
        let t = Instant::now();
        poll_readable(&[fd], Duration::from_millis(50)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(40), "an unrung bell does not wake poll");
        bell.ring();
        bell.ring();
        let t = Instant::now();
        poll_readable(&[fd], Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "a rung bell wakes poll at once");
        bell.clear();
        let t = Instant::now();
        poll_readable(&[fd], Duration::from_millis(50)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(40), "one clear silences several rings");
    }
}
