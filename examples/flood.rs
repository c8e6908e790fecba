//! flood: handshake initiations with a valid mac1 (so each would cost the responder a
//! Diffie-Hellman unless it answers with a cookie), at a given rate, for
//! `netns-scripts/flood-bench.sh`. It sends through the crate's batched UDP sender (sendmmsg,
//! GSO), so the flooder itself costs little CPU and the benchmark measures the server.
//!
//! Usage: flood HOST:PORT RESPONDER_PUBLIC_KEY_BASE64 SECONDS [RATE]   (RATE 0: flat out)
//! FLOOD_PORTS=N sends from N source ports in turn (default 1): a flood from many endpoints,
//! which per-endpoint caps cannot hold and the responder's budget must.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::RngCore;
use wgturbo::io::udp::OsSocket;
use wgturbo::io::SocketBatcher;
use wgturbo::io::{SendBatch, Socket};
use wgturbo::keys::PublicKey;
use wgturbo::noise::messages::INITIATION_LEN;
use wgturbo::noise::{CookieGenerator, Initiation};

const BATCH: usize = 512;
/// Initiations made in advance.
const POOL: usize = 65_536;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| -> Option<(SocketAddr, PublicKey, f64, f64)> {
        let target = args.first()?.parse().ok()?;
        let key = PublicKey::from_base64(args.get(1)?).ok()?;
        let secs = args.get(2)?.parse().ok()?;
        let rate = args.get(3).map_or(Some(0.0), |r| r.parse().ok())?;
        Some((target, key, secs, rate))
    })();
    let Some((target, key, secs, rate)) = parsed else {
        eprintln!("usage: flood HOST:PORT RESPONDER_PUBLIC_KEY_BASE64 SECONDS [RATE]");
        return ExitCode::FAILURE;
    };
    let ports = std::env::var("FLOOD_PORTS").ok().and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).max(1);
    let mut sockets = Vec::with_capacity(ports);
    for _ in 0..ports {
        match OsSocket::bind(0, 0, false) {
            Ok(s) => sockets.push(Socket::Os(s)),
            Err(e) => {
                eprintln!("flood: cannot bind: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Distinct initiations with a valid mac1, made once and sent round robin: a responder must
    // check each one's mac1 and answer it all the same (nothing before the DH can tell a
    // repeat), while the flooder spends its CPU on sending, not on BLAKE2s, and so leaves the
    // shared machine to the server being measured (as an attacker with a precomputed set would).
    let mut stamper = CookieGenerator::new(&key);
    let mut noise = [0u8; 108];
    let pool: Vec<[u8; INITIATION_LEN]> = (0..POOL as u32)
        .map(|n| {
            let mut msg = [0u8; INITIATION_LEN];
            msg[0] = 1;
            msg[4..8].copy_from_slice(&n.to_le_bytes());
            rand::thread_rng().fill_bytes(&mut noise);
            msg[8..116].copy_from_slice(&noise);
            stamper.stamp(&mut msg, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, Instant::now());
            msg
        })
        .collect();
    let mut batch = SendBatch::new(1, BATCH, true);
    let mut batcher = SocketBatcher::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    while Instant::now() < deadline {
        let due = if rate > 0.0 {
            let owed = (start.elapsed().as_secs_f64() * rate) as u64 - sent;
            owed.min(BATCH as u64) as usize
        } else {
            BATCH
        };
        if due == 0 {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for i in 0..due {
            let (_, msg) = batch.reserve(INITIATION_LEN);
            msg.copy_from_slice(&pool[(sent as usize + i) % POOL]);
            batch.commit(INITIATION_LEN, target);
        }
        if sockets[(sent / BATCH as u64) as usize % ports].send_batch(&mut batcher, &mut batch).is_err() {
            errors += 1;
        }
        sent += due as u64;
    }
    let took = start.elapsed().as_secs_f64();
    println!("sent={sent} seconds={took:.1} rate={:.0} send_errors={errors}", sent as f64 / took);
    ExitCode::SUCCESS
}
