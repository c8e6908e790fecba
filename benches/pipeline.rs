//! The worker pipeline over the in-memory twins: one TCP flow of 64 KiB TSO reads through a
//! device's TUN queue 0, routed, cut into segments, sealed and sent as UDP GSO groups, with
//! 1 worker against 2 (the second only helps seal: the flow has one queue). It measures the
//! dataplane without a kernel, so the ratio shows what ordered parallel sealing gives on
//! this machine's cores.
//!
//! The peer completes the handshake and is then stopped (so it neither competes for the cores
//! nor sends anything that would move the endpoint); the sealed datagrams are counted as the
//! twin net drops them at its closed port.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgturbo::dataplane::pool::ParallelCrypto;
use wgturbo::device::{BackgroundDevice, DeviceIo};
use wgturbo::io::twin::{TwinHost, TwinNet};
use wgturbo::io::vnet::VNET_HDR_LEN;
use wgturbo::keys::PrivateKey;

#[path = "../tests/common/packets.rs"]
mod packets;
use packets::{tso_read, udp_packet};

/// TSO reads per iteration, their payload, and the MSS of a 1420-byte tunnel MTU.
const READS: usize = 64;
const PAYLOAD: usize = 64_000;
const MSS: u16 = 1380;

struct Device {
    dev: BackgroundDevice,
    hosts: Vec<TwinHost>,
    key: PrivateKey,
}

fn device(net: &Arc<TwinNet>, port: u16, workers: usize, parallel_crypto: ParallelCrypto) -> Device {
    let (io, hosts) = DeviceIo::twin(net, workers, true, parallel_crypto);
    let dev = BackgroundDevice::spawn(io).expect("device starts");
    let key = PrivateKey::generate();
    let reply = dev.uapi(&format!("set=1\nprivate_key={}\nlisten_port={port}\n", key.to_hex()));
    assert_eq!(reply, "errno=0\n\n");
    Device { dev, hosts, key }
}

fn set_peer(me: &Device, other: &PrivateKey, port: u16, ip: &str) {
    let reply = me.dev.uapi(&format!(
        "set=1\npublic_key={}\nendpoint=127.0.0.1:{port}\nallowed_ip={ip}/32\n",
        other.public_key().to_hex()
    ));
    assert_eq!(reply, "errno=0\n\n");
}

/// A sender with `workers` workers and a session to a peer that is then gone.
fn sender(workers: usize, parallel_crypto: ParallelCrypto) -> (Arc<TwinNet>, Device) {
    let net = TwinNet::new();
    let a = device(&net, 52001, workers, parallel_crypto);
    let b = device(&net, 52002, 1, ParallelCrypto::Off);
    set_peer(&a, &b.key, 52002, "10.0.0.2");
    set_peer(&b, &a.key, 52001, "10.0.0.1");
    let mut hello = vec![0u8; VNET_HDR_LEN];
    hello.extend_from_slice(&udp_packet(1, 2, b"hello"));
    a.hosts[0].send.send(hello).expect("queue open");
    b.hosts[0].recv.recv_timeout(Duration::from_secs(10)).expect("handshake completes");
    drop(b);
    // Its workers notice the stop within their idle wait; then its port closes.
    std::thread::sleep(Duration::from_millis(600));
    (net, a)
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline_one_flow");
    group.throughput(Throughput::Bytes((READS * PAYLOAD) as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    let reads: Vec<Vec<u8>> =
        (0..READS).map(|k| tso_read(1, 2, (k * PAYLOAD) as u32, &vec![k as u8; PAYLOAD], MSS)).collect();
    let datagrams = (READS * PAYLOAD.div_ceil(MSS as usize)) as u64;
    // Off: the owner seals; backlogged (the default): others help when its reads fill a batch;
    // always: others help with every full chunk.
    for (workers, mode) in [
        (1, ParallelCrypto::Off),
        (2, ParallelCrypto::Off),
        (2, ParallelCrypto::Backlogged),
        (2, ParallelCrypto::Always),
    ] {
        let (net, a) = sender(workers, mode);
        let name = match mode {
            ParallelCrypto::Off => "owner_seals",
            mode => mode.name(),
        };
        group.bench_with_input(BenchmarkId::new(name, workers), &workers, |bench, _| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = reads.clone();
                    let target = net.dropped.load(Ordering::Relaxed) + datagrams;
                    let start = Instant::now();
                    for r in batch {
                        a.hosts[0].send.send(r).expect("queue open");
                    }
                    let deadline = start + Duration::from_secs(10);
                    while net.dropped.load(Ordering::Relaxed) < target {
                        assert!(Instant::now() < deadline, "datagrams went missing");
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
