//! A small read-only HTTP endpoint for text pages such as `/metrics`, with hard bounds, since
//! any local user can connect to it and the daemon carries a tunnel:
//! - at most `MAX_CONNECTIONS` served at once; a connection past the cap is closed at once,
//!   so idle connections can never use up the daemon's descriptors;
//! - a request head of at most `MAX_HEAD` bytes, read within `HEAD_DEADLINE` in all (a client
//!   that trickles bytes is cut off when it runs out, not when it pauses);
//! - a response written within `WRITE_TIMEOUT`;
//! - an accept error (EMFILE, ENFILE, ENOBUFS...) is logged at most every `LOG_EVERY` and
//!   survived: the loop backs off briefly and goes on.
//!
//! One request per connection (`Connection: close`), as Prometheus is happy with. Written here
//! rather than taken from a crate: tiny_http 0.12 has none of these bounds, and a full HTTP
//! server (hyper, axum) brings an async runtime for one page a scrape interval. It knows
//! nothing of what it serves: the caller hands it a path and a function that renders the page.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::io::poll_readable;

/// Connections served at once, at most.
pub const MAX_CONNECTIONS: usize = 8;
/// Bytes of a request head (request line and headers), at most.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Time the response may take to write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the accept loop looks at its stop condition while idle.
const STOP_POLL: Duration = Duration::from_millis(250);
/// After an accept error, the pause before the next try (the pending connection stays queued,
/// so without it the loop would spin while descriptors are short).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Accept errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct HttpEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

/// Binds `addr` at once, so a port in use or an address not on this host is an error the
/// caller reports at start-up, not something a scrape finds out later.
pub fn bind(addr: SocketAddr) -> io::Result<HttpEndpoint> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok(HttpEndpoint { listener, addr })
}

/// What the endpoint did, for tests and the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub answered: u64,
    /// Closed at once: the cap was reached.
    pub refused: u64,
    /// Closed without an answer: too slow, too long, or gone.
    pub cut_off: u64,
    pub accept_errors: u64,
}

/// Counts one finished connection when dropped, whatever way its handler ended.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HttpEndpoint {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `GET path` (any query string) with `render()`, `/` with a pointer to `path`,
    /// anything else with 404 or 405, until `stopping()` says so; then waits for the
    /// connections being served (each bounded in time) and returns what it did.
    pub fn serve(
        self,
        path: &str,
        content_type: &str,
        stopping: impl Fn() -> bool,
        render: impl Fn() -> String + Sync,
    ) -> Served {
        let active = AtomicUsize::new(0);
        let answered = AtomicUsize::new(0);
        let cut_off = AtomicUsize::new(0);
        let mut served = Served::default();
        let mut last_log: Option<Instant> = None;
        let mut unlogged = 0u64;
        std::thread::scope(|scope| {
            while !stopping() {
                if poll_readable(&[self.listener.as_raw_fd()], STOP_POLL).unwrap_or(0) == 0 {
                    continue;
                }
                loop {
                    let stream = match self.listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            served.accept_errors += 1;
                            unlogged += 1;
                            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                                tracing::warn!("metrics endpoint: cannot accept ({e}); {unlogged} such error(s) since the last report");
                                last_log = Some(Instant::now());
                                unlogged = 0;
                            }
                            std::thread::sleep(ACCEPT_BACKOFF);
                            break;
                        }
                    };
                    if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                        served.refused += 1;
                        drop(stream);
                        continue;
                    }
                    active.fetch_add(1, Ordering::AcqRel);
                    let slot = Slot(&active);
                    let (render, answered, cut_off) = (&render, &answered, &cut_off);
                    let spawned =
                        std::thread::Builder::new().name("metrics-conn".into()).spawn_scoped(scope, move || {
                            let _slot = slot;
                            match answer(stream, path, content_type, render) {
                                Ok(()) => answered.fetch_add(1, Ordering::Relaxed),
                                Err(_) => cut_off.fetch_add(1, Ordering::Relaxed),
                            };
                        });
                    if let Err(e) = spawned {
                        // The closure (and with it the stream and the slot) was dropped.
                        tracing::debug!("metrics endpoint: no thread for a connection: {e}");
                    }
                }
            }
        });
        served.answered = answered.load(Ordering::Relaxed) as u64;
        served.cut_off = cut_off.load(Ordering::Relaxed) as u64;
        served
    }
}

/// Reads one request head within the bounds and answers it.
fn answer(mut stream: TcpStream, path: &str, content_type: &str, render: &impl Fn() -> String) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let head = match read_head(&mut stream, Instant::now() + HEAD_DEADLINE)? {
        Head::Complete(head) => head,
        Head::TooLong => {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too long\n",
                true,
            );
            return Err(io::ErrorKind::InvalidData.into());
        }
    };
    match route(&head, path) {
        Route::Page { body } => respond(&mut stream, "200 OK", content_type, &render(), body),
        Route::Root { body } => respond(&mut stream, "200 OK", "text/plain", &format!("see {path}\n"), body),
        Route::NotFound { body } => respond(&mut stream, "404 Not Found", "text/plain", "not found\n", body),
        Route::NotAllowed => respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET\n", true),
    }
}

/// What a request head asks for; `body` is false for HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Page { body: bool },
    Root { body: bool },
    NotFound { body: bool },
    NotAllowed,
}

/// Reads a request head's first line (any bytes, any length): the method and the target
/// without its query string.
pub fn route(head: &[u8], path: &str) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let target = target.split('?').next().unwrap_or_default();
    let body = method != "HEAD";
    match (method, target) {
        ("GET" | "HEAD", t) if t == path => Route::Page { body },
        ("GET" | "HEAD", "/") => Route::Root { body },
        ("GET" | "HEAD", _) => Route::NotFound { body },
        _ => Route::NotAllowed,
    }
}

enum Head {
    Complete(Vec<u8>),
    TooLong,
}

/// Reads until the blank line that ends a request head, at most `MAX_HEAD` bytes, by
/// `deadline`. A client that closes, or is too slow, gives an error.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Head> {
    let mut head = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") || head[..len].windows(2).any(|w| w == b"\n\n") {
            head.truncate(len);
            return Ok(Head::Complete(head));
        }
        if len == MAX_HEAD {
            return Ok(Head::TooLong);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut head[len..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str, with_body: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// An endpoint on a loopback port, served on a thread until the returned flag is set.
    fn endpoint() -> (SocketAddr, Arc<AtomicBool>, std::thread::JoinHandle<Served>) {
        let ep = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = ep.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            ep.serve("/metrics", "text/plain", || s.load(Ordering::Relaxed), || "up 1\n".into())
        });
        (addr, stop, h)
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut page = String::new();
        c.read_to_string(&mut page).unwrap();
        page
    }

    /// Whether the server closed `c` (EOF) within `within`.
    fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
        c.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn answers_the_page_root_and_errors() {
        let (addr, stop, h) = endpoint();
        let page = get(addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n") && page.ends_with("\r\n\r\nup 1\n"), "{page}");
        assert!(page.contains("Content-Length: 5\r\n"));
        assert!(get(addr, "GET / HTTP/1.0\r\n\r\n").ends_with("see /metrics\n"));
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let head = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 5"), "{head}");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(h.join().unwrap().answered, 5);
    }

    #[test]
    fn connections_past_the_cap_are_closed_at_once_and_the_page_comes_back() {
        let (addr, stop, h) = endpoint();
        let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut extra: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for c in &mut extra {
            assert!(closed_within(c, Duration::from_secs(2)), "a connection past the cap is closed at once");
        }
        assert!(
            !closed_within(&mut idle[0], Duration::from_millis(200)),
            "those within the cap wait for their request"
        );
        drop(idle);
        std::thread::sleep(Duration::from_millis(300));
        assert!(get(addr, "GET /metrics HTTP/1.1\r\n\r\n").ends_with("up 1\n"), "a fresh scrape succeeds");
        stop.store(true, Ordering::Relaxed);
        let served = h.join().unwrap();
        assert_eq!(served.refused, 20);
        assert_eq!(served.answered, 1);
    }

    #[test]
    fn an_endless_header_line_is_refused_at_the_head_limit() {
        let (addr, stop, h) = endpoint();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let line = vec![b'a'; 1024];
        let mut written = 0;
        // The server stops reading at 8 KiB; writes past what the socket buffers then fail.
        for _ in 0..4096 {
            match c.write(&line) {
                Ok(n) => written += n,
                Err(_) => break,
            }
            if written > MAX_HEAD && closed_within(&mut c, Duration::from_millis(1)) {
                break;
            }
        }
        let mut answer = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
        stop.store(true, Ordering::Relaxed);
        let served = h.join().unwrap();
        assert_eq!((served.answered, served.cut_off), (0, 1));
    }

    #[test]
    fn a_client_that_trickles_its_head_is_cut_off_at_the_deadline() {
        let (addr, stop, h) = endpoint();
        let mut c = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        let mut open = true;
        // One byte every 200 ms: each read succeeds, but the head never completes.
        while start.elapsed() < HEAD_DEADLINE + Duration::from_secs(3) {
            if c.write_all(b"X").is_err() || closed_within(&mut c, Duration::from_millis(200)) {
                open = false;
                break;
            }
        }
        assert!(!open, "the slow client was cut off");
        let took = start.elapsed();
        assert!(took >= HEAD_DEADLINE - Duration::from_millis(500), "not before its deadline: {took:?}");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(h.join().unwrap().cut_off, 1);
    }
}
