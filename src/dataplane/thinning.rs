//! Which sources the side socket's kernel filter thins (`io::thin`): endpoints that went over
//! their cookie-reply cap lately, and addresses over theirs (every port of an IPv4 address or
//! an IPv6 /64). A flood from a few sources then costs its sender's softirq
//! instead of this process a queue, a dequeue and a comparison per receive, and the side
//! socket's queue stays free for real peers. One receive in `KEEP_ONE_IN` still gets through,
//! so the cap keeps seeing the flood (which keeps it listed) and answering it at the cap's rate
//! while the budget lasts; a message that carries a mac2 is never thinned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use super::shared::{Counting, Shared, WorkerCounters};
use crate::io::Socket;

use crate::io::thin::{Source, Spare, MAX_THINNED};
use crate::noise::messages::{
    Initiation, Response, INITIATION_LEN, MESSAGE_INITIATION, MESSAGE_RESPONSE, RESPONSE_LEN,
};
use crate::noise::ratelimiter::Over;

/// A listed source is let go this long after it was last over its cap.
const HOLD: Duration = Duration::from_secs(1);
/// The filter is rebuilt at most this often (a change is one setsockopt).
const REBUILD_EVERY: Duration = Duration::from_millis(50);
/// One receive in this many from a listed source reaches the socket.
pub const KEEP_ONE_IN: u32 = 16;
/// Initiations and responses with a nonzero mac2 pass whatever their source: a real peer at
/// an endpoint a spoofer floods still proves itself.
pub const SPARES: [Spare; 2] = [
    Spare { first_byte: MESSAGE_INITIATION as u8, words: (Initiation::MAC2_OFFSET as u32, INITIATION_LEN as u32) },
    Spare { first_byte: MESSAGE_RESPONSE as u8, words: (Response::MAC2_OFFSET as u32, RESPONSE_LEN as u32) },
];

#[derive(Default)]
pub struct Thinning {
    /// Sources over their cap, with when they last were.
    capped: Vec<(Source, Instant)>,
    /// What the filter holds now, sorted.
    applied: Vec<Source>,
    rebuilt: Option<Instant>,
}

impl Thinning {
    /// `src` was over its endpoint's or its address's cap at `now`. The list keeps the
    /// `MAX_THINNED` most recent.
    pub fn note_capped(&mut self, src: SocketAddr, over: Over, now: Instant) {
        let src = match over {
            Over::Endpoint => Source::endpoint(src),
            Over::Address => Source::address(src.ip()),
        };
        if let Some(entry) = self.capped.iter_mut().find(|(e, _)| *e == src) {
            entry.1 = now;
            return;
        }
        if self.capped.len() == MAX_THINNED {
            if let Some(oldest) = (0..self.capped.len()).min_by_key(|&i| self.capped[i].1) {
                self.capped.swap_remove(oldest);
            }
        }
        self.capped.push((src, now));
    }

    /// The sources the filter should list, when that differs from what it lists and a
    /// rebuild is allowed (the caller then applies it; an empty list lifts the filter).
    pub fn due(&mut self, now: Instant) -> Option<Vec<Source>> {
        if self.rebuilt.is_some_and(|t| now.saturating_duration_since(t) < REBUILD_EVERY) {
            return None;
        }
        self.capped.retain(|(_, at)| now.saturating_duration_since(*at) < HOLD);
        let mut wanted: Vec<Source> = self.capped.iter().map(|(e, _)| *e).collect();
        wanted.sort_unstable();
        if wanted == self.applied {
            return None;
        }
        self.rebuilt = Some(now);
        self.applied.clone_from(&wanted);
        Some(wanted)
    }
}

/// The side socket's reader's end of it: applies the list to the socket it reads, starts
/// afresh when that socket is replaced, and counts what the kernel dropped there.
#[derive(Default)]
pub struct SideFilter {
    thinning: Thinning,
    socket: Option<Arc<Socket>>,
    drops_seen: u32,
}

impl SideFilter {
    pub fn note_capped(&mut self, src: SocketAddr, over: Over, now: Instant) {
        self.thinning.note_capped(src, over, now);
    }

    /// After each round: follows a new socket, rebuilds the filter when due, and adds the
    /// kernel's new drops to `handshake_dropped_by_kernel`.
    pub fn after_round(&mut self, shared: &Shared, socket: &Arc<Socket>, now: Instant) {
        if !self.socket.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            self.socket = Some(socket.clone());
            self.thinning = Thinning::default();
            self.drops_seen = socket.kernel_drops().unwrap_or(0);
        }
        if let Some(list) = self.thinning.due(now) {
            match socket.thin_sources(&list, KEEP_ONE_IN, &SPARES) {
                Ok(()) => debug!("side socket: {} source(s) over their cookie cap thinned in the kernel", list.len()),
                Err(e) => debug!("side socket: cannot thin sources in the kernel: {e}"),
            }
        }
        if let Ok(drops) = socket.kernel_drops() {
            let new = drops.wrapping_sub(self.drops_seen);
            self.drops_seen = drops;
            if new > 0 {
                WorkerCounters::add(&shared.drops(Counting::Side).handshake_dropped_by_kernel, u64::from(new));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 4000 + n))
    }

    fn listed(ns: &[u16]) -> Option<Vec<Source>> {
        Some(ns.iter().map(|&n| Source::endpoint(at(n))).collect())
    }

    #[test]
    fn listed_at_once_held_while_capped_and_let_go_after() {
        let mut t = Thinning::default();
        let t0 = Instant::now();
        assert_eq!(t.due(t0), None, "nothing to list");
        t.note_capped(at(1), Over::Endpoint, t0);
        assert_eq!(t.due(t0), listed(&[1]), "the first is listed at once");
        // Capped again and again: no rebuild while the list is the same.
        for ms in 1..900 {
            t.note_capped(at(1), Over::Endpoint, t0 + Duration::from_millis(ms));
            assert_eq!(t.due(t0 + Duration::from_millis(ms)), None);
        }
        // A second endpoint waits for the rebuild interval only.
        let t1 = t0 + Duration::from_millis(900);
        t.note_capped(at(2), Over::Endpoint, t1);
        assert_eq!(t.due(t1), listed(&[1, 2]));
        // The first stops; a second after its last cap it is let go.
        t.note_capped(at(2), Over::Endpoint, t1 + Duration::from_millis(900));
        assert_eq!(t.due(t0 + Duration::from_millis(1_899)), listed(&[2]));
        assert_eq!(t.due(t1 + Duration::from_millis(1_950)), Some(vec![]), "all let go: the filter is lifted");
    }

    #[test]
    fn at_most_max_thinned_the_most_recent_kept() {
        let mut t = Thinning::default();
        let t0 = Instant::now();
        for n in 0..(MAX_THINNED as u16 + 3) {
            t.note_capped(at(n), Over::Endpoint, t0 + Duration::from_millis(u64::from(n)));
        }
        let listed = t.due(t0 + Duration::from_millis(20)).unwrap();
        assert_eq!(listed.len(), MAX_THINNED);
        let has = |n| listed.contains(&Source::endpoint(at(n)));
        assert!(!has(0) && !has(2) && has(3));
    }

    #[test]
    fn an_address_over_its_cap_is_listed_for_all_its_ports() {
        let mut t = Thinning::default();
        let t0 = Instant::now();
        t.note_capped(at(1), Over::Address, t0);
        t.note_capped(at(2), Over::Address, t0);
        assert_eq!(t.due(t0), Some(vec![Source::address(at(1).ip())]), "one entry for the address");
    }

    #[test]
    fn the_spares_are_where_mac2_is() {
        assert_eq!(SPARES[0].words, (132, 148));
        assert_eq!(SPARES[1].words, (76, 92));
    }
}
