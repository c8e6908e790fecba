//! The receive replay window (RFC 6479 style, as the kernel's counter.c), lock-free.
//!
//! 8192 bits of history, of which 8128 are a usable window, exactly the kernel's
//! COUNTER_BITS_TOTAL. A counter is accepted once; counters older than the window are refused.
//! The check runs after authentication, so only genuine packets move the window.
//!
//! Two workers can open packets of one keypair at once (SO_REUSEPORT picks the socket by source
//! port, so a replay from another port lands on another worker). Updates are therefore
//! serialised by a lock per keypair, as the kernel does under its spinlock: the answer of
//! `check_and_update` is exact under any concurrency. The cheap pre-check `may_accept` reads
//! the atomics without the lock; it is only a hint, and the update decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::constants::REJECT_AFTER_MESSAGES;

const BITS_PER_WORD: u64 = 64;
pub const COUNTER_BITS_TOTAL: u64 = 8192;
const WORDS: usize = (COUNTER_BITS_TOTAL / BITS_PER_WORD) as usize;
pub const COUNTER_WINDOW_SIZE: u64 = COUNTER_BITS_TOTAL - BITS_PER_WORD;

pub struct ReplayWindow {
    /// One more than the greatest counter accepted so far (0: none yet).
    next: AtomicU64,
    bitmap: [AtomicU64; WORDS],
    /// Held while the window slides and a bit is set.
    update: Mutex<()>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: AtomicU64::new(0),
            bitmap: std::array::from_fn(|_| AtomicU64::new(0)),
            update: Mutex::new(()),
        }
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
        // A poisoned lock only means another thread panicked while holding it; the window's
        // words are always consistent, so go on.
        let _serial = self.update.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Two threads offer the same counters, each jump crossing a word of the window so that
    /// every accept slides it, and each thread at once resubmits what it saw accepted: every
    /// counter must be accepted exactly once. (Without the update lock, one thread's slide
    /// clears a bit the other just set, and a duplicate gets through.)
    #[test]
    fn exact_under_concurrency() {
        use std::sync::atomic::AtomicU32;
        use std::sync::{Arc, Barrier};
        const STEPS: u64 = 300_000;
        const JUMP: u64 = 70;
        let w = Arc::new(ReplayWindow::default());
        let accepted: Arc<Vec<AtomicU32>> = Arc::new((0..STEPS).map(|_| AtomicU32::new(0)).collect());
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (w, accepted, start) = (w.clone(), accepted.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let offer = |k: u64| {
                        if w.check_and_update(k * JUMP) {
                            accepted[k as usize].fetch_add(1, Ordering::Relaxed);
                        }
                    };
                    for k in 0..STEPS {
                        offer(k);
                        for back in 1..4 {
                            offer(k.saturating_sub(back));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let twice = accepted.iter().filter(|a| a.load(Ordering::Relaxed) > 1).count();
        let never = accepted.iter().filter(|a| a.load(Ordering::Relaxed) == 0).count();
        assert_eq!((twice, never), (0, 0), "counters accepted twice, and never");
    }
}
