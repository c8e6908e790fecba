//! The UAPI socket /var/run/wireguard/IFACE.sock that wg(8) and wg-quick(8) talk to.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crossbeam_channel::Sender;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use super::requests::DeviceRequest;
use crate::config::uapi::parse_request;
use crate::config::uapi::{Errno, Reply};

pub const SOCKET_DIR: &str = "/var/run/wireguard";

pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// Refuses if a live daemon answers on the interface's socket. Called before anything of the
/// interface is touched: a second daemon must not attach queues to, or reset the MTU of, a
/// running one's TUN.
pub fn ensure_free(iface: &str) -> std::io::Result<()> {
    let path = socket_path(iface);
    if !path.exists() {
        return Ok(());
    }
    let Ok(stream) = UnixStream::connect(&path) else { return Ok(()) };
    // A daemon answers. If its interface is gone from here (`ip link del` a moment ago), it
    // is on its way out: wait briefly for its process to end (it also frees its UDP port).
    if !crate::io::tun::exists(iface) {
        let owner = crate::io::unix::peer_pid(&stream);
        drop(stream);
        let deadline = std::time::Instant::now() + EXITING_OWNER_WAIT;
        while std::time::Instant::now() < deadline {
            let gone = match owner {
                Some(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                None => UnixStream::connect(&path).is_err(),
            };
            if gone {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("{} is in use by another running daemon", path.display()),
    ))
}

/// How long a new daemon waits for one whose interface was deleted to finish exiting.
const EXITING_OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the socket (private from its creation); refuses if a live daemon already answers.
pub fn bind(iface: &str) -> std::io::Result<UnixListener> {
    std::fs::create_dir_all(SOCKET_DIR)?;
    let _ = std::fs::set_permissions(SOCKET_DIR, std::fs::Permissions::from_mode(0o755));
    ensure_free(iface)?;
    let path = socket_path(iface);
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = crate::io::unix::bind_private(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub fn serve(listener: UnixListener, control: Sender<DeviceRequest>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let control = control.clone();
                std::thread::Builder::new()
                    .name("uapi-conn".into())
                    .spawn(move || handle(stream, control))
                    .map(|_| ())
                    .unwrap_or_else(|e| warn!("cannot start UAPI connection thread: {e}"));
            }
            Err(e) => {
                debug!("UAPI accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// The longest line a request may have: the longest valid one is under 100 bytes, so a
/// client that sends an endless line gets an error, not the daemon's memory.
pub const MAX_LINE: usize = 4096;

/// One request read off a connection's byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// The lines up to a blank line (or the end of the stream), and whether the stream ended.
    Request { text: Zeroizing<String>, eof: bool },
    /// The stream ended before any line.
    End,
    /// A line longer than `MAX_LINE`: the connection is answered with EINVAL and closed.
    LineTooLong,
}

/// Reads the next request: lines up to a blank one, as wg(8) frames them. A `set` carries keys,
/// so the buffers are wiped when dropped.
pub fn read_request(reader: &mut impl BufRead) -> Framed {
    let mut text = Zeroizing::new(String::new());
    let mut line = Zeroizing::new(String::new());
    loop {
        line.clear();
        let eof = match Read::take(&mut *reader, MAX_LINE as u64 + 1).read_line(&mut line) {
            Ok(0) | Err(_) => true,
            Ok(_) if line.len() > MAX_LINE => return Framed::LineTooLong,
            Ok(_) => false,
        };
        if eof {
            return if text.is_empty() { Framed::End } else { Framed::Request { text, eof: true } };
        }
        if line.as_str() == "\n" {
            return if text.is_empty() { Framed::End } else { Framed::Request { text, eof: false } };
        }
        text.push_str(&line);
    }
}

/// Serves requests on one connection until the client closes it.
fn handle(stream: UnixStream, control: Sender<DeviceRequest>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let (request, eof) = match read_request(&mut reader) {
            Framed::Request { text, eof } => (text, eof),
            Framed::End => return,
            Framed::LineTooLong => {
                warn!("UAPI: a line longer than {MAX_LINE} bytes; closing the connection");
                let _ = writer.write_all(Reply::Failed(Errno::Invalid).text().as_bytes());
                return;
            }
        };
        let reply = match parse_request(&request) {
            Ok(req) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                if control.send(DeviceRequest::Uapi(req, tx)).is_err() {
                    return;
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(e) => {
                warn!("UAPI: {e}");
                Reply::Failed(e.errno())
            }
        };
        if writer.write_all(reply.text().as_bytes()).is_err() || eof {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: Framed) -> Option<(String, bool)> {
        match f {
            Framed::Request { text, eof } => Some((text.as_str().to_owned(), eof)),
            _ => None,
        }
    }

    #[test]
    fn requests_are_framed_by_blank_lines_and_lines_are_bounded() {
        let mut r = std::io::Cursor::new(b"get=1\n\nset=1\nlisten_port=1\n\nget=1\n".to_vec());
        assert_eq!(text(read_request(&mut r)), Some(("get=1\n".into(), false)));
        assert_eq!(text(read_request(&mut r)), Some(("set=1\nlisten_port=1\n".into(), false)));
        assert_eq!(text(read_request(&mut r)), Some(("get=1\n".into(), true)), "the end of the stream ends one too");
        assert_eq!(read_request(&mut r), Framed::End);
        let mut long = b"set=1\nprivate_key=".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10 * MAX_LINE));
        assert_eq!(read_request(&mut std::io::Cursor::new(long)), Framed::LineTooLong);
        let mut exact = vec![b'x'; MAX_LINE - 1];
        exact.push(b'\n');
        assert!(matches!(read_request(&mut std::io::Cursor::new(exact)), Framed::Request { .. }));
    }
}
