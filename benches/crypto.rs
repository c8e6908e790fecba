//! Transport seal/open by packet size (ring's ChaCha20-Poly1305), a full handshake, a cookie
//! reply and X25519.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgturbo::keys::{PresharedKey, PrivateKey};
use wgturbo::noise::messages::{padded_len, INITIATION_LEN};
use wgturbo::noise::{
    consume_initiation, CookieChecker, CookieGenerator, Handshake, Initiation, Response, SessionKeys, StaticIdentity,
    Tai64N,
};
use wgturbo::session::Keypair;

fn keys(initiator: bool) -> SessionKeys {
    SessionKeys { local_index: 1, remote_index: 2, send: [7; 32], recv: [7; 32], is_initiator: initiator }
}

fn transport(c: &mut Criterion) {
    let now = Instant::now();
    let sender = Keypair::new(&keys(true), now);
    let mut group = c.benchmark_group("transport");
    for size in [64usize, 1420, 8192] {
        let padded = padded_len(size, 65535);
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; 16 + padded + 16];
        group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            let mut counter = 0u64;
            b.iter(|| {
                counter += 1;
                black_box(sender.seal_padded(counter, &mut buf, size, 65535).unwrap())
            })
        });
        // Open needs a fresh counter each time (replay window): seal a batch ahead of time.
        const BATCH: u64 = 4096;
        let sealed: Vec<Vec<u8>> = (0..BATCH)
            .map(|c| {
                let mut m = vec![0u8; 16 + padded + 16];
                sender.seal_padded(c, &mut m, size, 65535).unwrap();
                m
            })
            .collect();
        // One iteration opens the whole batch.
        group.throughput(Throughput::Bytes(size as u64 * BATCH));
        group.bench_with_input(BenchmarkId::new("open_x4096", size), &size, |b, _| {
            b.iter_batched_ref(
                || (Keypair::new(&keys(false), now), sealed.clone()),
                |(receiver, msgs)| {
                    for m in msgs.iter_mut() {
                        black_box(receiver.open(m, now).unwrap());
                    }
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    // As the dataplane seals: 1420-byte messages one after another through a 4 MiB arena that
    // was just written by a copy, so the bytes come from L2/L3 rather than a hot L1 buffer.
    let slot = 16 + 1420 + 16;
    let slots = (4 << 20) / slot;
    let source = vec![0x5au8; slots * slot];
    let mut arena = vec![0u8; slots * slot];
    group.throughput(Throughput::Bytes((1420 * slots) as u64));
    group.bench_function(BenchmarkId::new("seal_arena_4MiB_after_copy", 1420), |b| {
        let mut counter = 0u64;
        b.iter(|| {
            arena.copy_from_slice(&source);
            for m in arena.chunks_exact_mut(slot) {
                counter += 1;
                black_box(sender.seal_padded(counter, m, 1420, 1420).unwrap());
            }
        })
    });
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let a = StaticIdentity::new(PrivateKey::generate());
    let b = StaticIdentity::new(PrivateKey::generate());
    let psk = PresharedKey::generate();
    let mut ha = Handshake::new(&a, b.public, psk.clone());
    let mut hb = Handshake::new(&b, a.public, psk);
    let now = Instant::now();
    let mut tick = 0u64;
    c.bench_function("handshake/full (initiation + response, both sides)", |bench| {
        bench.iter(|| {
            tick += 1;
            // Strictly increasing timestamps so the responder never sees a replay.
            let ts = Tai64N::from_system_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(tick));
            let init = ha.create_initiation(&a, 1, ts, now).unwrap();
            let for_b = consume_initiation(&b, &Initiation::parse(&init).unwrap()).unwrap();
            hb.consume_initiation(for_b, now + std::time::Duration::from_secs(tick)).unwrap();
            let (resp, kb) = hb.create_response(2, now).unwrap();
            let ka = ha.consume_response(&a, &Response::parse(&resp).unwrap()).unwrap();
            black_box((ka, kb))
        })
    });
}

/// What a flood costs per message under load: checking an initiation's mac1, and checking it
/// and answering it with a cookie reply (the budgeted work of the side socket's reader).
fn cookie(c: &mut Criterion) {
    let responder = PrivateKey::generate().public_key();
    let checker = CookieChecker::new(&responder);
    let mut stamper = CookieGenerator::new(&responder);
    let mut msg = [0u8; INITIATION_LEN];
    msg[0] = 1;
    let now = Instant::now();
    stamper.stamp(&mut msg, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, now);
    let src: SocketAddr = "192.0.2.7:51820".parse().unwrap();
    let mut mac1 = [0u8; 16];
    mac1.copy_from_slice(&msg[Initiation::MAC1_OFFSET..Initiation::MAC1_OFFSET + 16]);
    let mut group = c.benchmark_group("cookie");
    group.bench_function("verify_mac1", |b| {
        b.iter(|| black_box(checker.verify_mac1(black_box(&msg), Initiation::MAC1_OFFSET)))
    });
    group.bench_function("verify_mac1_and_reply", |b| {
        b.iter(|| {
            assert!(checker.verify_mac1(black_box(&msg), Initiation::MAC1_OFFSET));
            black_box(checker.create_reply(7, &mac1, &src, now).to_bytes())
        })
    });
    group.finish();
}

/// One X25519: ours (through the Edwards form) against x25519-dalek's Montgomery ladder.
fn dh(c: &mut Criterion) {
    let ours = PrivateKey::generate();
    let peer = PrivateKey::generate().public_key();
    let mut group = c.benchmark_group("x25519");
    group.bench_function("ours_edwards", |b| b.iter(|| black_box(ours.diffie_hellman(black_box(&peer)))));
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let their = x25519_dalek::PublicKey::from(*peer.as_bytes());
    group.bench_function("x25519_dalek_ladder", |b| b.iter(|| black_box(secret.diffie_hellman(black_box(&their)))));
    group.finish();
}

/// The Internet checksum of one cut TCP segment (1380 bytes), taken in the seal job.
fn checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    let data: Vec<u8> = (0..1380u32).map(|i| (i * 7 + 3) as u8).collect();
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("segment_1380", |b| {
        b.iter(|| {
            wgturbo::dataplane::packet::checksum::fold(wgturbo::dataplane::packet::checksum::sum(
                std::hint::black_box(&data),
                0,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, transport, handshake, cookie, dh, checksum);
criterion_main!(benches);
