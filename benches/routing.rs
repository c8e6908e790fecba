//! Allowed-IPs longest-prefix lookup by table size, IPv4 and IPv6.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use wgturbo::routing::Trie;

/// `size` random prefixes from `key()` with lengths in `lens`, and 4096 probes that each fall
/// inside one of them (a host part varied), in a scattered order so the cache does not help.
fn table(
    size: usize,
    key: impl Fn(&mut rand::rngs::StdRng) -> u128,
    lens: std::ops::RangeInclusive<u8>,
    host: u32,
) -> (Trie<u32>, Vec<u128>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(size as u64);
    let mut trie = Trie::default();
    let mut keys = Vec::with_capacity(size);
    for i in 0..size {
        let k = key(&mut rng);
        trie.insert(k, rng.gen_range(lens.clone()), i as u32);
        keys.push(k);
    }
    let probes = (0..4096).map(|i| keys[(i * 7919) % size] | ((rng.gen::<u8>() as u128) << host)).collect();
    (trie, probes)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("allowed_ips_lookup");
    for size in [1_000usize, 100_000, 1_000_000] {
        // IPv4-like prefixes of /16 to /32, as a gateway's peers would have.
        let (trie, probes) = table(size, |r| (r.gen::<u32>() as u128) << 96, 16..=32, 96);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("v4", size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(trie.lookup(probes[i]))
            })
        });
    }
    // IPv6: a million /64 to /128 inside one /32, as a provider's gateway would hand out.
    let size = 1_000_000;
    let base = 0x2001_0db8u128 << 96;
    let (trie, probes) = table(size, |r| base | (r.gen::<u128>() >> 32), 64..=128, 0);
    let mut i = 0;
    group.bench_with_input(BenchmarkId::new("v6", size), &size, |b, _| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(trie.lookup(probes[i]))
        })
    });
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
