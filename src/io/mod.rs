//! Everything that talks to the kernel: TUN, UDP batches, interface ioctls. Knows nothing of
//! WireGuard. All of the crate's `unsafe` lives here, each block with its reason.

pub mod tun;
pub mod udp;
pub mod vnet;

pub use tun::Tun;
pub use udp::{RecvBatch, SendBatch, UdpSocket};
