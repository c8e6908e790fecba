//! The paper's per-peer timers (section 6), as the kernel's timers.c arranges them: one hook per
//! event, five deadlines, and `handle_timeout` returning what to send. No clock of its own.

use std::time::{Duration, Instant};

use crate::constants::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Send a handshake initiation; `retry` keeps the attempt count going.
    SendInitiation {
        retry: bool,
    },
    SendKeepalive,
    /// REKEY_ATTEMPT_TIME passed without an answer: drop the packets waiting for a session.
    GiveUp,
    /// Nothing new for 3 x REJECT_AFTER_TIME: erase all keypairs and handshake state.
    ZeroKeyMaterial,
}

#[derive(Debug, Clone)]
pub struct Timers {
    retransmit_handshake: Option<Instant>,
    send_keepalive: Option<Instant>,
    new_handshake: Option<Instant>,
    zero_key_material: Option<Instant>,
    persistent_keepalive: Option<Instant>,
    need_another_keepalive: bool,
    handshake_attempts: u32,
    persistent_keepalive_interval: u16,
    /// When we last sent a handshake message, an initiation or a response (the kernel's
    /// `last_sent_handshake`): the rate limit of initiations counts both.
    last_sent_handshake: Option<Instant>,
    rng: u64,
}

impl Timers {
    pub fn new(seed: u64) -> Self {
        Timers {
            retransmit_handshake: None,
            send_keepalive: None,
            new_handshake: None,
            zero_key_material: None,
            persistent_keepalive: None,
            need_another_keepalive: false,
            handshake_attempts: 0,
            persistent_keepalive_interval: 0,
            last_sent_handshake: None,
            rng: seed | 1,
        }
    }

    fn jitter(&mut self) -> Duration {
        // xorshift64: the jitter only has to desynchronise peers, not be secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_micros(self.rng % REKEY_TIMEOUT_JITTER_MAX.as_micros() as u64)
    }

    pub fn persistent_keepalive_interval(&self) -> u16 {
        self.persistent_keepalive_interval
    }

    /// Setting an interval sends a keepalive at once, as wg(8) users expect.
    pub fn set_persistent_keepalive(&mut self, interval: u16, now: Instant) {
        self.persistent_keepalive_interval = interval;
        self.persistent_keepalive = (interval > 0).then_some(now);
    }

    pub fn handshake_attempts(&self) -> u32 {
        self.handshake_attempts
    }

    // ---- event hooks (kernel: wg_timers_*) ----

    /// A data packet (not a keepalive) was sent.
    pub fn data_sent(&mut self, now: Instant) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter());
        }
    }

    /// A data packet (not a keepalive) arrived.
    pub fn data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// Any authenticated packet (data, keepalive, handshake) was sent: no keepalive is due.
    pub fn any_authenticated_packet_sent(&mut self, _now: Instant) {
        self.send_keepalive = None;
    }

    /// Any authenticated packet arrived: the peer is alive, no new handshake is needed.
    pub fn any_authenticated_packet_received(&mut self, _now: Instant) {
        self.new_handshake = None;
    }

    /// Any authenticated packet went either way: restart the persistent keepalive.
    pub fn any_authenticated_packet_traversal(&mut self, now: Instant) {
        if self.persistent_keepalive_interval > 0 {
            self.persistent_keepalive = Some(now + Duration::from_secs(self.persistent_keepalive_interval as u64));
        }
    }

    pub fn handshake_initiated(&mut self, now: Instant) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + self.jitter());
    }

    pub fn handshake_complete(&mut self, _now: Instant) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
    }

    pub fn session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
    }

    /// We answered the peer's initiation: a response counts as a sent handshake, so a
    /// responder with data of its own waiting does not cross it with an initiation.
    pub fn response_sent(&mut self, now: Instant) {
        self.last_sent_handshake = Some(now);
    }

    /// May an initiation go out now? At most one handshake message per REKEY_TIMEOUT, retry
    /// or not, as the kernel's `wg_packet_send_handshake_initiation`. A fresh trigger (not a
    /// retry: data to send, a key to refresh) resets the attempt count whether or not it may
    /// send now (the kernel's `wg_packet_send_queued_handshake_initiation`), so a peer whose
    /// traffic keeps flowing keeps trying and never gives up.
    pub fn permit_initiation(&mut self, retry: bool, now: Instant) -> bool {
        if !retry {
            self.handshake_attempts = 0;
        }
        if self.last_sent_handshake.is_some_and(|t| now.saturating_duration_since(t) < REKEY_TIMEOUT) {
            return false;
        }
        self.last_sent_handshake = Some(now);
        true
    }

    /// Stop everything (peer removed or keys zeroed).
    pub fn stop(&mut self) {
        self.retransmit_handshake = None;
        self.send_keepalive = None;
        self.new_handshake = None;
        self.zero_key_material = None;
        self.persistent_keepalive = None;
        self.need_another_keepalive = false;
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires every deadline at or before `now`, returning what the peer must do.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<TimerAction> {
        let mut actions = Vec::new();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.retransmit_handshake) {
            self.retransmit_handshake = None;
            // `>` as the kernel and wireguard-go: the first initiation and 19 retries, 20 in all.
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES {
                self.send_keepalive = None;
                actions.push(TimerAction::GiveUp);
                if self.zero_key_material.is_none() {
                    self.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
                }
            } else {
                self.handshake_attempts += 1;
                actions.push(TimerAction::SendInitiation { retry: true });
            }
        }
        if due(self.send_keepalive) {
            self.send_keepalive = None;
            actions.push(TimerAction::SendKeepalive);
            if self.need_another_keepalive {
                self.need_another_keepalive = false;
                self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
            }
        }
        if due(self.new_handshake) {
            self.new_handshake = None;
            actions.push(TimerAction::SendInitiation { retry: false });
        }
        if due(self.zero_key_material) {
            self.zero_key_material = None;
            actions.push(TimerAction::ZeroKeyMaterial);
        }
        if due(self.persistent_keepalive) {
            self.persistent_keepalive = None;
            if self.persistent_keepalive_interval > 0 && !actions.contains(&TimerAction::SendKeepalive) {
                actions.push(TimerAction::SendKeepalive);
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::REKEY_ATTEMPT_TIME;

    /// Steps a virtual clock from deadline to deadline, applying `on_action`, until `end`.
    fn run(
        t: &mut Timers,
        mut now: Instant,
        end: Instant,
        mut on_action: impl FnMut(&mut Timers, TimerAction, Instant),
    ) {
        while let Some(d) = t.next_deadline() {
            if d > end {
                break;
            }
            now = now.max(d);
            for a in t.handle_timeout(now) {
                on_action(t, a, now);
            }
        }
    }

    #[test]
    fn handshake_retries_with_jitter_then_gives_up() {
        let t0 = Instant::now();
        let mut t = Timers::new(99);
        assert!(t.permit_initiation(false, t0));
        t.handshake_initiated(t0);
        let mut sends = vec![t0];
        let mut gave_up_at = None;
        run(&mut t, t0, t0 + Duration::from_secs(600), |t, a, now| match a {
            TimerAction::SendInitiation { retry: true } => {
                assert!(t.permit_initiation(true, now));
                t.handshake_initiated(now);
                sends.push(now);
            }
            TimerAction::GiveUp => gave_up_at = Some(now),
            TimerAction::ZeroKeyMaterial => {}
            other => panic!("unexpected {other:?}"),
        });
        // One initiation plus MAX_TIMER_HANDSHAKES + 1 retries (20 in all, as the kernel's
        // `attempts > MAX_TIMER_HANDSHAKES`), each REKEY_TIMEOUT plus jitter apart.
        assert_eq!(sends.len(), 20);
        assert_eq!(sends.len() as u32, MAX_TIMER_HANDSHAKES + 2);
        for w in sends.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= REKEY_TIMEOUT && gap < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX, "{gap:?}");
        }
        // The give-up is the 20th expiry: 20 x REKEY_TIMEOUT plus jitter, after REKEY_ATTEMPT_TIME.
        let gave_up = gave_up_at.expect("gives up") - t0;
        let earliest = REKEY_TIMEOUT * 20;
        assert!(gave_up >= earliest && gave_up < earliest + REKEY_TIMEOUT_JITTER_MAX * 20, "{gave_up:?}");
        assert!(gave_up > REKEY_ATTEMPT_TIME);
    }

    #[test]
    fn completed_handshake_stops_retries() {
        let t0 = Instant::now();
        let mut t = Timers::new(1);
        t.handshake_initiated(t0);
        t.handshake_complete(t0 + Duration::from_millis(3));
        assert_eq!(t.next_deadline(), None);
        // Handshake messages are rate limited to one per REKEY_TIMEOUT, retries included.
        assert!(t.permit_initiation(false, t0));
        assert!(!t.permit_initiation(false, t0 + Duration::from_secs(1)));
        assert!(!t.permit_initiation(true, t0 + Duration::from_secs(1)));
        assert!(t.permit_initiation(true, t0 + REKEY_TIMEOUT));
        assert!(t.permit_initiation(false, t0 + REKEY_TIMEOUT * 2 + Duration::from_secs(1)));
    }

    /// A responder that just sent a response does not cross it with its own initiation.
    #[test]
    fn a_sent_response_counts_for_the_rate_limit() {
        let t0 = Instant::now();
        let mut t = Timers::new(5);
        t.response_sent(t0);
        assert!(!t.permit_initiation(false, t0 + Duration::from_millis(10)), "data queued right after answering");
        assert!(!t.permit_initiation(false, t0 + REKEY_TIMEOUT - Duration::from_millis(1)));
        assert!(t.permit_initiation(false, t0 + REKEY_TIMEOUT));
    }

    /// A peer whose traffic keeps flowing (a fresh trigger every second) while the other end
    /// never answers keeps retrying for ten minutes: each trigger resets the attempts.
    #[test]
    fn traffic_that_keeps_flowing_never_gives_up() {
        let t0 = Instant::now();
        let mut t = Timers::new(7);
        assert!(t.permit_initiation(false, t0));
        t.handshake_initiated(t0);
        let mut now = t0;
        let mut sends = 1;
        while now < t0 + Duration::from_secs(600) {
            now += Duration::from_millis(250);
            if (now - t0).as_millis().is_multiple_of(1000) && t.permit_initiation(false, now) {
                t.handshake_initiated(now);
                sends += 1;
            }
            for a in t.handle_timeout(now) {
                match a {
                    TimerAction::SendInitiation { retry } if t.permit_initiation(retry, now) => {
                        t.handshake_initiated(now);
                        sends += 1;
                    }
                    TimerAction::GiveUp => panic!("gave up at {:?} with traffic flowing", now - t0),
                    _ => {}
                }
            }
            assert!(t.handshake_attempts() <= 1, "attempts reset by each trigger");
        }
        assert!(sends >= 100, "it kept trying: {sends} initiations");
    }

    #[test]
    fn passive_keepalive_after_receiving_data() {
        let t0 = Instant::now();
        let mut t = Timers::new(3);
        t.data_received(t0);
        assert_eq!(t.next_deadline(), Some(t0 + KEEPALIVE_TIMEOUT));
        assert!(t.handle_timeout(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(t.handle_timeout(t0 + KEEPALIVE_TIMEOUT), vec![TimerAction::SendKeepalive]);
        // Sending anything authenticated cancels a due keepalive.
        t.data_received(t0 + Duration::from_secs(20));
        t.any_authenticated_packet_sent(t0 + Duration::from_secs(21));
        assert!(t.handle_timeout(t0 + Duration::from_secs(40)).is_empty());
        // Data received again while one is pending asks for another one after it.
        t.data_received(t0 + Duration::from_secs(50));
        t.data_received(t0 + Duration::from_secs(51));
        assert_eq!(t.handle_timeout(t0 + Duration::from_secs(60)), vec![TimerAction::SendKeepalive]);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(70)));
    }

    #[test]
    fn new_handshake_when_sent_data_gets_no_answer() {
        let t0 = Instant::now();
        let mut t = Timers::new(5);
        t.data_sent(t0);
        let d = t.next_deadline().unwrap() - t0;
        assert!(
            d >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT && d < KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
        );
        // An answer cancels it.
        t.any_authenticated_packet_received(t0 + Duration::from_secs(1));
        assert_eq!(t.next_deadline(), None);
        t.data_sent(t0 + Duration::from_secs(2));
        let actions = t.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(actions, vec![TimerAction::SendInitiation { retry: false }]);
    }

    #[test]
    fn persistent_keepalive_and_key_zeroing() {
        let t0 = Instant::now();
        let mut t = Timers::new(7);
        t.set_persistent_keepalive(25, t0);
        assert_eq!(t.handle_timeout(t0), vec![TimerAction::SendKeepalive]);
        t.any_authenticated_packet_traversal(t0);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(25)));
        t.any_authenticated_packet_traversal(t0 + Duration::from_secs(10));
        assert!(t.handle_timeout(t0 + Duration::from_secs(25)).is_empty());
        assert_eq!(t.handle_timeout(t0 + Duration::from_secs(35)), vec![TimerAction::SendKeepalive]);
        t.set_persistent_keepalive(0, t0);
        t.session_derived(t0);
        assert_eq!(t.next_deadline(), Some(t0 + REJECT_AFTER_TIME * 3));
        assert_eq!(t.handle_timeout(t0 + REJECT_AFTER_TIME * 3), vec![TimerAction::ZeroKeyMaterial]);
        assert_eq!(t.next_deadline(), None);
    }
}
