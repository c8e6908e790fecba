//! Memory and build time of an allowed-IPs table of a million scattered prefixes, as the
//! routing benchmark builds it (`cargo bench --bench routing` times the lookups):
//! `cargo run --release --example routing_memory`. Prints bytes per prefix (growth of the
//! resident set while the table is built) and the build time, for IPv4 /16-/32 and IPv6
//! /64-/128 under one /32.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use wgturbo::routing::Trie;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn measure(name: &str, size: usize, key: impl Fn(&mut rand::rngs::StdRng) -> u128, lens: std::ops::RangeInclusive<u8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(size as u64);
    let keys: Vec<(u128, u8)> = (0..size).map(|_| (key(&mut rng), rng.gen_range(lens.clone()))).collect();
    let before = resident_bytes();
    let started = Instant::now();
    let mut trie = Trie::default();
    for (i, &(k, l)) in keys.iter().enumerate() {
        trie.insert(k, l, i as u32);
    }
    let took = started.elapsed();
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "{name}: {} prefixes, {:.0} B/prefix, built in {:.2} s",
        trie.len(),
        grown as f64 / trie.len() as f64,
        took.as_secs_f64()
    );
    drop(trie);
}

/// Each table in a process of its own: memory freed by the first would be reused by the
/// second without growing the resident set.
fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("v4") => measure("v4 /16-/32", 1_000_000, |r| (r.gen::<u32>() as u128) << 96, 16..=32),
        Some("v6") => {
            let base = 0x2001_0db8u128 << 96;
            measure("v6 /64-/128 under a /32", 1_000_000, |r| base | (r.gen::<u128>() >> 32), 64..=128)
        }
        _ => {
            let Ok(me) = std::env::current_exe() else { return };
            for family in ["v4", "v6"] {
                if let Err(e) = std::process::Command::new(&me).arg(family).status() {
                    eprintln!("{family}: {e}");
                }
            }
        }
    }
}
