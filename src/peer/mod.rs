//! Per-peer protocol state driven by an injected clock: the timers, and what the control
//! thread keeps per peer.
#![forbid(unsafe_code)]

pub mod state;
pub mod timers;

pub use state::PeerState;
pub use timers::{TimerAction, Timers};
