//! Thinning chosen sources in the kernel: a classic BPF socket filter (SO_ATTACH_FILTER) that
//! keeps one receive in N from each listed source (an address and port, or an address prefix
//! with any port), and drops the rest before they are queued to the socket. The kernel runs it
//! once per receive (a GRO train counts as one), in the sender's softirq, so what it drops
//! costs this process nothing: no queueing, no copy, no wake-up. Datagrams that carry a nonzero word where the caller says a proof would
//! sit are always kept. This module knows addresses, ports and byte offsets, not what they mean.

use std::io;
use std::net::{IpAddr, SocketAddr};

/// Kept whatever their source: datagrams whose first payload byte is `first_byte` and that
/// have a nonzero 32-bit word at any of `words` (payload offsets, multiples of 4).
#[derive(Clone, Copy, Debug)]
pub struct Spare {
    pub first_byte: u8,
    pub words: (u32, u32),
}

/// A source to thin: datagrams whose source address starts with the first `words` 32-bit
/// words of `ip` (v4-mapped addresses as IPv4: 1 word; IPv6: up to 4) and, if given, come
/// from `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub ip: IpAddr,
    pub words: u8,
    pub port: Option<u16>,
}

impl Source {
    /// Exactly this address and port.
    pub fn endpoint(addr: SocketAddr) -> Source {
        let addr = crate::addr::canonical(addr);
        Source { ip: addr.ip(), words: if addr.is_ipv4() { 1 } else { 4 }, port: Some(addr.port()) }
    }

    /// Every port of an IPv4 address, or of an IPv6 /64.
    pub fn address(ip: IpAddr) -> Source {
        let ip = ip.to_canonical();
        Source { ip, words: if ip.is_ipv4() { 1 } else { 2 }, port: None }
    }
}

/// Most sources one filter lists (its jumps must stay within 255 instructions).
pub const MAX_THINNED: usize = 8;

const UDP_HEADER: u32 = 8;
const ETH_P_IPV6: u32 = 0x86dd;
const KEEP_ALL: u32 = u32::MAX;

#[derive(Clone, Copy)]
enum Jump {
    Next,
    To(usize),
}

/// One instruction before its jumps are resolved to offsets.
struct Op {
    code: u32,
    jt: Jump,
    jf: Jump,
    k: u32,
}

/// A tiny assembler: labels are indices into `at`, filled in as the code reaches them.
#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
    at: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.at.push(None);
        self.at.len() - 1
    }
    fn here(&mut self, label: usize) {
        self.at[label] = Some(self.ops.len());
    }
    fn op(&mut self, code: u32, k: u32) {
        self.ops.push(Op { code, jt: Jump::Next, jf: Jump::Next, k });
    }
    fn jeq(&mut self, k: u32, jt: Jump, jf: Jump) {
        self.ops.push(Op { code: libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, jt, jf, k });
    }
    fn goto(&mut self, label: usize) {
        // `ja` takes a 32-bit offset, resolved like the others.
        self.ops.push(Op { code: libc::BPF_JMP | libc::BPF_JA, jt: Jump::To(label), jf: Jump::Next, k: 0 });
    }
    fn load_word(&mut self, offset: u32) {
        self.op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    }
    fn ret(&mut self, k: u32) {
        self.op(libc::BPF_RET | libc::BPF_K, k);
    }

    fn finish(self) -> io::Result<Vec<libc::sock_filter>> {
        let too_far = || io::Error::new(io::ErrorKind::InvalidInput, "filter jump out of range");
        let offset = |from: usize, jump: Jump| -> io::Result<u32> {
            match jump {
                Jump::Next => Ok(0),
                Jump::To(label) => {
                    let to = self.at[label].ok_or_else(too_far)?;
                    to.checked_sub(from + 1).map(|d| d as u32).ok_or_else(too_far)
                }
            }
        };
        let mut program = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            let insn = if op.code == libc::BPF_JMP | libc::BPF_JA {
                libc::sock_filter { code: op.code as u16, jt: 0, jf: 0, k: offset(i, op.jt)? }
            } else {
                let jt = u8::try_from(offset(i, op.jt)?).map_err(|_| too_far())?;
                let jf = u8::try_from(offset(i, op.jf)?).map_err(|_| too_far())?;
                libc::sock_filter { code: op.code as u16, jt, jf, k: op.k }
            };
            program.push(insn);
        }
        Ok(program)
    }
}

/// The filter that keeps one receive in `keep_one_in` (a power of two; 0 keeps none) from each
/// of `sources` and every receive from elsewhere, and always keeps the `spares`. Offset 0 of a
/// UDP socket filter is the UDP header.
pub fn thin_program(sources: &[Source], keep_one_in: u32, spares: &[Spare]) -> io::Result<Vec<libc::sock_filter>> {
    if sources.len() > MAX_THINNED || (keep_one_in != 0 && !keep_one_in.is_power_of_two()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many sources, or not a power of two"));
    }
    let net = libc::SKF_NET_OFF as u32;
    let mut asm = Asm::default();
    let (v6, matched, keep) = (asm.label(), asm.label(), asm.label());
    // X = source port; then the family from the skb's protocol.
    asm.op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0);
    asm.op(libc::BPF_MISC | libc::BPF_TAX, 0);
    asm.op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32);
    asm.jeq(ETH_P_IPV6, Jump::To(v6), Jump::Next);
    // IPv4: the source address at 12 of the network header; IPv6: at 8..24.
    for family_v6 in [false, true] {
        if family_v6 {
            asm.here(v6);
        }
        for source in sources {
            let octets: Vec<u8> = match source.ip.to_canonical() {
                IpAddr::V4(ip) if !family_v6 => ip.octets().to_vec(),
                IpAddr::V6(ip) if family_v6 => ip.octets().to_vec(),
                _ => continue,
            };
            let at = if family_v6 { 8 } else { 12 };
            let next = asm.label();
            for (i, word) in octets.chunks_exact(4).take(usize::from(source.words.max(1))).enumerate() {
                asm.load_word(net + at + 4 * i as u32);
                asm.jeq(u32::from_be_bytes([word[0], word[1], word[2], word[3]]), Jump::Next, Jump::To(next));
            }
            match source.port {
                Some(port) => {
                    asm.op(libc::BPF_MISC | libc::BPF_TXA, 0);
                    asm.jeq(u32::from(port), Jump::To(matched), Jump::Next);
                }
                None => asm.goto(matched),
            }
            asm.here(next);
        }
        asm.ret(KEEP_ALL);
    }
    // A listed source: spared if it carries a proof, else sampled. A load past the end of a
    // short datagram ends the program with "drop", which suits a message too short to be one.
    asm.here(matched);
    let sample = asm.label();
    for spare in spares {
        let other = asm.label();
        asm.op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, UDP_HEADER);
        asm.jeq(u32::from(spare.first_byte), Jump::Next, Jump::To(other));
        for at in (spare.words.0..spare.words.1).step_by(4) {
            asm.load_word(UDP_HEADER + at);
            asm.jeq(0, Jump::Next, Jump::To(keep));
        }
        asm.goto(sample);
        asm.here(other);
    }
    asm.here(sample);
    if keep_one_in == 0 {
        asm.ret(0);
    } else {
        asm.op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32);
        asm.op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, keep_one_in - 1);
        asm.jeq(0, Jump::To(keep), Jump::Next);
        asm.ret(0);
    }
    asm.here(keep);
    asm.ret(KEEP_ALL);
    asm.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_filter_assembles_within_its_jumps() {
        let sources: Vec<Source> = (0..MAX_THINNED as u16)
            .map(|i| Source::endpoint(SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, i], 4000 + i))))
            .collect();
        let spares = [Spare { first_byte: 1, words: (132, 148) }, Spare { first_byte: 2, words: (76, 92) }];
        let program = thin_program(&sources, 16, &spares).unwrap();
        assert!(program.len() < 255, "{}", program.len());
        assert!(thin_program(&[sources[0]; MAX_THINNED + 1], 16, &spares).is_err());
        assert!(thin_program(&sources, 12, &spares).is_err());
    }

    #[test]
    fn sources_say_how_much_of_the_address_counts() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:4000".parse().unwrap();
        assert_eq!(Source::endpoint(mapped), Source { ip: "192.0.2.1".parse().unwrap(), words: 1, port: Some(4000) });
        assert_eq!(Source::address("2001:db8::1".parse().unwrap()).words, 2, "a /64");
        assert_eq!(Source::address("::ffff:192.0.2.1".parse().unwrap()).words, 1);
    }
}
