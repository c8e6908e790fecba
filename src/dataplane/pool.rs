//! The device's pool of crypto work for ordered parallel AEAD (the kernel's `queueing.c`
//! model): a worker that has more of one flow than it should seal or open alone queues chunks
//! of it here, any worker may take them, and the owner restores the order (see `seal` and
//! `rx`). Parked workers are woken through their I/O doorbell.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::io::Doorbell;

/// A unit of crypto work (a chunk of one worker's round) that carries its own way back to the
/// worker that owns it. Boxed: one allocation per chunk of packets, not per packet.
pub trait Job: Send {
    /// The worker the results go back to.
    fn owner(&self) -> usize;
    /// Does the work and hands the results to the owner.
    fn run(self: Box<Self>);
}

/// When a worker asks the others to seal or open part of its round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParallelCrypto {
    /// Every worker seals and opens its own flows.
    Off,
    /// Only a worker whose round filled its read batch (it left packets behind) hands chunks
    /// out: a flow that one worker keeps up with stays on its core, where its bytes are cached.
    Backlogged,
    /// Every round with more than one chunk or receive hands chunks out.
    Always,
}

impl ParallelCrypto {
    /// The value's name in `WGTURBO_PARALLEL_CRYPTO`, the start-up line and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            ParallelCrypto::Off => "off",
            ParallelCrypto::Backlogged => "backlogged",
            ParallelCrypto::Always => "always",
        }
    }
}

/// The device's queue of crypto jobs, and how to wake the workers parked on their I/O.
pub struct CryptoPool {
    jobs_tx: Sender<Box<dyn Job>>,
    jobs_rx: Receiver<Box<dyn Job>>,
    bells: Vec<Arc<Doorbell>>,
    parked: Vec<AtomicBool>,
    mode: ParallelCrypto,
    /// Jobs done by a worker other than their owner, and jobs handed to the pool at all.
    helped: AtomicU64,
    shared: AtomicU64,
}

impl CryptoPool {
    /// One doorbell per worker; `mode` says when work is handed off (never with one worker).
    pub fn new(bells: Vec<Arc<Doorbell>>, mode: ParallelCrypto) -> CryptoPool {
        let (jobs_tx, jobs_rx) = unbounded();
        let parked = bells.iter().map(|_| AtomicBool::new(false)).collect();
        let mode = if bells.len() > 1 { mode } else { ParallelCrypto::Off };
        CryptoPool { jobs_tx, jobs_rx, bells, parked, mode, helped: AtomicU64::new(0), shared: AtomicU64::new(0) }
    }

    pub fn mode(&self) -> ParallelCrypto {
        self.mode
    }

    /// Whether a round hands chunks to the pool; `backlogged`: it filled its read batch.
    pub fn shares(&self, backlogged: bool) -> bool {
        match self.mode {
            ParallelCrypto::Off => false,
            ParallelCrypto::Backlogged => backlogged,
            ParallelCrypto::Always => true,
        }
    }

    /// Worker `me` does queued jobs, anyone's, until none is left; returns how many.
    pub fn help(&self, me: usize) -> usize {
        let mut done = 0;
        while let Ok(job) = self.jobs_rx.try_recv() {
            if job.owner() != me {
                self.helped.fetch_add(1, Ordering::Relaxed);
            }
            job.run();
            done += 1;
        }
        done
    }

    /// Jobs done so far by a worker other than the one they came from.
    pub fn jobs_helped(&self) -> u64 {
        self.helped.load(Ordering::Relaxed)
    }

    /// Jobs handed to the pool so far (whoever ran them: which worker takes one is the
    /// scheduler's choice).
    pub fn jobs_shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }

    /// Worker `me` is about to wait on its I/O. False if there is work queued (do not wait).
    /// The store and the check are ordered against `submit`'s send and load, so a job is
    /// either seen here or its submitter sees this worker parked and rings it.
    pub fn park(&self, me: usize) -> bool {
        let Some(flag) = self.parked.get(me) else { return true };
        flag.store(true, Ordering::SeqCst);
        if self.jobs_rx.is_empty() {
            return true;
        }
        flag.store(false, Ordering::Relaxed);
        false
    }

    /// Wakes every worker (the device rebound its port: they must take the new sockets).
    pub fn wake_all(&self) {
        for bell in &self.bells {
            bell.ring();
        }
    }

    pub fn unpark(&self, me: usize) {
        if let Some(flag) = self.parked.get(me) {
            flag.store(false, Ordering::Relaxed);
        }
    }

    pub(super) fn submit(&self, job: Box<dyn Job>, from: usize) {
        self.shared.fetch_add(1, Ordering::Relaxed);
        let _ = self.jobs_tx.send(job);
        std::sync::atomic::fence(Ordering::SeqCst);
        // Wake one parked worker; a busy one finds the job when its round ends.
        for (i, flag) in self.parked.iter().enumerate() {
            if i != from && flag.load(Ordering::SeqCst) && flag.swap(false, Ordering::SeqCst) {
                self.bells[i].ring();
                return;
            }
        }
    }
}
