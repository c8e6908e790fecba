//! The receive replay window (RFC 6479 style, as the kernel's counter.c), lock-free.
//!
//! 8192 bits of history, of which 8128 are a usable window, exactly the kernel's
//! COUNTER_BITS_TOTAL. A counter is accepted once; counters older than the window are refused.
//! The check runs after authentication, so only genuine packets move the window.
//!
//! With one receiver per keypair at a time (the dataplane's rule) the answers are exact.
//! Two threads racing on one keypair can at worst let a duplicate through during a window
//! slide; they can never make a fresh packet be refused, and nothing is undefined.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::constants::REJECT_AFTER_MESSAGES;

const BITS_PER_WORD: u64 = 64;
pub const COUNTER_BITS_TOTAL: u64 = 8192;
const WORDS: usize = (COUNTER_BITS_TOTAL / BITS_PER_WORD) as usize;
pub const COUNTER_WINDOW_SIZE: u64 = COUNTER_BITS_TOTAL - BITS_PER_WORD;

pub struct ReplayWindow {
    /// One more than the greatest counter accepted so far (0: none yet).
    next: AtomicU64,
    bitmap: [AtomicU64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { next: AtomicU64::new(0), bitmap: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl ReplayWindow {
    /// Would `counter` be accepted? A cheap check before spending a decryption on it.
    pub fn may_accept(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let their = counter + 1;
        let next = self.next.load(Ordering::Acquire);
        if their + COUNTER_WINDOW_SIZE < next {
            return false;
        }
        if their > next {
            return true;
        }
        let word = &self.bitmap[((their / BITS_PER_WORD) as usize) % WORDS];
        word.load(Ordering::Relaxed) & (1 << (their % BITS_PER_WORD)) == 0
    }

    /// Accepts `counter` once: true the first time it is seen inside the window.
    pub fn check_and_update(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let their = counter + 1;
        let next = self.next.load(Ordering::Acquire);
        if their + COUNTER_WINDOW_SIZE < next {
            return false;
        }
        let index = their / BITS_PER_WORD;
        if their > next {
            // Slide: clear the words between the old top and the new one.
            let current = next / BITS_PER_WORD;
            let top = (index - current).min(WORDS as u64);
            for i in 1..=top {
                self.bitmap[((current + i) as usize) % WORDS].store(0, Ordering::Relaxed);
            }
            self.next.fetch_max(their, Ordering::AcqRel);
        }
        let bit = 1u64 << (their % BITS_PER_WORD);
        let old = self.bitmap[(index as usize) % WORDS].fetch_or(bit, Ordering::AcqRel);
        old & bit == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    /// The kernel's selftest/counter.c table, case by case.
    #[test]
    fn kernel_counter_selftest() {
        const T_LIM: u64 = COUNTER_WINDOW_SIZE + 1;
        let w = ReplayWindow::default();
        let table: [(u64, bool); 34] = [
            (0, true),
            (1, true),
            (1, false),
            (9, true),
            (8, true),
            (7, true),
            (7, false),
            (T_LIM, true),
            (T_LIM - 1, true),
            (T_LIM - 1, false),
            (T_LIM - 2, true),
            (2, true),
            (2, false),
            (T_LIM + 16, true),
            (3, false),
            (T_LIM + 16, false),
            (T_LIM * 4, true),
            (T_LIM * 4 - (T_LIM - 1), true),
            (10, false),
            (T_LIM * 4 - T_LIM, false),
            (T_LIM * 4 - (T_LIM + 1), false),
            (T_LIM * 4 - (T_LIM - 2), true),
            (T_LIM * 4 + 1 - T_LIM, false),
            (0, false),
            (REJECT_AFTER_MESSAGES, false),
            (REJECT_AFTER_MESSAGES - 1, true),
            (REJECT_AFTER_MESSAGES, false),
            (REJECT_AFTER_MESSAGES - 1, false),
            (REJECT_AFTER_MESSAGES - 2, true),
            (REJECT_AFTER_MESSAGES + 1, false),
            (REJECT_AFTER_MESSAGES + 2, false),
            (REJECT_AFTER_MESSAGES - 2, false),
            (REJECT_AFTER_MESSAGES - 3, true),
            (0, false),
        ];
        for (i, (n, expect)) in table.into_iter().enumerate() {
            assert_eq!(w.check_and_update(n), expect, "case {} (counter {n})", i + 1);
        }

        // The kernel's bulk cases.
        let w = ReplayWindow::default();
        for i in 1..=COUNTER_WINDOW_SIZE {
            assert!(w.check_and_update(i), "{i}");
        }
        assert!(w.check_and_update(0));
        assert!(!w.check_and_update(0));
        let w = ReplayWindow::default();
        for i in 2..=COUNTER_WINDOW_SIZE + 1 {
            assert!(w.check_and_update(i), "{i}");
        }
        assert!(w.check_and_update(1));
        assert!(!w.check_and_update(0));
        let w = ReplayWindow::default();
        for i in (0..=COUNTER_WINDOW_SIZE).rev() {
            assert!(w.check_and_update(i), "{i}");
        }
        let w = ReplayWindow::default();
        for i in (1..=COUNTER_WINDOW_SIZE + 1).rev() {
            assert!(w.check_and_update(i), "{i}");
        }
        assert!(!w.check_and_update(0));
        let w = ReplayWindow::default();
        for i in (1..=COUNTER_WINDOW_SIZE).rev() {
            assert!(w.check_and_update(i), "{i}");
        }
        assert!(w.check_and_update(COUNTER_WINDOW_SIZE + 1));
        assert!(!w.check_and_update(0));
    }

    /// Random reorderings, duplicates and jumps against a model that keeps every counter.
    #[test]
    fn matches_naive_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20 {
            let w = ReplayWindow::default();
            let mut seen = HashSet::new();
            let mut greatest: Option<u64> = None;
            let mut base = 0u64;
            for _ in 0..20_000 {
                let r: u32 = rng.gen_range(0..100);
                let counter = match r {
                    0..=69 => base + rng.gen_range(0..200),
                    70..=84 => base.saturating_sub(rng.gen_range(0..9000)),
                    85..=94 => *seen.iter().next().unwrap_or(&0),
                    _ => base + rng.gen_range(0..20_000),
                };
                base = base.max(counter.saturating_sub(100));
                let in_window = greatest.is_none_or(|g| counter + COUNTER_WINDOW_SIZE >= g);
                let expect = in_window && !seen.contains(&counter);
                assert_eq!(w.may_accept(counter), expect, "may_accept {counter}");
                assert_eq!(w.check_and_update(counter), expect, "counter {counter} greatest {greatest:?}");
                if expect {
                    seen.insert(counter);
                    greatest = Some(greatest.map_or(counter, |g| g.max(counter)));
                }
            }
        }
    }
}
