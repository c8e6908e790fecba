//! Per-peer protocol state driven by an injected clock.
#![forbid(unsafe_code)]

pub mod timers;

pub use timers::{TimerAction, Timers};
