//! wgturbo: a userspace WireGuard for Linux.
//!
//! The protocol core (`noise`, `session`, `peer`, `routing`, `config`) is sans-IO: it takes
//! bytes and a clock and returns bytes and actions. `io` holds every syscall; `device` and
//! `dataplane` join the two. Unsafe code is denied everywhere but in `io`.
#![deny(unsafe_code)]

pub mod addr;
pub mod config;
pub mod constants;
pub mod dataplane;
pub mod device;
pub mod io;
pub mod keys;
pub mod load;
pub mod metrics;
pub mod noise;
pub mod peer;
pub mod routing;
pub mod session;
