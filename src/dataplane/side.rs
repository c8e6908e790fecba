//! The side socket's reader: where the kernel steers every datagram that is not a transport
//! message, one thread reads them, screens handshake messages through a `Gate` of its own,
//! answers floods with cookie replies from the same socket, and thins sources over their cap
//! in the kernel (`thinning`). The workers never see that traffic.

use std::time::{Duration, Instant};

use tracing::debug;

use super::gate::{take_handshake, Gate};
use super::shared::{bump, Counting, Shared};
use super::thinning::SideFilter;
use crate::io::{Buf, Socket, SocketBatcher, UDP_RECV_BATCH};
use crate::noise::messages::INITIATION_LEN;

/// How long the side socket's reader waits after a failed receive.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long it waits after a round that did not fill its batch (a handshake waits that much
/// more, at most).
const GATHER_PAUSE: Duration = Duration::from_millis(1);
const NO_SIDE_SOCKET_WAIT: Duration = Duration::from_millis(200);

/// The reader of the side socket (`Shared::side_socket`), where the kernel steers every
/// datagram that is not a transport message: handshake messages through a `Gate` of its own
/// to the control thread, cookie replies back from the same socket. Runs until the device
/// stops; where there is no side socket the workers take handshake messages themselves.
pub fn serve_side(shared: &Shared) {
    let mut gate = Gate::new(true, Counting::Side);
    let mut batcher = SocketBatcher::default();
    let mut bufs: Vec<Buf> = Vec::new();
    // Set after a round that refused anything (over the budget or a source's cap): the next
    // receive then skims (see below).
    let mut refusing = false;
    let mut filter = SideFilter::default();
    while !shared.stopping() {
        let Some(socket) = shared.side_socket.load_full() else {
            std::thread::sleep(NO_SIDE_SOCKET_WAIT);
            continue;
        };
        // After a refusing round, most of what is read is refused anyway: take only the first
        // datagram of each GRO train (a train is one source's) and let the kernel drop the rest
        // uncopied. A flood sent with GSO then costs this thread one small copy per 64 KiB; a
        // real peer's lone message (a train of one) is read whole.
        let received = if refusing {
            socket.skim_batch(&mut batcher, &mut bufs, true, INITIATION_LEN)
        } else {
            socket.recv_batch(&mut batcher, &mut bufs, true)
        };
        if let Err(e) = received {
            debug!("side socket: receive failed: {e}");
            std::thread::sleep(ERROR_PAUSE);
        }
        let now = Instant::now();
        let received = bufs.len();
        if received == 0 {
            continue;
        }
        for b in bufs.iter_mut() {
            let Some(src) = b.src else { continue };
            if b.len == 0 && b.cut == 0 {
                // An empty datagram: garbage, counted as the workers count it.
                bump(&shared.drops(Counting::Side).malformed);
                continue;
            }
            let stride = b.stride.max(1);
            if b.cut > 0 {
                // Whole datagrams only; a partly copied one is discarded with the rest.
                let whole = b.len - b.len % stride;
                gate.count_refused((b.cut + b.len - whole).div_ceil(stride) as u64);
                b.len = whole;
            }
            let datagrams = b.len.div_ceil(stride);
            for (i, datagram) in b.filled_mut().chunks(stride).enumerate() {
                if !gate.has_room() {
                    send_replies(&socket, &mut batcher, &mut gate);
                }
                // A transport message lands here only if it was too short for the kernel's
                // steering to read its index; `take_handshake` counts it malformed.
                if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
                    bump(&shared.drops(Counting::Side).malformed);
                    continue;
                }
                take_handshake(shared, &mut gate, datagram, src, now);
                if let Some(over) = gate.take_source_capped() {
                    filter.note_capped(src, over, now);
                    // The rest of a GRO train comes from the same source: capped as well.
                    gate.count_limited((datagrams - i - 1) as u64);
                    break;
                }
            }
        }
        batcher.recycle(&mut bufs);
        refusing = gate.refusing(now);
        gate.flush_counts(shared);
        filter.after_round(shared, &socket, now);
        // No pause after a refused round: a real peer's message waits in the same queue as
        // the flood, and a queue left full would drop it; refusing costs a comparison.
        send_replies(&socket, &mut batcher, &mut gate);
        // A round that did not fill the batch waits a moment before the next, so a trickle
        // (a paced flood, or many peers' handshakes) wakes this thread at most ~1,000 times a
        // second instead of once per datagram; a full round goes on at once.
        if received < UDP_RECV_BATCH {
            std::thread::sleep(GATHER_PAUSE);
        }
    }
}

fn send_replies(socket: &Socket, batcher: &mut SocketBatcher, gate: &mut Gate) {
    if !gate.replies.is_empty() {
        if let Err(e) = socket.send_batch(batcher, &mut gate.replies) {
            debug!("side socket: sending cookie replies failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::dataplane::gate::tests::{initiation, keyed, value};
    use crate::dataplane::gate::UNDER_LOAD_BURST;
    use crate::io::twin::TwinNet;
    use crate::io::{Network, SendBatch};
    use crate::noise::messages::COOKIE_REPLY_LEN;
    use crate::noise::CookieGenerator;

    /// The side socket's reader end to end, under a flood of GSO trains from one endpoint: it
    /// answers up to the endpoint's cap, skims and skips the rest, has the socket thin the
    /// endpoint, answers a real peer at another port in the middle of it, and accounts for
    /// every datagram sent: answered, capped, refused, or dropped before it queued (the
    /// kernel counts a GRO train as one drop, the twin each datagram).
    fn side_reader_under_flood(network: Network, per_drop: u64) {
        const TRAIN: usize = 60;
        // Enough, fast enough, to use up the leftover budget too (200,000 a second): then
        // the endpoint is capped and thinned.
        const TRAINS: usize = 800;
        let (shared, _channels, _, us) = keyed();
        let side = network.bind(0, 0, 1, None).expect("bind the side socket").sockets.remove(0);
        let to = SocketAddr::from(([127, 0, 0, 1], side.local_port().unwrap()));
        shared.side_socket.store(Some(side.clone()));
        let flooder = network.bind(0, 0, 1, None).expect("bind the flooder").sockets.remove(0);
        if !flooder.supports_gso() {
            eprintln!("no UDP GSO on this kernel; skipped");
            return;
        }
        let peer = network.bind(0, 0, 1, None).expect("bind the peer").sockets.remove(0);
        let mut generator = CookieGenerator::new(&us);
        let start = Instant::now();
        shared.mark_under_load(shared.stamp(start));
        let msg = initiation(&mut generator, 1, start);
        std::thread::scope(|scope| {
            scope.spawn(|| serve_side(&shared));
            let mut batch = SendBatch::new(1, 64, true);
            let mut batcher = SocketBatcher::default();
            for train in 0..TRAINS {
                // Under load throughout, however slowly a loaded machine runs this.
                shared.mark_under_load(shared.stamp(Instant::now()));
                for _ in 0..TRAIN {
                    let (_, space) = batch.reserve(msg.len());
                    space[..msg.len()].copy_from_slice(&msg);
                    batch.commit(msg.len(), to);
                }
                flooder.send_batch(&mut batcher, &mut batch).expect("send a train");
                if train % 40 == 39 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if train == TRAINS / 2 {
                    let lone = initiation(&mut generator, 77, Instant::now());
                    peer.send_to(&lone, to).unwrap();
                }
            }
            let mut replies = Vec::new();
            for _ in 0..4 {
                peer.recv_batch(&mut batcher, &mut replies, true).unwrap();
                if !replies.is_empty() {
                    break;
                }
            }
            let reply = replies.first_mut().expect("the peer's cookie reply").filled_mut().to_vec();
            assert_eq!((reply.len(), reply[0]), (COOKIE_REPLY_LEN, 3));
            assert_eq!(u32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]), 77, "to the peer's index");
            std::thread::sleep(Duration::from_millis(100));
            shared.fail();
            side.shutdown();
        });
        let elapsed = start.elapsed().as_secs_f64();
        let answered = value(&shared.handshakes.cookie_replies_sent);
        let capped = value(&shared.handshakes.rate_limited);
        let refused = shared.drop_totals().handshake_queue_full;
        let thinned = shared.drop_totals().handshake_dropped_by_kernel;
        eprintln!("{elapsed:.2} s: answered {answered}, capped {capped}, refused {refused}, dropped {thinned}");
        // The endpoint's burst and rate, what the budget had left over beyond its reserve,
        // and the peer.
        let bound = 501.0 + 5_000.0 * elapsed + 60.0 + (UNDER_LOAD_BURST / 2) as f64 + 200_000.0 * elapsed;
        assert!(answered >= 501 && answered as f64 <= bound, "{answered}");
        assert!(capped > 0);
        assert!(thinned > 0, "the flooder was thinned before its datagrams queued");
        assert_eq!(answered + capped + refused + per_drop * thinned, (TRAIN * TRAINS) as u64 + 1);
    }

    /// On loopback: GRO trains, skimmed, and a BPF filter in the kernel.
    #[test]
    fn the_side_reader_caps_skims_and_thins_a_flood_and_answers_a_peer() {
        side_reader_under_flood(Network::Os { gro: true }, 60);
    }

    /// The same on the twins, without root or a kernel's GRO.
    #[test]
    fn the_side_reader_does_the_same_on_the_twins() {
        side_reader_under_flood(Network::Twin(TwinNet::new()), 1);
    }
}
