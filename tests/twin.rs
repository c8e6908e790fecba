//! Whole devices over the in-memory twins of TUN and UDP, in one process, without root: the
//! handshake, data both ways, the batching limits, the GSO fallback, and hostile datagrams.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wgturbo::dataplane::pool::ParallelCrypto;
use wgturbo::device::{BackgroundDevice, DeviceIo};
use wgturbo::io::twin::{TwinHost, TwinNet};
use wgturbo::io::vnet::VNET_HDR_LEN;
use wgturbo::keys::PrivateKey;

mod common;
use common::packets::{checksum, tso_read, udp_packet};

struct Node {
    dev: BackgroundDevice,
    host: TwinHost,
    /// The host sides of queues 1.. (kept open; the tests feed queue 0).
    _more_hosts: Vec<TwinHost>,
    key: PrivateKey,
    port: u16,
}

fn node(net: &Arc<TwinNet>, port: u16, vnet: bool, workers: usize) -> Node {
    let (io, mut hosts) = DeviceIo::twin(net, workers, vnet, ParallelCrypto::Always);
    let dev = BackgroundDevice::spawn(io).expect("device starts");
    let key = PrivateKey::generate();
    let reply = dev.uapi(&format!("set=1\nprivate_key={}\nlisten_port={port}\n", key.to_hex()));
    assert_eq!(reply, "errno=0\n\n");
    let host = hosts.remove(0);
    Node { dev, host, _more_hosts: hosts, key, port }
}

/// A with 10.0.0.1, B with 10.0.0.2, each the other's peer.
fn pair(net: &Arc<TwinNet>, vnet_a: bool, vnet_b: bool) -> (Node, Node) {
    pair_with_workers(net, vnet_a, vnet_b, 1)
}

fn pair_with_workers(net: &Arc<TwinNet>, vnet_a: bool, vnet_b: bool, workers_a: usize) -> (Node, Node) {
    pair_with(net, vnet_a, vnet_b, workers_a, 1)
}

fn pair_with(net: &Arc<TwinNet>, vnet_a: bool, vnet_b: bool, workers_a: usize, workers_b: usize) -> (Node, Node) {
    let a = node(net, 51001, vnet_a, workers_a);
    let b = node(net, 51002, vnet_b, workers_b);
    for (me, other, ip) in [(&a, &b, "10.0.0.2"), (&b, &a, "10.0.0.1")] {
        let reply = me.dev.uapi(&format!(
            "set=1\npublic_key={}\nendpoint=127.0.0.1:{}\nallowed_ip={ip}/32\n",
            other.key.public_key().to_hex(),
            other.port
        ));
        assert_eq!(reply, "errno=0\n\n");
    }
    (a, b)
}

fn recv(host: &TwinHost) -> Vec<u8> {
    host.recv.recv_timeout(Duration::from_secs(10)).expect("a packet arrives through the tunnel")
}

fn get(dev: &BackgroundDevice, key: &str) -> Vec<String> {
    let text = dev.uapi("get=1\n");
    text.lines().filter_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('='))).map(str::to_string).collect()
}

/// Sends A -> B until the handshake is done and a packet crosses (the first is staged).
fn establish(a: &Node, b: &Node) {
    let probe = udp_packet(1, 2, b"hello");
    a.host.send.send(probe.clone()).unwrap();
    assert_eq!(recv(&b.host), probe, "the staged packet is delivered once the handshake is done");
}

#[test]
fn two_devices_handshake_and_exchange_data_both_ways() {
    let net = TwinNet::new();
    let (a, b) = pair(&net, false, false);
    establish(&a, &b);
    for i in 0..200u32 {
        let to_b = udp_packet(1, 2, &i.to_be_bytes().repeat(300));
        a.host.send.send(to_b.clone()).unwrap();
        assert_eq!(recv(&b.host), to_b);
        let to_a = udp_packet(2, 1, &i.to_le_bytes().repeat(7));
        b.host.send.send(to_a.clone()).unwrap();
        assert_eq!(recv(&a.host), to_a);
    }
    let handshake = get(&a.dev, "last_handshake_time_sec");
    assert!(handshake.iter().all(|s| s != "0") && !handshake.is_empty(), "wg show sees the handshake");
    let rx: u64 = get(&b.dev, "rx_bytes")[0].parse().unwrap();
    assert!(rx > 200 * 1200, "B counted what it received: {rx}");
    // Nothing is routed to an address no peer has: A answers its host with ICMP unreachable.
    a.host.send.send(udp_packet(1, 99, b"nobody")).unwrap();
    let icmp = recv(&a.host);
    assert_eq!((icmp[9], icmp[20]), (1, 3), "ICMP destination unreachable");
    assert_eq!(a.dev.shared.drop_totals().no_peer_for_destination, 1);
}

/// The reassembled payload of the TCP segments B's host got (no vnet_hdr on B).
fn collect_tcp_payload(host: &TwinHost, want: usize) -> Vec<u8> {
    let mut segments: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while got < want && Instant::now() < deadline {
        let Ok(p) = host.recv.recv_timeout(Duration::from_millis(500)) else { continue };
        assert_eq!(p[9], 6, "a TCP segment");
        assert_eq!(checksum(&p[..20]), 0, "IPv4 header checksum holds");
        // The TCP checksum, over the pseudo-header (addresses, protocol, length) and segment.
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(checksum(&pseudo), 0, "TCP checksum holds");
        let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
        got += p.len() - 40;
        segments.push((seq, p[40..].to_vec()));
    }
    segments.sort_by_key(|(s, _)| *s);
    segments.into_iter().flat_map(|(_, d)| d).collect()
}

/// Wakes the tunnel with one datagram (A's queue has a vnet_hdr), then writes `reads` TSO
/// reads of 64,000 bytes cut at `mss` into A; returns what was sent and what B's host got.
fn tso_through(a: &Node, b: &Node, reads: usize, mss: u16) -> (Vec<u8>, Vec<u8>) {
    let mut hello = vec![0u8; VNET_HDR_LEN];
    hello.extend_from_slice(&udp_packet(1, 2, b"hello"));
    a.host.send.send(hello).unwrap();
    recv(&b.host);
    let payload: Vec<u8> = (0..(reads * 64_000) as u32).map(|i| (i % 251) as u8).collect();
    for (k, part) in payload.chunks(64_000).enumerate() {
        a.host.send.send(tso_read(1, 2, 1 + (k * 64_000) as u32, part, mss)).unwrap();
    }
    let got = collect_tcp_payload(&b.host, payload.len());
    (payload, got)
}

/// A TCP peer may ask for an MSS of 48: one 64 KiB TSO read then makes about 1,350 sends,
/// and without UDP GSO each is a message of its own. Two such reads exceed the send batch;
/// the worker must flush and go on, never overflow (it used to panic and strand the queue).
#[test]
fn tso_reads_at_mss_48_without_gso_arrive_whole() {
    let net = TwinNet::new();
    net.refuse_gso.store(true, Ordering::Relaxed);
    let (a, b) = pair(&net, true, false);
    let (payload, got) = tso_through(&a, &b, 2, 48);
    assert_eq!(got.len(), payload.len(), "every segment arrived");
    assert!(got == payload, "in order and intact");
    assert_eq!(a.dev.shared.drop_totals().worker_restarts, 0, "no worker panicked");
}

/// Cut segments get their TCP checksum from whichever worker seals their chunk, right before
/// the seal: with two sending workers and UDP GSO, every segment still arrives with a valid
/// checksum, in order.
#[test]
fn tso_reads_through_two_sending_workers_carry_valid_checksums() {
    let net = TwinNet::new();
    let (a, b) = pair_with_workers(&net, true, false, 2);
    let (payload, got) = tso_through(&a, &b, 8, 1380);
    assert!(got == payload, "every segment arrived, in order and intact ({} of {})", got.len(), payload.len());
}

/// With GSO refused by the "kernel" the sender falls back to one datagram per message, and
/// with GSO working the same super-packet goes out in GSO groups.
#[test]
fn udp_gso_used_when_accepted_and_dropped_when_refused() {
    for refuse in [false, true] {
        let net = TwinNet::new();
        net.refuse_gso.store(refuse, Ordering::Relaxed);
        let (a, b) = pair(&net, true, false);
        let mut hello = vec![0u8; VNET_HDR_LEN];
        hello.extend_from_slice(&udp_packet(1, 2, b"hello"));
        a.host.send.send(hello).unwrap();
        recv(&b.host);
        let payload = vec![7u8; 30_000];
        a.host.send.send(tso_read(1, 2, 1, &payload, 1200)).unwrap();
        assert_eq!(collect_tcp_payload(&b.host, payload.len()).len(), payload.len());
        let gso_sends = net.gso_sends.load(Ordering::Relaxed);
        if refuse {
            assert_eq!(gso_sends, 0);
        } else {
            assert!(gso_sends > 0, "runs of equal datagrams went out as GSO groups");
        }
    }
}

/// Handshake messages of the wrong size never reach the control thread; a replayed transport
/// packet from another source is refused and does not move the endpoint.
#[test]
fn wrong_sized_handshakes_and_replays_are_counted_drops() {
    let net = TwinNet::new();
    let (a, b) = pair(&net, false, false);
    establish(&a, &b);
    let b_addr = TwinNet::address(b.port);
    let attacker: SocketAddr = TwinNet::address(60_000);
    for (kind, len) in [(1u8, 149usize), (1, 147), (2, 93), (3, 63), (1, 4)] {
        let mut d = vec![0u8; len];
        d[0] = kind;
        net.inject(attacker, b_addr, &d);
    }
    net.recording.store(true, Ordering::Relaxed);
    let data = udp_packet(1, 2, b"once only");
    a.host.send.send(data.clone()).unwrap();
    assert_eq!(recv(&b.host), data);
    net.recording.store(false, Ordering::Relaxed);
    let sent: Vec<_> = net.take_recorded().into_iter().filter(|(_, to, d)| *to == b_addr && d[0] == 4).collect();
    assert!(!sent.is_empty(), "the transport packet was seen on the wire");
    for (_, _, d) in &sent {
        net.inject(attacker, b_addr, d);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.host.recv.try_recv().is_err(), "a replay delivers nothing");
    let drops = b.dev.shared.drop_totals();
    assert!(drops.malformed >= 5, "{}", drops.summary());
    assert_eq!(drops.replayed, sent.len() as u64, "{}", drops.summary());
    let endpoint = get(&b.dev, "endpoint");
    assert_eq!(endpoint, vec![format!("127.0.0.1:{}", a.port)], "the endpoint did not roam to the replayer");
}

/// The TCP payload B's host gets (no vnet_hdr on B), asserting that every segment arrives
/// after the one before it: B has one worker and delivers in arrival order, so a segment out
/// of sequence means it left A out of order.
fn collect_in_sequence(host: &TwinHost, want: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(want);
    let mut last_seq = 0u32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        let Ok(p) = host.recv.recv_timeout(Duration::from_millis(500)) else { continue };
        let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
        assert!(seq > last_seq, "segment {seq} arrived after {last_seq}: out of order");
        last_seq = seq;
        got.extend_from_slice(&p[40..]);
    }
    got
}

/// One flow on a 2-worker device: its reads come from one TUN queue, the second worker helps
/// seal chunks of the batch, and the datagrams must still leave in nonce order. B has one
/// worker and delivers in arrival order, so a segment out of order at B's host means one left
/// A out of order.
#[test]
fn parallel_seal_keeps_one_flow_in_order() {
    let net = TwinNet::new();
    let (a, b) = pair_with_workers(&net, true, false, 2);
    let mut hello = vec![0u8; VNET_HDR_LEN];
    hello.extend_from_slice(&udp_packet(1, 2, b"hello"));
    a.host.send.send(hello).unwrap();
    recv(&b.host);
    let reads = 120;
    let payload: Vec<u8> = (0..reads * 60_000u32).map(|i| (i % 253) as u8).collect();
    for (k, part) in payload.chunks(60_000).enumerate() {
        a.host.send.send(tso_read(1, 2, 1 + (k * 60_000) as u32, part, 1380)).unwrap();
    }
    let got = collect_in_sequence(&b.host, payload.len());
    assert_eq!(got.len(), payload.len(), "every segment arrived");
    assert!(got == payload, "intact");
    assert_eq!(b.dev.shared.drop_totals().replayed, 0, "{}", b.dev.shared.drop_totals().summary());
    assert_eq!(a.dev.shared.drop_totals().worker_restarts, 0);
    // Chunks went through the pool (which worker sealed them is the scheduler's choice).
    let pool = &a.dev.shared.crypto_pool;
    assert!(pool.jobs_shared() > 0, "chunks of the flow were handed to the pool");
    eprintln!("{} of {} shared chunks sealed by the other worker", pool.jobs_helped(), pool.jobs_shared());
}

/// One flow into a 2-worker device with UDP GRO: its datagrams all reach one socket (as
/// SO_REUSEPORT hashes by source), the second worker decrypts some of the GRO trains, and the
/// owner still delivers in arrival order and checks the replay window exactly: a replay of
/// the whole flow afterwards delivers nothing.
#[test]
fn parallel_open_keeps_one_flow_in_order_and_replays_out() {
    let net = TwinNet::new();
    net.gro.store(true, Ordering::Relaxed);
    let (a, b) = pair_with(&net, true, false, 1, 2);
    let mut hello = vec![0u8; VNET_HDR_LEN];
    hello.extend_from_slice(&udp_packet(1, 2, b"hello"));
    a.host.send.send(hello).unwrap();
    recv(&b.host);
    net.recording.store(true, Ordering::Relaxed);
    let reads = 120;
    let payload: Vec<u8> = (0..reads * 60_000u32).map(|i| (i % 251) as u8).collect();
    for (k, part) in payload.chunks(60_000).enumerate() {
        a.host.send.send(tso_read(1, 2, 1 + (k * 60_000) as u32, part, 1380)).unwrap();
    }
    let got = collect_in_sequence(&b.host, payload.len());
    net.recording.store(false, Ordering::Relaxed);
    assert_eq!(got.len(), payload.len(), "every segment arrived: {}", b.dev.shared.drop_totals().summary());
    assert!(got == payload, "intact");
    // Receives went through the pool, where either worker may open them; which one did is
    // the scheduler's choice (on a loaded machine the owner may drain its own jobs first), so
    // it is reported, not required.
    let pool = &b.dev.shared.crypto_pool;
    assert!(pool.jobs_shared() > 0, "receives of the flow were handed to the pool");
    eprintln!("{} of {} shared receives opened by the other worker", pool.jobs_helped(), pool.jobs_shared());
    // Replay everything A sent, from A's own address (so the same socket takes it).
    let to_b = TwinNet::address(b.port);
    let sent: Vec<_> = net.take_recorded().into_iter().filter(|(_, to, d)| *to == to_b && d[0] == 4).collect();
    for (from, to, d) in &sent {
        net.inject(*from, *to, d);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(b.host.recv.try_recv().is_err(), "a replay delivers nothing");
    let replayed = b.dev.shared.drop_totals().replayed;
    assert_eq!(replayed, sent.len() as u64, "{}", b.dev.shared.drop_totals().summary());
}

/// The value of one sample of the metrics page, by its name and labels as printed.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{page}"))
}

/// The metrics page: the exporter's names with the peer's public key, counters that follow
/// the traffic, and drop reasons that count what was sent (spoofed inner sources, garbage).
/// No private or preshared key appears anywhere on it.
#[test]
fn metrics_count_traffic_handshakes_and_drops_by_reason() {
    let net = TwinNet::new();
    let (a, b) = pair(&net, false, false);
    let psk = wgturbo::keys::PresharedKey::generate();
    for (me, other) in [(&a, &b), (&b, &a)] {
        let reply = me.dev.uapi(&format!(
            "set=1\npublic_key={}\npreshared_key={}\n",
            other.key.public_key().to_hex(),
            psk.to_hex()
        ));
        assert_eq!(reply, "errno=0\n\n");
    }
    let before = b.dev.metrics().render();
    establish(&a, &b);
    for i in 0..50u32 {
        a.host.send.send(udp_packet(1, 2, &i.to_be_bytes().repeat(250))).unwrap();
        recv(&b.host);
    }
    // A spoofs its inner source: B must drop each as not allowed from A.
    for _ in 0..7 {
        a.host.send.send(udp_packet(77, 2, b"spoofed")).unwrap();
    }
    // Garbage datagrams from nowhere: too short or of no message type.
    let b_addr = TwinNet::address(b.port);
    for garbage in [&b"x"[..], &[9u8; 40], &[0u8; 3], &[]] {
        net.inject(TwinNet::address(60_001), b_addr, garbage);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = b.dev.metrics().render();
        let settled = page.contains(r#"wgturbo_packets_dropped_total{device="twin",reason="source_not_allowed"} 7"#)
            && sample(&page, r#"wgturbo_packets_dropped_total{device="twin",reason="malformed"}"#) >= 4.0;
        if settled || Instant::now() > deadline {
            // Once more: the peer counters are rendered before the drops, so the page that
            // saw the last drop may predate its bytes.
            break b.dev.metrics().render();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let a_key = a.key.public_key().to_base64();
    let peer = format!(r#"{{device="twin",public_key="{a_key}"}}"#);
    assert_eq!(sample(&page, r#"wgturbo_packets_dropped_total{device="twin",reason="source_not_allowed"}"#), 7.0);
    assert_eq!(sample(&page, r#"wgturbo_packets_dropped_total{device="twin",reason="malformed"}"#), 4.0);
    let rx = sample(&page, &format!("wireguard_peer_receive_bytes_total{peer}"));
    assert!(rx >= 50.0 * 1000.0, "B counted what came from A: {rx}");
    assert_eq!(rx, get(&b.dev, "rx_bytes")[0].parse::<f64>().unwrap(), "the same figure as wg show transfer");
    assert!(sample(&page, &format!("wireguard_peer_transmit_bytes_total{peer}")) > 0.0);
    assert!(sample(&page, &format!("wireguard_peer_last_handshake_seconds{peer}")) > 1.7e9);
    assert!(page.contains(&format!(
        r#"wireguard_peer_info{{allowed_ips="10.0.0.1/32",device="twin",endpoint="127.0.0.1:{}",public_key="{a_key}"}} 1"#,
        a.port
    )));
    let b_key = b.key.public_key().to_base64();
    assert!(page.contains(&format!(r#"wireguard_device_info{{device="twin",public_key="{b_key}"}} 1"#)));
    assert_eq!(sample(&page, r#"wgturbo_handshakes_completed_total{device="twin",role="responder"}"#), 1.0);
    assert_eq!(sample(&page, r#"wgturbo_handshake_messages_received_total{device="twin",type="initiation"}"#), 1.0);
    assert_eq!(sample(&page, r#"wgturbo_handshake_messages_sent_total{device="twin",type="response"}"#), 1.0);
    assert_eq!(sample(&page, r#"wgturbo_under_load{device="twin"}"#), 0.0);
    assert_eq!(sample(&page, r#"wgturbo_control_responsive{device="twin"}"#), 1.0);
    let inbound = sample(&page, r#"wgturbo_worker_packets_total{device="twin",direction="inbound",worker="0"}"#);
    assert!(inbound >= 60.0, "the worker counted the datagrams it received: {inbound}");
    assert!(
        sample(&before, r#"wgturbo_worker_packets_total{device="twin",direction="inbound",worker="0"}"#) < inbound,
        "counters grow"
    );
    assert!(page.contains(r#"wgturbo_info{backend="in-memory twin",device="twin""#), "{page}");
    assert_eq!(sample(&page, r#"wgturbo_peers{device="twin"}"#), 1.0,);
    // Secrets never: neither private key nor the preshared key, in any encoding.
    for secret in [b.key.to_base64(), b.key.to_hex(), psk.to_base64(), psk.to_hex()] {
        assert!(!page.contains(&secret), "a secret is on the metrics page");
    }
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("wireguard_") || line.starts_with("wgturbo_"), "{line}");
    }
}

/// A UDP datagram corrupted before it was sealed (its checksum fails) reaches the receiving
/// host as it was sent, alone, for the kernel to drop: never merged into a GRO super-packet,
/// whose checksum the kernel would compute afresh. Its valid neighbours still arrive intact.
#[test]
fn a_corrupted_datagram_is_delivered_alone_and_unrepaired() {
    use wgturbo::load::traffic::{build_udp4, Stamp};
    let net = TwinNet::new();
    let (a, b) = pair(&net, false, true);
    let mut hello = vec![0u8; 100];
    let from = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 1), 4000);
    let to = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 2), 5000);
    let n = build_udp4(&mut hello, from, to, 100, Stamp { flow: 0, seq: 0 });
    hello.truncate(n);
    a.host.send.send(hello).unwrap();
    recv(&b.host);
    let mut sent = Vec::new();
    for seq in 1..=40u64 {
        let mut p = vec![0u8; 600];
        let n = build_udp4(&mut p, from, to, 600, Stamp { flow: 0, seq });
        p.truncate(n);
        if seq % 10 == 5 {
            p[300] ^= 0x10; // corrupted after its checksum was written
        }
        sent.push(p);
    }
    for p in &sent {
        a.host.send.send(p.clone()).unwrap();
    }
    // Collect B's host side: frames with a virtio_net_hdr, some GRO super-packets.
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut corrupt_frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while payloads.len() < sent.len() && Instant::now() < deadline {
        let Ok(frame) = b.host.recv.recv_timeout(Duration::from_millis(200)) else { continue };
        let pkt = &frame[VNET_HDR_LEN..];
        let seg = 600 - 28;
        let body = &pkt[28..];
        if body.chunks(seg).any(|c| sent.iter().any(|s| s[28..] == *c && checksum_fails(s))) {
            corrupt_frames.push(frame.clone());
        }
        payloads.extend(body.chunks(seg).map(<[u8]>::to_vec));
    }
    assert_eq!(payloads.len(), sent.len(), "every datagram arrived");
    assert_eq!(corrupt_frames.len(), 4);
    for f in &corrupt_frames {
        assert_eq!(f[0], 0, "no NEEDS_CSUM: the kernel checks it as it is");
        let pkt = &f[VNET_HDR_LEN..];
        assert!(sent.iter().any(|s| s[..] == *pkt), "written alone and unchanged");
    }
}

fn checksum_fails(p: &[u8]) -> bool {
    let mut pseudo = p[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    checksum(&pseudo) != 0
}

/// The side path on the twins, steered as the kernel steers a port's group: handshake
/// messages and garbage reach the side socket's reader (not a worker), the tunnel comes up
/// through it, every kind of garbage (empty datagrams too) is counted as malformed, and the
/// worker sees only transport messages.
#[test]
fn steered_handshakes_and_garbage_take_the_side_path() {
    let net = TwinNet::new();
    net.steering.store(true, Ordering::Relaxed);
    let (a, b) = pair(&net, false, false);
    assert!(b.dev.shared.side_socket.load().is_some(), "a steered group has a side socket");
    establish(&a, &b);
    for i in 0..20u32 {
        let to_b = udp_packet(1, 2, &i.to_be_bytes().repeat(100));
        a.host.send.send(to_b.clone()).unwrap();
        assert_eq!(recv(&b.host), to_b);
    }
    let b_addr = TwinNet::address(b.port);
    let garbage: [&[u8]; 5] = [b"x", &[9u8; 40], &[0u8; 3], &[], &[1, 0, 0, 0]];
    for g in garbage {
        net.inject(TwinNet::address(60_001), b_addr, g);
    }
    let shared = &b.dev.shared;
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.drop_totals().malformed < garbage.len() as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(shared.drop_totals().malformed, garbage.len() as u64, "{}", shared.drop_totals().summary());
    assert_eq!(shared.handshakes.initiations_received.load(Ordering::Relaxed), 1, "the side reader counted it");
    let inbound = shared.workers[0].udp_datagrams.load(Ordering::Relaxed);
    assert!((21..=22).contains(&inbound), "the worker got the transport messages only: {inbound}");
}

/// The side path under a flood, on the twins: initiations with a valid mac1 from one source
/// make the device answer with cookie replies from its side socket (gate), cap the source,
/// and thin it before its datagrams queue (the twin's filter); the workers never see the
/// flood, and an established tunnel keeps carrying data all along.
#[test]
fn a_flood_takes_the_side_path_and_the_tunnel_carries_on() {
    use wgturbo::noise::messages::{INITIATION_LEN, MESSAGE_INITIATION};
    use wgturbo::noise::{CookieGenerator, Initiation};
    let net = TwinNet::new();
    net.steering.store(true, Ordering::Relaxed);
    let (a, b) = pair(&net, false, false);
    establish(&a, &b);
    let shared = &b.dev.shared;
    let inbound_before = shared.workers[0].udp_datagrams.load(Ordering::Relaxed);
    let mut generator = CookieGenerator::new(&b.key.public_key());
    let flooder = TwinNet::address(60_002);
    let b_addr = TwinNet::address(b.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    let mut delivered = 0;
    while Instant::now() < deadline {
        for _ in 0..2_000 {
            let mut msg = [7u8; INITIATION_LEN];
            msg[..4].copy_from_slice(&MESSAGE_INITIATION.to_le_bytes());
            msg[4..8].copy_from_slice(&(sent as u32).to_le_bytes());
            generator.stamp(&mut msg, Initiation::MAC1_OFFSET, Initiation::MAC2_OFFSET, Instant::now());
            net.inject(flooder, b_addr, &msg);
            sent += 1;
        }
        // The tunnel is unaffected: a packet crosses in the middle of the flood.
        let to_b = udp_packet(1, 2, &sent.to_be_bytes());
        a.host.send.send(to_b.clone()).unwrap();
        assert_eq!(recv(&b.host), to_b, "the tunnel carries data during the flood");
        delivered += 1;
        let h = &shared.handshakes;
        let thinned = shared.drop_totals().handshake_dropped_by_kernel;
        if h.cookie_replies_sent.load(Ordering::Relaxed) > 0
            && h.rate_limited.load(Ordering::Relaxed) > 0
            && thinned > 0
        {
            break;
        }
    }
    let h = &shared.handshakes;
    let drops = shared.drop_totals();
    let (answered, capped) = (h.cookie_replies_sent.load(Ordering::Relaxed), h.rate_limited.load(Ordering::Relaxed));
    eprintln!(
        "{sent} sent: {answered} cookie replies, {capped} capped, {}; {delivered} packets crossed",
        drops.summary()
    );
    assert!(answered > 0, "the gate answered with cookies");
    assert!(capped > 0, "the source was capped");
    assert!(drops.handshake_dropped_by_kernel > 0, "the source was thinned before its datagrams queued");
    let inbound = shared.workers[0].udp_datagrams.load(Ordering::Relaxed) - inbound_before;
    assert_eq!(inbound, delivered, "the worker saw the tunnel's datagrams only, never the flood");
}

/// A rebound port takes effect for the next packet a waiting worker sends: the worker was
/// asleep when `listen_port` changed, and the packet that wakes it must leave from the new
/// port, or the peer roams to the old one, which nothing reads any more.
#[test]
fn a_packet_after_a_rebind_leaves_from_the_new_port() {
    let net = TwinNet::new();
    let (a, b) = pair(&net, false, false);
    establish(&a, &b);
    let to_a = udp_packet(2, 1, b"before");
    b.host.send.send(to_a.clone()).unwrap();
    assert_eq!(recv(&a.host), to_a);
    for port in [51003u16, 51004, 51005] {
        // B's worker is asleep in its wait by now.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.dev.uapi(&format!("set=1\nlisten_port={port}\n")), "errno=0\n\n");
        let to_a = udp_packet(2, 1, &port.to_be_bytes());
        b.host.send.send(to_a.clone()).unwrap();
        assert_eq!(recv(&a.host), to_a);
        assert_eq!(get(&a.dev, "endpoint"), vec![format!("127.0.0.1:{port}")], "A sees B's new port");
        let to_b = udp_packet(1, 2, &port.to_le_bytes());
        a.host.send.send(to_b.clone()).unwrap();
        assert_eq!(recv(&b.host), to_b, "and reaches B there");
    }
}
