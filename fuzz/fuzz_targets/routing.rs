//! The allowed-IPs trie against a list scanned for the longest match: any sequence of
//! inserts, removals and lookups, with a root that turns wide after a few entries
//! (the first byte picks how many), must answer exactly as the list does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wgturbo::routing::Trie;

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        !0u128 << (128 - len as u32)
    }
}

fn scan(list: &[(u128, u8, u32)], key: u128) -> Option<u32> {
    list.iter().filter(|(k, l, _)| (key ^ k) & mask(*l) == 0).max_by_key(|(_, l, _)| *l).map(|(_, _, v)| *v)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut ops)) = data.split_first() else { return };
    let mut trie = Trie::with_wide_at(1 + first as usize % 48);
    let mut list: Vec<(u128, u8, u32)> = Vec::new();
    // Keys vary in 32 bits placed anywhere over one base, so prefixes nest and share paths.
    let base = 0x2001_0db8_85a3_0000_0000_8a2e_0370_7334u128;
    let mut value = 0u32;
    while let [op, len, a, b, c, d, rest @ ..] = ops {
        ops = rest;
        let material = u32::from_be_bytes([*a, *b, *c, *d]) as u128;
        let key = base ^ (material << (*op as u32 >> 1));
        let len = len % 129;
        match op & 7 {
            0..=3 => {
                value += 1;
                let k = key & mask(len);
                let old = list.iter().position(|e| e.0 == k && e.1 == len).map(|i| list.swap_remove(i).2);
                list.push((k, len, value));
                assert_eq!(trie.insert(key, len, value), old);
            }
            4..=6 => {
                // Mostly an entry that is there; sometimes one that is not.
                let (k, l) = match list.get(material as usize % (list.len() + 1)) {
                    Some(&(k, l, _)) => (k, l),
                    None => (key & mask(len), len),
                };
                let old = list.iter().position(|e| e.0 == k && e.1 == l).map(|i| list.swap_remove(i).2);
                assert_eq!(trie.remove(k, l), old);
            }
            _ => {}
        }
        assert_eq!(trie.len(), list.len());
        for probe in [key, key ^ 1, key ^ (1 << 64), !key, base] {
            assert_eq!(trie.lookup(probe).copied(), scan(&list, probe), "{probe:x}");
        }
    }
    let mut entries = trie.entries();
    entries.sort();
    list.sort();
    assert_eq!(entries, list);
});
