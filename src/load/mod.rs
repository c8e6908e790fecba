//! The parts of `wgturbo-load`, the gateway benchmark's load generator, that do no I/O: the
//! peers it plays (keys from a seed, inner addresses from a prefix), the handshakes it makes as
//! their initiator, the traffic it seals ahead and sends in trains, and the counters at the far
//! ends (the sink behind the gateway, the peers' receiving end). The binary
//! (`src/bin/wgturbo-load.rs`) binds the sockets and runs the clock; a twin test drives the
//! same parts through an in-process device.
//!
//! It speaks WireGuard through the crate's own `noise` and `session` code, so what the gateway
//! under test sees is real WireGuard, whichever implementation that gateway is.

pub mod counters;
pub mod initiator;
pub mod peers;
pub mod report;
pub mod run;
pub mod traffic;
pub mod upload;

pub use counters::{DownloadCounter, FlowStats};
pub use initiator::{Initiators, Reply};
pub use peers::PeerPlan;
pub use report::Report;
pub use traffic::{PacketSize, SizeSchedule, Stamp};
pub use upload::Uploader;

/// The inner MTU the load pads to (wg-quick's default), as the gateway's peers would.
pub const INNER_MTU: usize = 1420;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("the prefix {0} has room for {1} peers, fewer than the {2} asked for")]
    PrefixTooSmall(String, u64, u64),
    #[error("packet size must be 64 to 1420 bytes or 'imix', not '{0}'")]
    BadSize(String),
    #[error("'{0}' is not an IPv4 prefix (such as 10.128.0.0/9)")]
    BadPrefix(String),
}
