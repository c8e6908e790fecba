//! The Internet checksum (RFC 1071), one implementation for IP headers, ICMP and the TCP/UDP
//! checksums that segmentation and coalescing rewrite.

/// One's complement sum of `data` added to `initial`, not yet folded. The sum does not depend
/// on byte order (RFC 1071 section 2(B)), so words are added in the machine's order, four
/// bytes at a time into 64 bits (a loop the compiler vectorises; no carries to handle below
/// 2^32 words), and the folded result is turned to network order once. A short tail is
/// zero-padded, which gives the same folded result as 16-bit words.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = 0u64;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    initial + u64::from(u16::from_be(fold(acc)))
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

    /// The sum word by word in network order, as RFC 1071 states it.
    fn by_words(data: &[u8]) -> u16 {
        let acc = data.chunks(2).map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
        fold(acc)
    }

    #[test]
    fn machine_order_sum_equals_the_network_order_one() {
        let mut x = 0x9e37_79b9u32;
        let data: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in (0..70).chain([1379, 1380, 1381, 2999, 3000]) {
            let part = &data[..len];
            // 0 and 0xffff are the same one's complement number.
            let ours = fold(sum(part, 0)) % 0xffff;
            assert_eq!(ours, by_words(part) % 0xffff, "length {len}");
            assert_eq!(fold(sum(part, 0x1_2345)) % 0xffff, fold(u64::from(by_words(part)) + 0x1_2345) % 0xffff);
        }
        assert_eq!(fold(sum(&[0xff; 64 * 1024], 0)) % 0xffff, 0);
    }
}
