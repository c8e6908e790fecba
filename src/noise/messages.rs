//! Wire layout of the four WireGuard messages. One `parse` and one `to_bytes` per type; all
//! offsets live here.

use crate::constants::{AEAD_TAG_LEN, COOKIE_LEN, COOKIE_NONCE_LEN, KEY_LEN, MAC_LEN, TAI64N_LEN};

pub const MESSAGE_INITIATION: u32 = 1;
pub const MESSAGE_RESPONSE: u32 = 2;
pub const MESSAGE_COOKIE_REPLY: u32 = 3;
pub const MESSAGE_TRANSPORT: u32 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Smallest transport message: header plus the tag of an empty (keepalive) plaintext.
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;

const _: () =
    assert!(INITIATION_LEN == 4 + 4 + KEY_LEN + (KEY_LEN + AEAD_TAG_LEN) + (TAI64N_LEN + AEAD_TAG_LEN) + 2 * MAC_LEN);
const _: () = assert!(RESPONSE_LEN == 4 + 4 + 4 + KEY_LEN + AEAD_TAG_LEN + 2 * MAC_LEN);
const _: () = assert!(COOKIE_REPLY_LEN == 4 + 4 + COOKIE_NONCE_LEN + COOKIE_LEN + AEAD_TAG_LEN);

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum Malformed {
    #[error("packet shorter than a message header ({0} bytes)")]
    TooShort(usize),
    #[error("unknown message type {0:#x}")]
    UnknownType(u32),
    #[error("{kind} message has {got} bytes, expected {expected}")]
    WrongSize { kind: &'static str, expected: usize, got: usize },
    #[error("transport message has {0} bytes, below the 32-byte minimum")]
    TransportTooShort(usize),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

fn exact(b: &[u8], kind: &'static str, expected: usize) -> Result<(), Malformed> {
    if b.len() == expected {
        Ok(())
    } else {
        Err(Malformed::WrongSize { kind, expected, got: b.len() })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Initiation {
    pub sender: u32,
    pub ephemeral: [u8; KEY_LEN],
    pub encrypted_static: [u8; KEY_LEN + AEAD_TAG_LEN],
    pub encrypted_timestamp: [u8; TAI64N_LEN + AEAD_TAG_LEN],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl Initiation {
    pub const MAC1_OFFSET: usize = 116;
    pub const MAC2_OFFSET: usize = 132;

    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        exact(b, "initiation", INITIATION_LEN)?;
        Ok(Initiation {
            sender: le32(b, 4),
            ephemeral: array(b, 8),
            encrypted_static: array(b, 40),
            encrypted_timestamp: array(b, 88),
            mac1: array(b, 116),
            mac2: array(b, 132),
        })
    }
    pub fn to_bytes(&self) -> [u8; INITIATION_LEN] {
        let mut b = [0u8; INITIATION_LEN];
        b[..4].copy_from_slice(&MESSAGE_INITIATION.to_le_bytes());
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..40].copy_from_slice(&self.ephemeral);
        b[40..88].copy_from_slice(&self.encrypted_static);
        b[88..116].copy_from_slice(&self.encrypted_timestamp);
        b[116..132].copy_from_slice(&self.mac1);
        b[132..148].copy_from_slice(&self.mac2);
        b
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub sender: u32,
    pub receiver: u32,
    pub ephemeral: [u8; KEY_LEN],
    pub encrypted_nothing: [u8; AEAD_TAG_LEN],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl Response {
    pub const MAC1_OFFSET: usize = 60;
    pub const MAC2_OFFSET: usize = 76;

    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        exact(b, "response", RESPONSE_LEN)?;
        Ok(Response {
            sender: le32(b, 4),
            receiver: le32(b, 8),
            ephemeral: array(b, 12),
            encrypted_nothing: array(b, 44),
            mac1: array(b, 60),
            mac2: array(b, 76),
        })
    }
    pub fn to_bytes(&self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[..4].copy_from_slice(&MESSAGE_RESPONSE.to_le_bytes());
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..12].copy_from_slice(&self.receiver.to_le_bytes());
        b[12..44].copy_from_slice(&self.ephemeral);
        b[44..60].copy_from_slice(&self.encrypted_nothing);
        b[60..76].copy_from_slice(&self.mac1);
        b[76..92].copy_from_slice(&self.mac2);
        b
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieReply {
    pub receiver: u32,
    pub nonce: [u8; COOKIE_NONCE_LEN],
    pub encrypted_cookie: [u8; COOKIE_LEN + AEAD_TAG_LEN],
}

impl CookieReply {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        exact(b, "cookie reply", COOKIE_REPLY_LEN)?;
        Ok(CookieReply { receiver: le32(b, 4), nonce: array(b, 8), encrypted_cookie: array(b, 32) })
    }
    pub fn to_bytes(&self) -> [u8; COOKIE_REPLY_LEN] {
        let mut b = [0u8; COOKIE_REPLY_LEN];
        b[..4].copy_from_slice(&MESSAGE_COOKIE_REPLY.to_le_bytes());
        b[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        b[8..32].copy_from_slice(&self.nonce);
        b[32..64].copy_from_slice(&self.encrypted_cookie);
        b
    }
}

/// The fixed part of a transport message; the ciphertext follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    pub receiver: u32,
    pub counter: u64,
}

impl TransportHeader {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < TRANSPORT_MIN_LEN {
            return Err(Malformed::TransportTooShort(b.len()));
        }
        let counter = u64::from_le_bytes(array(b, 8));
        Ok(TransportHeader { receiver: le32(b, 4), counter })
    }
    pub fn write(&self, out: &mut [u8; TRANSPORT_HEADER_LEN]) {
        out[..4].copy_from_slice(&MESSAGE_TRANSPORT.to_le_bytes());
        out[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        out[8..16].copy_from_slice(&self.counter.to_le_bytes());
    }
}

/// A classified datagram, borrowed from the receive buffer.
#[derive(Debug)]
pub enum Packet<'a> {
    Initiation(Initiation),
    Response(Response),
    CookieReply(CookieReply),
    Transport { header: TransportHeader, ciphertext: &'a [u8] },
}

impl<'a> Packet<'a> {
    /// Classifies a datagram by its 32-bit little-endian type (the three reserved bytes must be
    /// zero, as in the kernel and wireguard-go) and checks its size.
    pub fn parse(b: &'a [u8]) -> Result<Self, Malformed> {
        if b.len() < 4 {
            return Err(Malformed::TooShort(b.len()));
        }
        match le32(b, 0) {
            MESSAGE_INITIATION => Initiation::parse(b).map(Packet::Initiation),
            MESSAGE_RESPONSE => Response::parse(b).map(Packet::Response),
            MESSAGE_COOKIE_REPLY => CookieReply::parse(b).map(Packet::CookieReply),
            MESSAGE_TRANSPORT => {
                let header = TransportHeader::parse(b)?;
                Ok(Packet::Transport { header, ciphertext: &b[TRANSPORT_HEADER_LEN..] })
            }
            other => Err(Malformed::UnknownType(other)),
        }
    }
}

/// Length a plaintext of `len` bytes is padded to: the next multiple of 16, but never past the
/// MTU (the kernel's rule, so a full-MTU packet is not padded into fragmentation).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let padded = len.div_ceil(crate::constants::PADDING_MULTIPLE) * crate::constants::PADDING_MULTIPLE;
    if len <= mtu {
        padded.min(mtu)
    } else {
        padded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips() {
        let i = Initiation {
            sender: 0x01020304,
            ephemeral: [1; 32],
            encrypted_static: [2; 48],
            encrypted_timestamp: [3; 28],
            mac1: [4; 16],
            mac2: [5; 16],
        };
        let b = i.to_bytes();
        assert_eq!(&b[..4], &[1, 0, 0, 0]);
        assert_eq!(Initiation::parse(&b).unwrap(), i);
        let r = Response {
            sender: 7,
            receiver: 9,
            ephemeral: [1; 32],
            encrypted_nothing: [2; 16],
            mac1: [3; 16],
            mac2: [4; 16],
        };
        assert_eq!(Response::parse(&r.to_bytes()).unwrap(), r);
        let c = CookieReply { receiver: 5, nonce: [6; 24], encrypted_cookie: [7; 32] };
        assert_eq!(CookieReply::parse(&c.to_bytes()).unwrap(), c);
        let mut h = [0u8; 32];
        let mut head = [0u8; 16];
        TransportHeader { receiver: 3, counter: 1 << 40 }.write(&mut head);
        h[..16].copy_from_slice(&head);
        match Packet::parse(&h).unwrap() {
            Packet::Transport { header, ciphertext } => {
                assert_eq!(header, TransportHeader { receiver: 3, counter: 1 << 40 });
                assert_eq!(ciphertext.len(), 16);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_malformed_class() {
        assert_eq!(Packet::parse(&[]).unwrap_err(), Malformed::TooShort(0));
        assert_eq!(Packet::parse(&[1, 0, 0]).unwrap_err(), Malformed::TooShort(3));
        assert_eq!(Packet::parse(&[9, 0, 0, 0]).unwrap_err(), Malformed::UnknownType(9));
        // Non-zero reserved bytes make an unknown type.
        let mut init = [0u8; 148];
        init[0] = 1;
        init[2] = 1;
        assert_eq!(Packet::parse(&init).unwrap_err(), Malformed::UnknownType(0x10001));
        for (ty, len, kind) in [(1u8, 148usize, "initiation"), (2, 92, "response"), (3, 64, "cookie reply")] {
            for got in [4, len - 1, len + 1, 2000] {
                let mut b = vec![0u8; got];
                b[0] = ty;
                assert_eq!(Packet::parse(&b).unwrap_err(), Malformed::WrongSize { kind, expected: len, got });
            }
        }
        for got in [4, 16, 31] {
            let mut b = vec![0u8; got];
            b[0] = 4;
            assert_eq!(Packet::parse(&b).unwrap_err(), Malformed::TransportTooShort(got));
        }
    }

    #[test]
    fn padding() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1410, 1420), 1420);
        assert_eq!(padded_len(1500, 1420), 1504);
    }
}
