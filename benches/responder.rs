//! Responder handshakes per second with 100,000 peers configured: valid initiations from 1,000
//! distinct peers reach a twin device's socket in batches (kept below the "under load"
//! threshold, so every one costs the full DH work rather than a cookie reply), and the
//! iteration ends when the device has sent a response to each. The control thread does the
//! handshakes, so this is handshakes per second on one core.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wgturbo::device::{BackgroundDevice, DeviceIo};
use wgturbo::io::twin::{TwinHost, TwinNet};
use wgturbo::keys::{PresharedKey, PrivateKey, PublicKey};
use wgturbo::noise::{Handshake, StaticIdentity, Tai64N};

const CONFIGURED: usize = 100_000;
const INITIATORS: usize = 1_000;
/// Initiations in flight at once: under the handshake queue's load threshold (4096 / 8).
const BATCH: usize = 256;
const PORT: u16 = 53001;

struct Initiator {
    identity: StaticIdentity,
    handshake: Handshake,
    addr: SocketAddr,
}

fn setup() -> (Arc<TwinNet>, BackgroundDevice, TwinHost, Vec<Initiator>) {
    let net = TwinNet::new();
    let (io, mut hosts) = DeviceIo::twin(&net, 1, false, wgturbo::dataplane::pool::ParallelCrypto::Off);
    let host = hosts.remove(0);
    let dev = BackgroundDevice::spawn(io).expect("device starts");
    let device_key = PrivateKey::generate();
    let device_pub = device_key.public_key();
    let reply = dev.uapi(&format!("set=1\nprivate_key={}\nlisten_port={PORT}\n", device_key.to_hex()));
    assert_eq!(reply, "errno=0\n\n");
    let initiators: Vec<Initiator> = (0..INITIATORS)
        .map(|i| {
            let identity = StaticIdentity::new(PrivateKey::generate());
            let handshake = Handshake::new(&identity, device_pub, PresharedKey::default());
            Initiator {
                identity,
                handshake,
                addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000)),
            }
        })
        .collect();
    // The real initiators, then fillers up to CONFIGURED peers (a filler's public key may be
    // any 32 bytes: it never speaks), set in slices of 10,000.
    let fillers = (0..CONFIGURED - INITIATORS).map(|_| PublicKey(rand_bytes()).to_hex());
    let keys: Vec<String> = initiators.iter().map(|i| i.identity.public.to_hex()).chain(fillers).collect();
    for slice in keys.chunks(10_000) {
        let mut req = String::from("set=1\n");
        for k in slice {
            req.push_str(&format!("public_key={k}\n"));
        }
        assert_eq!(dev.uapi(&req), "errno=0\n\n");
    }
    (net, dev, host, initiators)
}

fn rand_bytes() -> [u8; 32] {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// Responses (type 2) the device sent since the last call.
fn responses(net: &TwinNet) -> usize {
    net.take_recorded().iter().filter(|(_, _, d)| d.first() == Some(&2)).count()
}

fn responder(c: &mut Criterion) {
    let (net, dev, _host, mut initiators) = setup();
    let to = TwinNet::address(PORT);
    let mut clock = 0u64;
    let mut group = c.benchmark_group("responder_100k_peers");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(15));
    let mut next = 0usize;
    group.bench_function("handshakes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Initiations made outside the timed part: each peer's timestamps increase,
                // and one peer is used again only after the others (its flood limit is 20 ms).
                let now = Instant::now();
                let batch: Vec<(SocketAddr, [u8; 148])> = (0..BATCH)
                    .map(|_| {
                        let i = &mut initiators[next % INITIATORS];
                        next += 1;
                        clock += 1;
                        let ts = Tai64N::from_system_time(
                            SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31) + Duration::from_millis(20 * clock),
                        );
                        let msg = i.handshake.create_initiation(&i.identity, next as u32, ts, now).expect("initiation");
                        (i.addr, msg)
                    })
                    .collect();
                net.recording.store(true, Ordering::Relaxed);
                let _ = responses(&net);
                let start = Instant::now();
                for (from, msg) in &batch {
                    net.inject(*from, to, msg);
                }
                let mut answered = 0;
                let deadline = start + Duration::from_secs(20);
                while answered < BATCH {
                    assert!(
                        Instant::now() < deadline,
                        "only {answered} of {BATCH} initiations answered: {}",
                        dev.shared.drop_totals().summary()
                    );
                    std::thread::sleep(Duration::from_micros(200));
                    answered += responses(&net);
                }
                total += start.elapsed();
                net.recording.store(false, Ordering::Relaxed);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, responder);
criterion_main!(benches);
