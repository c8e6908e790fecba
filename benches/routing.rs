//! Allowed-IPs longest-prefix lookup by table size, IPv4 and IPv6; receiver-index lookup (the
//! keyed permutation, then the slot) by the number of live indices.

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

/// A transport message's receiver index to its keypair: O(1) whatever the number of live
/// indices (1,000 or 1,000,000), the permutation's few multiplies included.
fn index_lookup(c: &mut Criterion) {
    use std::sync::Arc;
    use std::time::Instant;
    use wgturbo::dataplane::indices::{IndexAllocator, IndexTable};
    use wgturbo::dataplane::shared::{IndexEntry, PeerShared};
    use wgturbo::keys::PrivateKey;
    use wgturbo::noise::SessionKeys;
    use wgturbo::session::Keypair;
    let mut group = c.benchmark_group("receiver_index_lookup");
    let peer = Arc::new(PeerShared::new(PrivateKey::generate().public_key()));
    for size in [1_000usize, 1_000_000] {
        let mut a = IndexAllocator::new(Arc::new(IndexTable::default()));
        let mut live = Vec::with_capacity(size);
        for _ in 0..size {
            let Some(index) = a.allocate() else { break };
            let keys =
                SessionKeys { local_index: index, remote_index: 1, send: [1; 32], recv: [2; 32], is_initiator: true };
            a.insert(IndexEntry { keypair: Arc::new(Keypair::new(&keys, Instant::now())), peer: peer.clone() });
            live.push(index);
        }
        let probes: Vec<u32> = (0..4096).map(|i| live[(i * 7919) % live.len()]).collect();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("live", size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(a.table().get(probes[i]).is_some())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, index_lookup);
criterion_main!(benches);
