//! Inner packets, free of I/O: header layouts, checksums, parsing for routing and ICMP
//! errors, and the offload split and coalesce.

pub mod checksum;
pub mod header;
pub mod ip;
pub mod offload;
