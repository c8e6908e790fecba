//! A small read-only HTTP endpoint (tiny_http) for text pages such as `/metrics`. It knows
//! nothing of what it serves: the caller hands it a path and a function that renders the page.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tiny_http::{Header, Method, Response, Server};

/// How often the serving loop looks at its stop condition while idle.
const STOP_POLL: Duration = Duration::from_millis(250);

pub struct HttpEndpoint {
    server: Server,
    addr: SocketAddr,
}

/// Binds `addr` at once, so a port in use or an address not on this host is an error the
/// caller reports at start-up, not something a scrape finds out later.
pub fn bind(addr: SocketAddr) -> io::Result<HttpEndpoint> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let server = Server::from_listener(listener, None).map_err(io::Error::other)?;
    Ok(HttpEndpoint { server, addr })
}

impl HttpEndpoint {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `GET path` (any query string) with `render()`, `/` with a pointer to `path`,
    /// anything else with 404 or 405, until `stopping()` says so. One request at a time: a
    /// scrape is rare, and a slow client is cut off by the server's own timeouts.
    pub fn serve(self, path: &str, content_type: &str, stopping: impl Fn() -> bool, render: impl Fn() -> String) {
        let content_type = Header::from_bytes("Content-Type", content_type).ok();
        while !stopping() {
            let request = match self.server.recv_timeout(STOP_POLL) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!("metrics endpoint: {e}");
                    continue;
                }
            };
            let target = request.url().split('?').next().unwrap_or_default();
            let response = match (request.method(), target) {
                (Method::Get | Method::Head, t) if t == path => {
                    let page = Response::from_string(render());
                    match &content_type {
                        Some(h) => page.with_header(h.clone()),
                        None => page,
                    }
                }
                (Method::Get | Method::Head, "/") => Response::from_string(format!("see {path}\n")),
                (Method::Get | Method::Head, _) => Response::from_string("not found\n").with_status_code(404),
                _ => Response::from_string("only GET\n").with_status_code(405),
            };
            if let Err(e) = request.respond(response) {
                tracing::debug!("metrics endpoint: cannot answer: {e}");
            }
        }
    }
}
