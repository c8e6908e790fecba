//! One worker: a loop over its TUN queue and UDP socket through the I/O seam. Each round reads
//! what the TUN has (sealing into the send batch), sends, receives what the socket has
//! (opening into the TUN batch), and writes to the TUN. The routing snapshot, index table and
//! keypairs are loaded once per round, without locks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error};

use super::gate::Gate;
use super::packet::offload::Coalescer;
use super::rx::{Opener, RxRound};
use super::seal::Sealer;
use super::shared::{bump, Counting, Shared, WorkerCounters};
use super::tx::{flush, TxOut, TxRound, SEND_CHUNKS, SEND_MAX_MESSAGES};
use crate::io::vnet::VNET_HDR_LEN;
use crate::io::{tun_is_gone, Buf, SendBatch, Socket, TunWriteBatch, WorkerIo, TUN_READ_BATCH, UDP_RECV_BATCH};
use crate::noise::messages::TRANSPORT_HEADER_LEN;

/// How long a worker sleeps when idle; it then looks again for a stop or a new socket.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// A worker that panics more often than this within `PANIC_WINDOW` takes the daemon down.
const MAX_PANICS: usize = 5;
const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// What a worker is built with.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub index: usize,
    /// The TUN queue carries a virtio_net_hdr (TSO reads, GRO writes).
    pub vnet: bool,
    /// UDP GSO may be used (the socket supports it and offloads are not turned off).
    pub gso: bool,
    /// The TUN took USO: coalesce inner UDP datagrams too.
    pub uso: bool,
}

/// Runs a worker until the device stops. The policy for a panic (a bug, never input: nothing
/// from the network may panic): the worker's state is dropped and its loop restarted on the
/// same TUN queue and socket, so no queue is left unread; the panic is logged and counted. More
/// than `MAX_PANICS` within a minute stops the daemon, which exits with an error.
pub fn supervise(shared: Arc<Shared>, mut io: Box<dyn WorkerIo>, config: WorkerConfig) {
    let mut panics: Vec<Instant> = Vec::new();
    loop {
        let result = catch_unwind(AssertUnwindSafe(|| run(&shared, io.as_mut(), config)));
        if result.is_ok() {
            return;
        }
        let now = Instant::now();
        panics.retain(|t| now.saturating_duration_since(*t) < PANIC_WINDOW);
        panics.push(now);
        bump(&shared.drops(Counting::Worker(config.index)).worker_restarts);
        if panics.len() > MAX_PANICS {
            error!("worker {} panicked {} times within a minute; stopping the daemon", config.index, panics.len());
            shared.fail();
            return;
        }
        error!("worker {} panicked; restarting its loop on the same queue", config.index);
        io.worker_restarted();
    }
}

/// The worker's buffers, kept across rounds.
struct State {
    send: SendBatch,
    sealer: Sealer,
    opener: Opener,
    tun_out: TunWriteBatch,
    coalescer: Coalescer,
    gate: Gate,
    tun_reads: Vec<Buf>,
    udp_reads: Vec<Buf>,
    socket: Option<Arc<Socket>>,
}

fn run(shared: &Shared, io: &mut dyn WorkerIo, config: WorkerConfig) {
    let mut st = State {
        send: SendBatch::new(SEND_CHUNKS, SEND_MAX_MESSAGES, config.gso),
        sealer: Sealer::new(config.index, SEND_CHUNKS),
        opener: Opener::new(config.index),
        tun_out: TunWriteBatch::default(),
        coalescer: Coalescer::with_udp(config.uso),
        gate: Gate::new(config.gso, Counting::Worker(config.index)),
        tun_reads: Vec::with_capacity(TUN_READ_BATCH),
        udp_reads: Vec::with_capacity(UDP_RECV_BATCH),
        socket: None,
    };
    while !shared.stopping() {
        if let Some(w) = shared.workers.get(config.index) {
            w.heartbeat.store(shared.stamp(Instant::now()), Ordering::Relaxed);
            let [tun, udp] = io.reads_ran_dry();
            w.tun_reads_ran_dry.store(tun, Ordering::Relaxed);
            w.udp_reads_ran_dry.store(udp, Ordering::Relaxed);
        }
        let pool = &shared.crypto_pool;
        if pool.park(config.index) {
            if let Err(e) = io.wait(IDLE_WAIT) {
                if tun_is_gone(&e) {
                    shared.interface_deleted();
                    break;
                }
                debug!("worker {}: wait failed: {e}", config.index);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        pool.unpark(config.index);
        // After the wait, not before it: the port may have been rebound while this worker
        // waited (a rebind rings every worker's bell), and the round must send from the new
        // socket, or the peer roams to the old port, which nothing reads any more.
        if !use_current_socket(shared, io, &mut st, config.index) {
            std::thread::sleep(IDLE_WAIT);
            continue;
        }
        // Another worker's chunks first: its flow waits on them. (Helping only when idle was
        // tried: no better on this machine, and one-flow UDP lost its gain; perf/README.md.)
        pool.help(config.index);
        round(shared, io, &mut st, config);
        if let Some(why) = io.broken() {
            error!("worker {}: {why}; the device stops", config.index);
            shared.fail();
            break;
        }
    }
}

/// Follows the device's sockets (a `listen-port` change rebinds them). False if none yet.
fn use_current_socket(shared: &Shared, io: &mut dyn WorkerIo, st: &mut State, index: usize) -> bool {
    let sockets = shared.sockets.load();
    let Some(sock) = sockets.get(index % sockets.len().max(1)) else { return false };
    if !st.socket.as_ref().is_some_and(|s| Arc::ptr_eq(s, sock)) {
        io.set_socket(sock.clone());
        st.socket = Some(sock.clone());
    }
    true
}

/// Sends the cookie replies the gate queued (a flood from one source: a few GSO sends).
fn send_cookie_replies(shared: &Shared, io: &mut dyn WorkerIo, gate: &mut Gate, index: usize) {
    gate.flush_counts(shared);
    if gate.replies.is_empty() {
        return;
    }
    if let Err(e) = io.send_udp(&mut gate.replies) {
        debug!("worker {index}: sending cookie replies failed: {e}");
    }
}

/// One round of reads and writes.
fn round(shared: &Shared, io: &mut dyn WorkerIo, st: &mut State, config: WorkerConfig) {
    let now = Instant::now();
    let stamp = shared.stamp(now);
    let routing = shared.routing.load();
    let index = config.index;
    let drops = shared.drops(Counting::Worker(index));

    if let Err(e) = io.read_tun(&mut st.tun_reads) {
        if tun_is_gone(&e) {
            shared.interface_deleted();
        }
        debug!("worker {index}: TUN read failed: {e}");
    }
    if !st.tun_reads.is_empty() {
        if let Some(counters) = shared.workers.get(index) {
            let header = if config.vnet { VNET_HDR_LEN } else { 0 };
            let bytes = st.tun_reads.iter().map(|b| b.len.saturating_sub(header) as u64).sum();
            WorkerCounters::add(&counters.tun_packets, st.tun_reads.len() as u64);
            WorkerCounters::add(&counters.tun_bytes, bytes);
        }
        let tx = TxRound {
            shared,
            routing: &routing,
            now,
            stamp,
            mtu: shared.mtu.load(Ordering::Relaxed),
            vnet: config.vnet,
            worker: index,
            drops,
        };
        st.sealer.set_sharing(shared.crypto_pool.shares(st.tun_reads.len() >= io.tun_read_limit()));
        let mut reads = std::mem::take(&mut st.tun_reads);
        let mut out = TxOut { batch: &mut st.send, sealer: &mut st.sealer, tun: &mut st.tun_out };
        for b in reads.iter_mut() {
            let Some(mut outgoing) = tx.read(b.filled_mut(), &mut out) else { continue };
            while outgoing.write(&tx, &mut out).is_err() {
                flush(io, out.batch, out.sealer, &shared.crypto_pool, index);
            }
            outgoing.finish(&tx);
        }
        if !st.send.is_empty() {
            flush(io, &mut st.send, &mut st.sealer, &shared.crypto_pool, index);
        }
        io.recycle_tun(&mut reads);
        st.tun_reads = reads;
    }

    if let Err(e) = io.recv_udp(&mut st.udp_reads) {
        debug!("worker {index}: receive failed: {e}");
    }
    if !st.udp_reads.is_empty() {
        if let Some(counters) = shared.workers.get(index) {
            let datagrams = st.udp_reads.iter().map(|b| b.len.div_ceil(b.stride.max(1)).max(1) as u64).sum();
            let bytes = st.udp_reads.iter().map(|b| b.len as u64).sum();
            WorkerCounters::add(&counters.udp_datagrams, datagrams);
            WorkerCounters::add(&counters.udp_bytes, bytes);
        }
        let indices = &shared.indices;
        let share = shared.crypto_pool.shares(st.udp_reads.len() >= io.udp_recv_limit());
        st.opener.decrypt(&shared.crypto_pool, share, indices, &mut st.udp_reads, now);
        let rx = RxRound { shared, indices, routing: &routing, now, stamp, drops };
        for (slot, b) in st.udp_reads.iter_mut().enumerate() {
            let Some(src) = b.src else { continue };
            if b.len == 0 {
                // An empty datagram has no chunks below, but it is garbage all the same.
                bump(&drops.malformed);
                continue;
            }
            let stride = b.stride.max(1);
            for (k, datagram) in b.filled_mut().chunks_mut(stride).enumerate() {
                if !st.gate.has_room() {
                    send_cookie_replies(shared, io, &mut st.gate, index);
                }
                let (pre, opened_with) = st.opener.result(slot, k);
                let Some(len) = rx.datagram_with(datagram, src, pre, opened_with, &mut st.gate) else { continue };
                let plaintext = &datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
                if !(config.vnet && st.coalescer.push(plaintext, &mut st.tun_out)) {
                    st.tun_out.push_plain(plaintext);
                }
            }
        }
        st.coalescer.drain(&mut st.tun_out);
        io.recycle_udp(&mut st.udp_reads);
        send_cookie_replies(shared, io, &mut st.gate, index);
    }

    if !st.tun_out.is_empty() {
        if let Err(e) = io.write_tun(&mut st.tun_out) {
            debug!("worker {index}: TUN write failed: {e}");
        }
    }
}
