//! Configuration as text in, typed changes out: the wg(8) configuration file and the
//! cross-platform UAPI protocol both parse into one `DeviceChange`.
#![forbid(unsafe_code)]

pub mod uapi;
pub mod wgconf;

use std::net::SocketAddr;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::routing::IpNet;

/// One `set` worth of changes, applied all or nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceChange {
    /// `Some(None)` removes the private key (UAPI: an all-zero key).
    pub private_key: Option<Option<PrivateKey>>,
    pub listen_port: Option<u16>,
    /// 0 turns the mark off.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    pub public_key: PublicKey,
    pub remove: bool,
    /// Only change an existing peer; never create one.
    pub update_only: bool,
    /// An all-zero key removes the preshared key.
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 turns it off.
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
}

impl PeerChange {
    pub fn new(public_key: PublicKey) -> Self {
        PeerChange {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// What `get` reports.
#[derive(Debug, Default, Clone)]
pub struct DeviceStatus {
    pub private_key: Option<PrivateKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub preshared_key: PresharedKey,
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the latest handshake, as seconds and nanoseconds since the epoch.
    pub last_handshake: Option<(u64, u32)>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
}

/// A configuration line that could not be taken, with its 1-based number.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("line {line}: {reason}")]
pub struct ConfigError {
    pub line: usize,
    pub reason: String,
}

impl ConfigError {
    pub fn new(line: usize, reason: impl Into<String>) -> Self {
        ConfigError { line, reason: reason.into() }
    }
}
