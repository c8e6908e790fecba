//! The cross-platform UAPI text protocol (wireguard.com/xplatform), as wireguard-go speaks it.

use std::fmt::Write;
use std::net::SocketAddr;

use zeroize::Zeroizing;

use super::{ConfigError, DeviceChange, DeviceStatus, PeerChange};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::routing::IpNet;

/// The errors a UAPI reply can carry, as wireguard-go and the kernel name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// The request could not be carried out (a socket could not be bound, the device did
    /// not answer).
    Io,
    /// Not a `get` or a `set`.
    Protocol,
    /// A `set` with a line that does not parse.
    Invalid,
    /// The listen port is taken.
    PortInUse,
    /// More peers than a device may have (the kernel's answer at MAX_PEERS_PER_DEVICE).
    TooManyPeers,
}

impl Errno {
    /// The value on the `errno=` line: negative, as wg(8) expects.
    pub fn code(self) -> i32 {
        -match self {
            Errno::Io => libc_errno::EIO,
            Errno::Protocol => libc_errno::EPROTO,
            Errno::Invalid => libc_errno::EINVAL,
            Errno::PortInUse => libc_errno::EADDRINUSE,
            Errno::TooManyPeers => libc_errno::ENOSPC,
        }
    }
}

/// Linux errno numbers, kept here so the pure core does not need libc.
mod libc_errno {
    pub const EIO: i32 = 5;
    pub const ENOSPC: i32 = 28;
    pub const EINVAL: i32 = 22;
    pub const EPROTO: i32 = 71;
    pub const EADDRINUSE: i32 = 98;
}

/// The answer to one request.
pub enum Reply {
    /// A `get`'s lines (`format_get`).
    Got(Zeroizing<String>),
    /// A `set` applied, or why not.
    Set(Result<(), Errno>),
    /// A request that was not carried out.
    Failed(Errno),
}

impl Reply {
    /// The reply as it goes on the socket, ending with its `errno=` line and a blank line.
    /// Wiped when dropped (a `get` holds keys).
    pub fn text(&self) -> Zeroizing<String> {
        let (body, errno) = match self {
            Reply::Got(body) => (body.as_str(), None),
            Reply::Set(result) => ("", result.err()),
            Reply::Failed(errno) => ("", Some(*errno)),
        };
        let mut text = Zeroizing::new(String::with_capacity(body.len() + 12));
        text.push_str(body);
        let _ = write!(text, "errno={}\n\n", errno.map_or(0, Errno::code));
        text
    }
}

/// A request read off the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Get,
    Set(DeviceChange),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum UapiError {
    #[error("unknown operation ({} bytes; expected get=1 or set=1)", .0.len())]
    UnknownOperation(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl UapiError {
    pub fn errno(&self) -> Errno {
        match self {
            UapiError::UnknownOperation(_) => Errno::Protocol,
            UapiError::Invalid(_) => Errno::Invalid,
        }
    }
}

/// Names a key in an error only if it is one of ours: an unknown "key" may be a secret typed
/// on the wrong line (a base64 key ends in '='), and values are never echoed at all.
fn describe(key: &str) -> String {
    const KNOWN: [&str; 13] = [
        "private_key",
        "listen_port",
        "fwmark",
        "replace_peers",
        "public_key",
        "remove",
        "update_only",
        "preshared_key",
        "endpoint",
        "persistent_keepalive_interval",
        "replace_allowed_ips",
        "allowed_ip",
        "protocol_version",
    ];
    if KNOWN.contains(&key) {
        format!("'{key}'")
    } else {
        format!("a key of {} characters", key.chars().count())
    }
}

fn parse_bool(line: usize, key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::new(line, format!("{key} must be true or false"))),
    }
}

fn parse_num<T: std::str::FromStr>(line: usize, key: &str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError::new(line, format!("{key} is not a valid number")))
}

/// Parses one request: its lines without the terminating blank line.
pub fn parse_request(text: &str) -> Result<Request, UapiError> {
    let mut lines = text.lines();
    match lines.next() {
        Some("get=1") => Ok(Request::Get),
        Some("set=1") => Ok(Request::Set(parse_set(lines)?)),
        other => Err(UapiError::UnknownOperation(other.unwrap_or("").to_string())),
    }
}

/// The body of a `set=1` request (line numbers count the `set=1` line as 1).
pub fn parse_set<'a>(lines: impl Iterator<Item = &'a str>) -> Result<DeviceChange, ConfigError> {
    let mut change = DeviceChange::default();
    let mut peer: Option<PeerChange> = None;
    for (i, raw) in lines.enumerate() {
        let n = i + 2;
        if raw.is_empty() {
            break;
        }
        let (key, value) = raw.split_once('=').ok_or_else(|| ConfigError::new(n, "the line is not key=value"))?;
        if key == "public_key" {
            if let Some(p) = peer.take() {
                change.peers.push(p);
            }
            let pk = PublicKey::from_hex(value).map_err(|e| ConfigError::new(n, format!("public_key: {e}")))?;
            peer = Some(PeerChange::new(pk));
            continue;
        }
        match peer.as_mut() {
            None => match key {
                "private_key" => {
                    let k =
                        PrivateKey::from_hex(value).map_err(|e| ConfigError::new(n, format!("private_key: {e}")))?;
                    change.private_key =
                        Some(if k.is_zero() || value.bytes().all(|b| b == b'0') { None } else { Some(k) });
                }
                "listen_port" => change.listen_port = Some(parse_num(n, key, value)?),
                "fwmark" => change.fwmark = Some(if value.is_empty() { 0 } else { parse_num(n, key, value)? }),
                "replace_peers" => {
                    if !parse_bool(n, key, value)? {
                        return Err(ConfigError::new(n, "replace_peers may only be true"));
                    }
                    change.replace_peers = true;
                }
                _ => return Err(ConfigError::new(n, format!("{} is not a device key", describe(key)))),
            },
            Some(p) => match key {
                "remove" => {
                    if !parse_bool(n, key, value)? {
                        return Err(ConfigError::new(n, "remove may only be true"));
                    }
                    p.remove = true;
                }
                "update_only" => {
                    if !parse_bool(n, key, value)? {
                        return Err(ConfigError::new(n, "update_only may only be true"));
                    }
                    p.update_only = true;
                }
                "preshared_key" => {
                    p.preshared_key = Some(
                        PresharedKey::from_hex(value)
                            .map_err(|e| ConfigError::new(n, format!("preshared_key: {e}")))?,
                    );
                }
                "endpoint" => {
                    let ep: SocketAddr =
                        value.parse().map_err(|_| ConfigError::new(n, "endpoint is not ip:port or [ip6]:port"))?;
                    p.endpoint = Some(ep);
                }
                "persistent_keepalive_interval" => p.persistent_keepalive = Some(parse_num(n, key, value)?),
                "replace_allowed_ips" => {
                    if !parse_bool(n, key, value)? {
                        return Err(ConfigError::new(n, "replace_allowed_ips may only be true"));
                    }
                    p.replace_allowed_ips = true;
                }
                "allowed_ip" => {
                    let net: IpNet = value.parse().map_err(|e| ConfigError::new(n, format!("allowed_ip: {e}")))?;
                    p.allowed_ips.push(net);
                }
                "protocol_version" => {
                    if value != "1" {
                        return Err(ConfigError::new(n, "only protocol_version 1 is supported"));
                    }
                }
                _ => return Err(ConfigError::new(n, format!("{} is not a peer key", describe(key)))),
            },
        }
    }
    if let Some(p) = peer.take() {
        change.peers.push(p);
    }
    Ok(change)
}

/// The reply to `get=1`, without the final `errno=0` line. It holds the private and preshared
/// keys, so it (and each key's hex on the way) is wiped when dropped.
pub fn format_get(status: &DeviceStatus) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::new());
    if let Some(k) = &status.private_key {
        let hex = Zeroizing::new(k.to_hex());
        let _ = writeln!(s, "private_key={}", hex.as_str());
    }
    let _ = writeln!(s, "listen_port={}", status.listen_port);
    if status.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", status.fwmark);
    }
    for p in &status.peers {
        let _ = writeln!(s, "public_key={}", p.public_key.to_hex());
        let hex = Zeroizing::new(p.preshared_key.to_hex());
        let _ = writeln!(s, "preshared_key={}", hex.as_str());
        let _ = writeln!(s, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        let (sec, nsec) = p.last_handshake.unwrap_or((0, 0));
        let _ = writeln!(s, "last_handshake_time_sec={sec}");
        let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(s, "persistent_keepalive_interval={}", p.persistent_keepalive);
        for ip in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={ip}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed request never puts a value, or a line that might hold one, into an error
    /// (errors are logged): a mistyped `private_key` line would otherwise log the key.
    #[test]
    fn errors_never_echo_values() {
        let secret = crate::keys::PrivateKey::generate().to_hex();
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x5au8; 32]);
        let requests = [
            format!("{secret}\n\n"),
            format!("set=1\nprivate_key{secret}\n\n"),
            format!("set=1\n{b64}=\n\n"),
            format!("set=1\nlisten_port={secret}\n\n"),
            format!("set=1\nreplace_peers={secret}\n\n"),
            format!("set=1\npublic_key={secret}\nendpoint={secret}\n\n"),
            format!("set=1\npublic_key={secret}\nallowed_ip={secret}/32\n\n"),
            format!("set=1\npublic_key={secret}\nallowed_ip=10.0.0.0/{secret}\n\n"),
            format!("set=1\npublic_key={secret}\nprotocol_version={secret}\n\n"),
            format!("set=1\npublic_key={secret}\n{secret}=1\n\n"),
            format!("set=1\npublic_key={secret}\npersistent_keepalive_interval={secret}\n\n"),
        ];
        for r in &requests {
            let e = parse_request(r).expect_err("malformed");
            let text = e.to_string();
            assert!(!text.contains(&secret[..16]) && !text.contains(&b64[..16]), "{text}");
        }
    }
    use crate::config::PeerStatus;

    const PK: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
    const PRIV: &str = "a8dbe9cc52a2b4f8d35bbd6ad1bb7e4e5a3e7c77cf84c24a1c3a2bd0b2c3a45f";

    #[test]
    fn full_set_request() {
        let text = format!(
            "set=1\nprivate_key={PRIV}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\npublic_key={PK}\n\
             preshared_key={}\nendpoint=[fd00::1]:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\nprotocol_version=1\n\
             public_key={}\nremove=true\n",
            "11".repeat(32),
            "22".repeat(32)
        );
        let Request::Set(c) = parse_request(&text).unwrap() else { panic!("not a set") };
        assert!(c.private_key.as_ref().unwrap().is_some());
        assert_eq!(c.listen_port, Some(51820));
        assert_eq!(c.fwmark, Some(0));
        assert!(c.replace_peers);
        assert_eq!(c.peers.len(), 2);
        let p = &c.peers[0];
        assert_eq!(p.public_key.to_hex(), PK);
        assert_eq!(p.endpoint, Some("[fd00::1]:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(p.allowed_ips.len(), 2);
        assert!(c.peers[1].remove);
        assert_eq!(parse_request("get=1\n").unwrap(), Request::Get);
    }

    #[test]
    fn zero_private_key_removes_it() {
        let Request::Set(c) = parse_request(&format!("set=1\nprivate_key={}\n", "0".repeat(64))).unwrap() else {
            panic!()
        };
        assert_eq!(c.private_key, Some(None));
    }

    #[test]
    fn every_bad_line_names_itself() {
        let cases = [
            ("set=1\nlisten_port=notaport\n", 2, "listen_port"),
            ("set=1\nlisten_port=70000\n", 2, "listen_port"),
            ("set=1\nprivate_key=zz\n", 2, "private_key"),
            ("set=1\nbogus=1\n", 2, "is not a device key"),
            ("set=1\nno equals sign\n", 2, "key=value"),
            ("set=1\nreplace_peers=false\n", 2, "replace_peers"),
            (&format!("set=1\npublic_key={PK}\nendpoint=1.2.3.4\n"), 3, "endpoint"),
            (&format!("set=1\npublic_key={PK}\nallowed_ip=10.0.0.0/33\n"), 3, "allowed_ip"),
            (&format!("set=1\npublic_key={PK}\nprotocol_version=2\n"), 3, "protocol_version"),
            (&format!("set=1\npublic_key={PK}\nlisten_port=1\n"), 3, "'listen_port' is not a peer key"),
            (&format!("set=1\npublic_key={PK}\npersistent_keepalive_interval=-1\n"), 3, "persistent_keepalive"),
            (&format!("set=1\npublic_key={PK}\npreshared_key=00\n"), 3, "preshared_key"),
            ("set=1\npublic_key=abc\n", 2, "public_key"),
        ];
        for (text, line, what) in cases {
            let err = parse_request(text).unwrap_err();
            assert_eq!(err.errno(), Errno::Invalid, "{text}");
            let UapiError::Invalid(e) = err else { panic!() };
            assert_eq!(e.line, line, "{text}");
            assert!(e.reason.contains(what), "{text}: {}", e.reason);
        }
        assert_eq!(parse_request("frob=1\n").unwrap_err().errno(), Errno::Protocol);
        assert_eq!(parse_request("").unwrap_err().errno(), Errno::Protocol);
    }

    #[test]
    fn get_reply_format() {
        let status = DeviceStatus {
            private_key: Some(PrivateKey::from_hex(PRIV).unwrap()),
            listen_port: 51820,
            fwmark: 7,
            peers: vec![PeerStatus {
                public_key: PublicKey::from_hex(PK).unwrap(),
                preshared_key: PresharedKey::default(),
                endpoint: Some("192.0.2.1:1234".parse().unwrap()),
                last_handshake: Some((1700000000, 5)),
                tx_bytes: 10,
                rx_bytes: 20,
                persistent_keepalive: 25,
                allowed_ips: vec!["10.0.0.0/24".parse().unwrap()],
            }],
        };
        let text = format_get(&status);
        assert!(text.starts_with("private_key="));
        for line in [
            "listen_port=51820",
            "fwmark=7",
            &format!("public_key={PK}"),
            "endpoint=192.0.2.1:1234",
            "last_handshake_time_sec=1700000000",
            "last_handshake_time_nsec=5",
            "tx_bytes=10",
            "rx_bytes=20",
            "persistent_keepalive_interval=25",
            "allowed_ip=10.0.0.0/24",
            "protocol_version=1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in {}", text.as_str());
        }
        // A `get` reply parses back as a `set` of the same values (except status-only keys).
        let settable: String = text
            .lines()
            .filter(|l| !l.starts_with("last_handshake") && !l.starts_with("tx_bytes") && !l.starts_with("rx_bytes"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse_set(settable.lines()).unwrap();
        assert_eq!(c.peers[0].allowed_ips, status.peers[0].allowed_ips);
    }

    /// The errno lines wg(8) reads: 0 for success, the negated Linux errno otherwise (the
    /// values wireguard-go's ipc package sends).
    #[test]
    fn replies_end_with_the_errno_wg_expects() {
        assert_eq!(Reply::Set(Ok(())).text().as_str(), "errno=0\n\n");
        assert_eq!(Reply::Got(Zeroizing::new("listen_port=1\n".into())).text().as_str(), "listen_port=1\nerrno=0\n\n");
        let codes = [
            (Errno::Io, -5),
            (Errno::Invalid, -22),
            (Errno::TooManyPeers, -28),
            (Errno::Protocol, -71),
            (Errno::PortInUse, -98),
        ];
        for (errno, code) in codes {
            assert_eq!(Reply::Set(Err(errno)).text().as_str(), format!("errno={code}\n\n"));
            assert_eq!(Reply::Failed(errno).text().as_str(), format!("errno={code}\n\n"));
        }
    }
}
