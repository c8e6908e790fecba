//! The load's loops over a socket (the kernel's, or a twin's in tests): the handshakes, the
//! upload sender, and the receiving ends. Every loop is bounded in time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::initiator::Initiators;
use super::upload::{keepalive, Uploader};
use crate::io::{Buf, SendBatch, Socket, SocketBatcher};
use crate::noise::messages::INITIATION_LEN;
use crate::session::Keypair;

/// Messages a send batch holds at most.
const BATCH_MESSAGES: usize = 1024;
/// Datagrams one flat-out send batch carries.
const FLAT_OUT_BATCH: usize = 512;
/// A receiving end stops once traffic that had started pauses this long.
pub const IDLE_END: Duration = Duration::from_secs(1);

/// How the handshakes went.
pub struct HandshakeOutcome {
    pub established: usize,
    pub wanted: usize,
    pub seconds: f64,
    pub initiations_sent: u64,
    pub cookies: u64,
}

/// Makes every initiator's handshake with `gateway`, `window` in flight, until all are done
/// or `timeout` passes. `progress` is called about every 200 ms with (done, wanted, elapsed).
pub fn handshakes(
    socket: &Socket,
    initiators: &mut Initiators,
    gateway: SocketAddr,
    window: usize,
    timeout: Duration,
    mut progress: impl FnMut(usize, usize, Duration),
) -> HandshakeOutcome {
    let start = Instant::now();
    let mut batcher = SocketBatcher::default();
    let mut batch = SendBatch::new(1, BATCH_MESSAGES, false);
    let mut due: Vec<(usize, [u8; INITIATION_LEN])> = Vec::new();
    let mut bufs: Vec<Buf> = Vec::new();
    let mut last_progress = start;
    while !initiators.all_established() && start.elapsed() < timeout {
        let now = Instant::now();
        initiators.poll(now, window, &mut due);
        for (_, msg) in due.drain(..) {
            if !batch.has_room(INITIATION_LEN) {
                let _ = socket.send_batch(&mut batcher, &mut batch);
            }
            let (_, space) = batch.reserve(INITIATION_LEN);
            space.copy_from_slice(&msg);
            batch.commit(INITIATION_LEN, gateway);
        }
        if !batch.is_empty() {
            // A refused send (no route yet) is retried with the try.
            let _ = socket.send_batch(&mut batcher, &mut batch);
        }
        if socket.recv_batch(&mut batcher, &mut bufs, true).is_ok() {
            let now = Instant::now();
            for b in &bufs {
                for d in b.filled().chunks(b.stride.max(1)) {
                    initiators.consume(d, now);
                }
            }
        }
        batcher.recycle(&mut bufs);
        if last_progress.elapsed() >= Duration::from_millis(200) {
            last_progress = Instant::now();
            progress(initiators.established(), initiators.len(), start.elapsed());
        }
    }
    progress(initiators.established(), initiators.len(), start.elapsed());
    HandshakeOutcome {
        established: initiators.established(),
        wanted: initiators.len(),
        seconds: start.elapsed().as_secs_f64(),
        initiations_sent: initiators.initiations_sent,
        cookies: initiators.cookies,
    }
}

/// Sends one keepalive on each session, as an initiator with nothing to send does: a
/// responder may only send on a session once it has heard on it.
pub fn confirm_sessions(socket: &Socket, keypairs: &[Arc<Keypair>], gateway: SocketAddr) {
    let mut batcher = SocketBatcher::default();
    let mut batch = SendBatch::new(1, BATCH_MESSAGES, false);
    let now = Instant::now();
    for k in keypairs {
        let Some(msg) = keepalive(k, now) else { continue };
        if !batch.has_room(msg.len()) {
            let _ = socket.send_batch(&mut batcher, &mut batch);
        }
        let (_, space) = batch.reserve(msg.len());
        space.copy_from_slice(&msg);
        batch.commit(msg.len(), gateway);
    }
    let _ = socket.send_batch(&mut batcher, &mut batch);
}

/// What a sender did.
#[derive(Default)]
pub struct SendOutcome {
    pub sent: u64,
    /// Of those, sealed before the clock started.
    pub sealed_ahead: u64,
    pub send_errors: u64,
    pub seconds: f64,
}

/// Sends `uploader`'s traffic for `duration`, at `rate` datagrams per second (0: flat out).
/// Up to `preseal_bytes` of it is sealed before the clock starts; the rest is sealed as it
/// goes. Stops early when `stop` is set.
pub fn upload(
    socket: &Socket,
    uploader: &mut Uploader,
    duration: Duration,
    rate: f64,
    preseal_bytes: usize,
    stop: &AtomicBool,
) -> SendOutcome {
    let per_batch = if rate > 0.0 { ((rate / 2000.0) as usize).clamp(1, FLAT_OUT_BATCH) } else { FLAT_OUT_BATCH };
    let batches_ahead = preseal_bytes / crate::io::batch::SEND_CHUNK;
    let sealing_start = Instant::now();
    let mut ahead: std::collections::VecDeque<SendBatch> = std::collections::VecDeque::new();
    let mut out = SendOutcome::default();
    // Only what the run can use: a rated run needs rate x duration datagrams.
    let wanted = if rate > 0.0 { (rate * duration.as_secs_f64()) as u64 } else { u64::MAX };
    let mut planned = 0u64;
    while ahead.len() < batches_ahead && planned < wanted {
        let mut b = SendBatch::new(1, BATCH_MESSAGES, true);
        let n = uploader.fill(&mut b, per_batch.min((wanted - planned) as usize), sealing_start);
        if n == 0 {
            break;
        }
        planned += n as u64;
        ahead.push_back(b);
    }
    out.sealed_ahead = planned;
    let mut batcher = SocketBatcher::default();
    let mut spare = SendBatch::new(1, BATCH_MESSAGES, true);
    let start = Instant::now();
    let deadline = start + duration;
    let mut sealed_ahead_left = out.sealed_ahead;
    loop {
        let now = Instant::now();
        if now >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        if rate > 0.0 {
            let owed = (start.elapsed().as_secs_f64() * rate) as u64;
            if owed < out.sent + per_batch as u64 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        let (n, result) = match ahead.pop_front() {
            Some(mut b) => {
                let n = b.datagram_count() as u64;
                sealed_ahead_left -= n;
                (n, socket.send_batch(&mut batcher, &mut b))
            }
            None => {
                if uploader.fill(&mut spare, per_batch, now) == 0 {
                    break;
                }
                let n = spare.datagram_count() as u64;
                (n, socket.send_batch(&mut batcher, &mut spare))
            }
        };
        if result.is_err() {
            out.send_errors += 1;
        }
        out.sent += n;
    }
    out.seconds = start.elapsed().as_secs_f64();
    out.sealed_ahead -= sealed_ahead_left;
    out
}

/// Receives until `hard_end`, or until traffic that had started pauses for `IDLE_END`, or
/// `stop` is set; gives each datagram (GRO trains cut at their stride) to `count`.
pub fn receive(socket: &Socket, hard_end: Instant, stop: &AtomicBool, mut count: impl FnMut(&mut [u8], Instant)) {
    let mut batcher = SocketBatcher::default();
    let mut bufs: Vec<Buf> = Vec::new();
    let mut last_traffic: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= hard_end || stop.load(Ordering::Relaxed) {
            break;
        }
        if last_traffic.is_some_and(|t| now.saturating_duration_since(t) >= IDLE_END) {
            break;
        }
        if socket.recv_batch(&mut batcher, &mut bufs, true).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !bufs.is_empty() {
            let now = Instant::now();
            last_traffic = Some(now);
            for b in bufs.iter_mut() {
                let stride = b.stride.max(1);
                for d in b.filled_mut().chunks_mut(stride) {
                    count(d, now);
                }
            }
        }
        batcher.recycle(&mut bufs);
    }
}
