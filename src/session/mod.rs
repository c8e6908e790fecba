//! Transport sessions: keypairs, nonces and the replay window.
#![forbid(unsafe_code)]

pub mod keypair;
pub mod replay;

pub use keypair::{Keypair, Keypairs, SessionError};
pub use replay::ReplayWindow;
