//! Sans-IO handshake layer: wire messages, Noise_IKpsk2, cookies and TAI64N.
#![forbid(unsafe_code)]

pub mod cookie;
pub mod handshake;
pub mod messages;
pub mod primitives;
pub mod ratelimiter;
pub mod tai64n;

pub use cookie::{CookieChecker, CookieError, CookieGenerator};
pub use handshake::{consume_initiation, Handshake, HandshakeError, InitiationForUs, SessionKeys, StaticIdentity};
pub use messages::{CookieReply, Initiation, Malformed, Packet, Response, TransportHeader};
pub use tai64n::Tai64N;
