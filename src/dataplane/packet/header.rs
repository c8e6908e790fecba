//! Where the fields of IPv4, IPv6, TCP, UDP and ICMP headers sit (RFC 791, 8200, 9293, 768,
//! 792, 4443), so packet code names a field instead of an offset.

use std::ops::Range;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// IPv4 header fields.
pub mod v4 {
    use super::Range;
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VERSION_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const ID: Range<usize> = 4..6;
    /// Flags (DF 0x40 in the first byte) and fragment offset.
    pub const FLAGS_FRAGMENT: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
    /// Source and destination together, as the pseudo-header takes them.
    pub const ADDRS: Range<usize> = 12..20;
    pub const MIN_LEN: usize = 20;
    /// Version 4, a 20-byte header.
    pub const VERSION_IHL_PLAIN: u8 = 0x45;
    /// The "more fragments" flag and the offset: nonzero for a fragment.
    pub const FRAGMENT_MASK: u16 = 0x3fff;
    pub const DONT_FRAGMENT: u8 = 0x40;
}

/// IPv6 header fields.
pub mod v6 {
    use super::Range;
    pub const VERSION: usize = 0;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
    pub const ADDRS: Range<usize> = 8..40;
    pub const LEN: usize = 40;
    /// Version 6, traffic class and flow label 0 (first byte).
    pub const VERSION_BYTE: u8 = 0x60;
}

/// ICMP and ICMPv6 header fields (relative to the ICMP header).
pub mod icmp {
    use super::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const LEN: usize = 8;
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    pub const V4_HOST_UNREACHABLE: u8 = 1;
    /// ICMPv4 types that are errors (never answered with an error).
    pub const V4_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    pub const V6_ADDRESS_UNREACHABLE: u8 = 3;
    /// ICMPv6 types below this are errors.
    pub const V6_FIRST_INFORMATIONAL: u8 = 128;
}

/// The version nibble of an IP packet's first byte.
pub fn version(first_byte: u8) -> u8 {
    first_byte >> 4
}

/// An IPv4 header's length in bytes, from its first byte.
pub fn v4_header_len(first_byte: u8) -> usize {
    usize::from(first_byte & 0x0f) * 4
}

/// TCP header fields (relative to the TCP header).
pub mod tcp {
    use super::Range;
    pub const PORTS: Range<usize> = 0..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    /// Data offset in 32-bit words (high nibble).
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: usize = 16;
    /// Where options start: everything from here to the header's end must match to coalesce.
    pub const OPTIONS: usize = 20;
    pub const MIN_LEN: usize = 20;
    pub const FIN: u8 = 0x01;
    pub const PSH: u8 = 0x08;
    pub const ACK_FLAG: u8 = 0x10;
    pub const CWR: u8 = 0x80;
}

/// UDP header fields (relative to the UDP header).
pub mod udp {
    use super::Range;
    pub const PORTS: Range<usize> = 0..4;
    pub const LEN: Range<usize> = 4..6;
    pub const CHECKSUM: usize = 6;
    pub const HEADER_LEN: usize = 8;
}

/// `r` moved `by` bytes along: a field of a header that starts at `by`.
pub fn at(by: usize, r: Range<usize>) -> Range<usize> {
    by + r.start..by + r.end
}
