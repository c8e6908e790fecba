//! wgturbo-load's parts through an in-process wgturbo device over the twins, without root:
//! the handshakes of many peers, upload to a sink behind the device and download from a
//! source behind it, with every packet accounted for and every downloaded one authentic.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wgturbo::dataplane::pool::ParallelCrypto;
use wgturbo::device::{BackgroundDevice, DeviceIo};
use wgturbo::io::twin::{TwinHost, TwinNet};
use wgturbo::io::Socket;
use wgturbo::keys::PrivateKey;
use wgturbo::load::run;
use wgturbo::load::traffic::{build_udp4, Stamp};
use wgturbo::load::upload::{Sender, Uploader};
use wgturbo::load::{DownloadCounter, FlowStats, Initiators, PacketSize, PeerPlan};

const PEERS: u32 = 40;
const GATEWAY_PORT: u16 = 52_000;
const SINK: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 9000);

struct Gateway {
    dev: BackgroundDevice,
    host: TwinHost,
    _more: Vec<TwinHost>,
    key: PrivateKey,
}

fn gateway(net: &Arc<TwinNet>, plan: &PeerPlan, workers: usize) -> Gateway {
    let (io, mut hosts) = DeviceIo::twin(net, workers, false, ParallelCrypto::Backlogged);
    let dev = BackgroundDevice::spawn(io).expect("device starts");
    let key = PrivateKey::generate();
    let mut conf = format!("set=1\nprivate_key={}\nlisten_port={GATEWAY_PORT}\n", key.to_hex());
    for (i, pk) in plan.public_keys(PEERS).iter().enumerate() {
        conf += &format!("public_key={}\nallowed_ip={}/32\n", pk.to_hex(), plan.address(i as u32));
    }
    assert_eq!(dev.uapi(&conf), "errno=0\n\n");
    let host = hosts.remove(0);
    Gateway { dev, host, _more: hosts, key }
}

struct Load {
    socket: Arc<Socket>,
    initiators: Initiators,
}

fn handshakes(net: &Arc<TwinNet>, plan: &PeerPlan, gw: &Gateway) -> Load {
    let socket = Arc::new(Socket::Twin(net.bind(0).unwrap()));
    let keys = (0..PEERS).map(|i| plan.private_key(i)).collect();
    let mut initiators = Initiators::new(gw.key.public_key(), keys, 7_000);
    let outcome = run::handshakes(
        &socket,
        &mut initiators,
        TwinNet::address(GATEWAY_PORT),
        8,
        Duration::from_secs(30),
        |_, _, _| {},
    );
    assert_eq!(outcome.established, PEERS as usize, "every peer's handshake completes");
    let keypairs: Vec<_> = initiators.keypairs().into_iter().flatten().collect();
    run::confirm_sessions(&socket, &keypairs, TwinNet::address(GATEWAY_PORT));
    Load { socket, initiators }
}

#[test]
fn upload_through_a_device_arrives_whole_in_order_per_flow() {
    let net = TwinNet::new();
    let plan = PeerPlan::new("twin", "10.128.0.0/9").unwrap();
    let gw = gateway(&net, &plan, 1);
    let load = handshakes(&net, &plan, &gw);
    let senders = load
        .initiators
        .keypairs()
        .into_iter()
        .enumerate()
        .map(|(i, k)| Sender { keypair: k.unwrap(), address: plan.address(i as u32) })
        .collect();
    let mut up = Uploader::new(senders, SINK, TwinNet::address(GATEWAY_PORT), PacketSize::Imix, 3, 8);
    // The sink: the device's host side, drained while the load sends.
    let stop = Arc::new(AtomicBool::new(false));
    let host = gw.host.recv.clone();
    let done = stop.clone();
    let sink = std::thread::spawn(move || {
        let mut stats = FlowStats::default();
        let mut other = 0;
        let mut idle_since = Instant::now();
        while !(done.load(Ordering::Relaxed) && idle_since.elapsed() > Duration::from_secs(2)) {
            match host.recv_timeout(Duration::from_millis(50)) {
                Ok(p) => {
                    idle_since = Instant::now();
                    match wgturbo::load::traffic::parse_udp4(&p) {
                        Some((_, dst, _)) if dst == SINK => stats.count_packet(&p, Instant::now()),
                        _ => other += 1,
                    }
                }
                Err(_) => continue,
            }
        }
        (stats, other)
    });
    // Half of it sealed ahead, half as it goes; a rate the twin's queues hold.
    let sent = run::upload(&load.socket, &mut up, Duration::from_secs(1), 12_000.0, 64 << 10, &AtomicBool::new(false));
    stop.store(true, Ordering::Relaxed);
    let (stats, other) = sink.join().unwrap();
    assert!(sent.sent >= 10_000, "the load kept its rate: {}", sent.sent);
    assert!(sent.sealed_ahead > 0 && sent.sealed_ahead < sent.sent, "both sealing paths ran: {}", sent.sealed_ahead);
    assert_eq!(sent.send_errors, 0);
    assert_eq!(net.dropped.load(Ordering::Relaxed), 0, "no twin queue overflowed");
    assert_eq!(stats.packets, sent.sent, "every packet the load sent reached the sink");
    assert_eq!((stats.foreign, other, stats.reordered), (0, 0, 0));
    assert_eq!(stats.flows(), PEERS as usize * 3, "every flow of every peer arrived");
    assert_eq!(up.sealed, sent.sent);
    drop(gw.dev);
}

#[test]
fn download_through_a_device_reaches_every_peer_authentic() {
    let net = TwinNet::new();
    let plan = PeerPlan::new("twin", "10.128.0.0/9").unwrap();
    let gw = gateway(&net, &plan, 2);
    let load = handshakes(&net, &plan, &gw);
    // The device learnt each peer's endpoint and confirmed its session from the keepalives.
    std::thread::sleep(Duration::from_millis(200));
    let peers = load
        .initiators
        .keypairs()
        .into_iter()
        .enumerate()
        .map(|(i, k)| (load.initiators.local_index(i), k.unwrap(), plan.address(i as u32)))
        .collect();
    let mut counter = DownloadCounter::new(peers, 1);
    let stop = AtomicBool::new(false);
    let per_peer = 100u64;
    let socket = load.socket.clone();
    let receiver = std::thread::spawn(move || {
        run::receive(&socket, Instant::now() + Duration::from_secs(30), &stop, |d, now| counter.count(d, now));
        counter
    });
    // The source behind the device: single packets to every peer's address in turn, paced so
    // the twin TUN's queue (8,192) never fills.
    let from = SocketAddrV4::new(SINK.ip().to_owned(), 5353);
    for seq in 0..per_peer {
        for peer in 0..PEERS {
            let mut p = vec![0u8; 200];
            let to = SocketAddrV4::new(plan.address(peer), 9000);
            let len = build_udp4(&mut p, from, to, 64 + (seq as usize % 100), Stamp { flow: peer, seq });
            p.truncate(len);
            gw.host.send.send(p).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let counter = receiver.join().unwrap();
    let total = per_peer * u64::from(PEERS);
    assert_eq!(net.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(counter.datagrams, total, "every packet reached its peer");
    assert_eq!((counter.verified, counter.failed), (total, 0), "each one opened, authentic, for that peer");
    assert!(counter.per_peer.iter().all(|&n| n == per_peer), "{:?}", counter.per_peer);
    assert_eq!(counter.strangers, 0);
}
