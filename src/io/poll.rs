//! Waiting for input on a few descriptors (poll(2)), for threads that read more than one.

use std::io;
use std::time::Duration;

/// poll(2) on a few fds for input; returns a mask of those readable (bit i for `fds[i]`).
pub fn poll_readable(fds: &[i32], timeout: Duration) -> io::Result<u32> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().take(32).map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll reads and writes `pfds.len()` pollfds that live in this frame.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        return Ok(0);
    }
    Ok(pfds.iter().enumerate().filter(|(_, p)| p.revents != 0).fold(0, |m, (i, _)| m | 1 << i))
}
