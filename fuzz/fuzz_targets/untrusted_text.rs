//! Bytes from anyone that are not WireGuard messages: a metrics request head (any local user
//! can send one) and what wgturbo-load's receiving ends take from the network (the inner
//! packets a sink or a twin host sees, the datagrams a gateway sends the load's peers).
#![no_main]
use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wgturbo::load::traffic::{parse_udp4, Stamp};
use wgturbo::load::{DownloadCounter, FlowStats};
use wgturbo::metrics::http::{route, Route};
use wgturbo::noise::SessionKeys;
use wgturbo::session::Keypair;

static KEYPAIR: LazyLock<Arc<Keypair>> = LazyLock::new(|| {
    let keys = SessionKeys { local_index: 7, remote_index: 8, send: [1; 32], recv: [2; 32], is_initiator: true };
    Arc::new(Keypair::new(&keys, Instant::now()))
});

fuzz_target!(|data: &[u8]| {
    match route(data, "/metrics") {
        Route::Page { .. } => assert!(data.windows(8).any(|w| w == b"/metrics")),
        Route::Root { .. } | Route::NotFound { .. } | Route::NotAllowed => {}
    }
    if let Some((_, _, payload)) = parse_udp4(data) {
        assert!(payload.len() + 28 <= data.len());
    }
    let _ = Stamp::parse(data);
    let now = Instant::now();
    let mut flows = FlowStats::default();
    flows.count_payload(data, now);
    flows.count_packet(data, now);
    let mut counter = DownloadCounter::new(vec![(7, KEYPAIR.clone(), Ipv4Addr::new(10, 0, 0, 2))], 1);
    let mut copy = data.to_vec();
    counter.count(&mut copy, now);
    assert!(counter.verified == 0, "nothing forged opens");
});
