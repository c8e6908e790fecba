//! The UAPI socket's file: created with no access for group and others from its first moment
//! (wireguard-go binds under umask 077; a chmod after bind leaves a window).

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;

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
