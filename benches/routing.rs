//! Allowed-IPs longest-prefix lookup by table size.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use wgturbo::routing::Trie;

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("allowed_ips_lookup");
    for size in [1_000usize, 100_000, 1_000_000] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(size as u64);
        let mut trie = Trie::default();
        let mut keys = Vec::with_capacity(size);
        // IPv4-like prefixes of /16 to /32, as a gateway's peers would have.
        for i in 0..size {
            let key = (rng.gen::<u32>() as u128) << 96;
            trie.insert(key, rng.gen_range(16..=32), i as u32);
            keys.push(key);
        }
        let probes: Vec<u128> =
            (0..4096).map(|i| keys[(i * 7919) % size] | ((rng.gen::<u8>() as u128) << 96)).collect();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(trie.lookup(probes[i]))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
