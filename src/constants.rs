//! Protocol constants, named as in the WireGuard paper (section 6) and the kernel's messages.h.

use std::time::Duration;

pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
pub const LABEL_MAC1: &[u8] = b"mac1----";
pub const LABEL_COOKIE: &[u8] = b"cookie--";

pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
/// Upper bound of the random jitter added to handshake timers (kernel: REKEY_TIMEOUT_JITTER_MAX_JIFFIES).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(334);
/// Retries before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
pub const MAX_TIMER_HANDSHAKES: u32 = (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// A responder accepts at most this many initiations per second from one peer (kernel: INITIATIONS_PER_SECOND).
pub const INITIATIONS_PER_SECOND: u32 = 50;
/// Packets kept for a peer while its handshake is in flight (kernel: MAX_STAGED_PACKETS).
pub const MAX_STAGED_PACKETS: usize = 128;

pub const KEY_LEN: usize = 32;
pub const AEAD_TAG_LEN: usize = 16;
pub const MAC_LEN: usize = 16;
pub const TAI64N_LEN: usize = 12;
pub const COOKIE_LEN: usize = 16;
pub const COOKIE_NONCE_LEN: usize = 24;
/// Transport plaintext is padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;
/// The TUN's MTU until configured: 1500 less the outer IPv6 and UDP headers and WireGuard's
/// own 32 bytes, as wg-quick and wireguard-go use.
pub const DEFAULT_MTU: u32 = 1420;

/// Capacity of the control thread's handshake queue (the kernel's MAX_QUEUED_INCOMING_HANDSHAKES).
pub const HANDSHAKE_QUEUE: usize = 4096;
/// "Under load" from this many queued handshake messages, 1/8 of the queue, as the kernel
/// decides.
pub const UNDER_LOAD_QUEUED: usize = HANDSHAKE_QUEUE / 8;
/// How long the device stays under load after the last sign of it (the kernel: one second).
pub const UNDER_LOAD_STICKY: Duration = Duration::from_secs(1);
