//! The UAPI socket /var/run/wireguard/IFACE.sock that wg(8) and wg-quick(8) talk to.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crossbeam_channel::Sender;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::config::uapi::parse_request;
use crate::dataplane::shared::ControlMsg;

pub const SOCKET_DIR: &str = "/var/run/wireguard";

pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// Refuses if a live daemon answers on the interface's socket. Called before anything of the
/// interface is touched: a second daemon must not attach queues to, or reset the MTU of, a
/// running one's TUN.
pub fn ensure_free(iface: &str) -> std::io::Result<()> {
    let path = socket_path(iface);
    if path.exists() && UnixStream::connect(&path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use by another running daemon", path.display()),
        ));
    }
    Ok(())
}

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

pub fn serve(listener: UnixListener, control: Sender<ControlMsg>) {
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

/// Serves requests on one connection until the client closes it.
fn handle(stream: UnixStream, control: Sender<ControlMsg>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        // A `set` carries keys: both buffers are wiped when dropped.
        let mut request = Zeroizing::new(String::new());
        let mut line = Zeroizing::new(String::new());
        let mut eof = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
            }
            if line.as_str() == "\n" {
                break;
            }
            request.push_str(&line);
        }
        if request.is_empty() {
            return;
        }
        let reply = match parse_request(&request) {
            Ok(req) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                if control.send(ControlMsg::Uapi(req, tx)).is_err() {
                    return;
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(e) => {
                warn!("UAPI: {e}");
                Zeroizing::new(format!("errno={}\n\n", e.errno()))
            }
        };
        if writer.write_all(reply.as_bytes()).is_err() || eof {
            return;
        }
    }
}
