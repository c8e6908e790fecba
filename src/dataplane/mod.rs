//! The workers: TUN -> seal -> UDP, and UDP -> open -> check -> TUN. They read the published
//! routing snapshot, index table and keypairs through atomics and never take a lock.

pub mod ip;
pub mod offload;
pub mod rx;
pub mod tx;

/// Datagrams per sendmmsg/recvmmsg call (wireguard-go's IdealBatchSize).
pub const BATCH: usize = 128;
/// Buffer per datagram: the largest inner packet we take plus WireGuard's 32 bytes and padding.
pub const SLOT: usize = 65_536 + 64;
