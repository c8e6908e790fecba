//! Small process-level calls: the UAPI socket's file, created with no access for group and
//! others from its first moment (wireguard-go binds under umask 077; a chmod after bind leaves
//! a window), the process behind a connected socket, and the process's CPU time.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// Binds a Unix stream socket at `path` under umask 077, so only the owner may connect.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask takes and returns a plain mode and cannot fail. It is process-wide: the
    // daemon binds its socket before it starts any other thread.
    let old = unsafe { libc::umask(0o077) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above; restores the caller's mask.
    unsafe { libc::umask(old) };
    listener
}

/// The process ID at the other end of a connected Unix socket (SO_PEERCRED), if the kernel
/// says.
pub fn peer_pid(stream: &UnixStream) -> Option<u32> {
    // SAFETY: ucred is a plain C struct (all-zero is valid).
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which lives in this frame.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// CPU time (user and system) this process has used so far, for tools that report their own
/// cost beside what they measure.
pub fn process_cpu_time() -> Duration {
    // SAFETY: rusage is a plain C struct (all-zero is valid); getrusage writes it and only it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable rusage; RUSAGE_SELF cannot fail.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_socket_is_private_from_the_start() {
        let dir = std::env::temp_dir().join(format!("wgturbo-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sock");
        let _ = std::fs::remove_file(&path);
        let _l = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
