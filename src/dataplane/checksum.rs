//! The Internet checksum (RFC 1071), one implementation for IP headers, ICMP and the TCP/UDP
//! checksums that segmentation and coalescing rewrite.

/// One's complement sum of `data` added to `initial`, not yet folded. Summed four bytes at a
/// time; a short tail is zero-padded, which gives the same folded result as 16-bit words.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u32::from_be_bytes(tail) as u64
}

/// Folds a sum to 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum over `parts` back to back; every part but the last has an even length (a
/// pseudo-header, then the data).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    !fold(parts.iter().fold(0, |acc, p| sum(p, acc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_and_odd_lengths() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        assert_eq!(fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)), 0xddf2);
        // An odd tail counts as a word padded with a zero byte.
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
        assert_eq!(checksum(&[&[0x12, 0x34], &[0x56]]), !(0x1234u16 + 0x5600));
    }
}
