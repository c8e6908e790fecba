//! Prometheus metrics: the names of mdlayher's wireguard_exporter for what any exporter sees
//! (so its Grafana dashboards work unchanged), and `wgturbo_` for what only the daemon knows.
//!
//! A scrape reads the workers' atomics directly and asks the control thread once for its peer
//! list (pointers and public values, O(peers)); no worker ever waits on a scrape. The text is
//! made by prometheus-client's encoder for the Prometheus text format 0.0.4.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::dataplane::shared::{PeerShared, Shared, WorkerCounters};
use crate::keys::PublicKey;
use crate::routing::IpNet;

pub mod http;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How long a scrape waits for the control thread's peer list before it answers without it.
const CONTROL_ANSWER: Duration = Duration::from_secs(3);

/// What a scrape needs from the control thread: pointers and plain values, O(peers), and
/// never a key but public ones. Counters are read from `PeerShared` when rendered.
pub struct DeviceReport {
    pub public_key: Option<PublicKey>,
    pub peers: Vec<PeerReport>,
}

pub struct PeerReport {
    pub shared: Arc<PeerShared>,
    pub allowed_ips: Vec<IpNet>,
    pub last_handshake: Option<SystemTime>,
}

/// How a scrape asks the control thread for its report: hands it where the answer goes, and
/// how long it may wait to hand it over; false if it could not.
pub type AskReport = Box<dyn Fn(Sender<DeviceReport>, Duration) -> bool + Send + Sync>;

/// What the daemon settled on at start-up, for `wgturbo_info`.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub device: String,
    pub backend: String,
    pub udp_offloads: String,
    pub tun_offloads: String,
    /// `off`, `backlogged` or `always` (`ParallelCrypto::name`).
    pub parallel_crypto: &'static str,
}

/// The collector a registry calls on each scrape.
pub struct DeviceCollector {
    shared: Arc<Shared>,
    info: DeviceInfo,
    ask: AskReport,
}

impl fmt::Debug for DeviceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCollector").field("device", &self.info.device).finish()
    }
}

/// A registry holding one device's collector; `render` makes the page.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(shared: Arc<Shared>, info: DeviceInfo, ask: AskReport) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(DeviceCollector { shared, info, ask }));
        Metrics { registry }
    }

    /// The page in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut page = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut page, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        page
    }
}

impl DeviceCollector {
    /// The control thread's peer list, or None if it did not answer in time (a scrape then
    /// still has every device counter, and says so in `wgturbo_control_responsive`).
    fn report(&self) -> Option<DeviceReport> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !(self.ask)(tx, CONTROL_ANSWER) {
            return None;
        }
        rx.recv_timeout(CONTROL_ANSWER).ok()
    }
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

fn per_peer<'a>(device: &'a str, public_key: &'a str) -> Labels<'a, 2> {
    [("device", device), ("public_key", public_key)]
}

/// A sample's value: counts stay integers end to end (a byte counter passes 2^53, where an
/// f64 stops counting single bytes, within a year at 10 Gbit/s).
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Real(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Count(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Real(x)
    }
}

/// One metric family: its descriptor, then a sample per label set.
fn family<S: EncodeLabelSet, V: Into<Value>>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (S, V)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match (kind, value.into()) {
            (MetricType::Counter, Value::Count(n)) => sample.encode_counter::<NoLabelSet, _, u64>(&n, None)?,
            (MetricType::Counter, Value::Real(x)) => sample.encode_counter::<NoLabelSet, _, u64>(&x, None)?,
            (_, Value::Count(n)) => sample.encode_gauge(&n)?,
            (_, Value::Real(x)) => sample.encode_gauge(&x)?,
        }
    }
    Ok(())
}

impl Collector for DeviceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let s = &self.shared;
        let drops = s.drop_totals();
        let dev = self.info.device.as_str();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let report = self.report();

        // What wireguard_exporter exports, under its names and labels. Counters are read
        // (relaxed) from the peers' atomics here, not copied by the control thread.
        if let Some(report) = &report {
            let device_key = report.public_key.map(|k| k.to_base64()).unwrap_or_default();
            let one: Labels<2> = [("device", dev), ("public_key", &device_key)];
            family(&mut enc, "wireguard_device_info", "Metadata about a device.", Gauge, [(one, 1u64)])?;
            let keys: Vec<String> = report.peers.iter().map(|p| p.shared.public_key.to_base64()).collect();
            let peers = || report.peers.iter().zip(&keys);
            family(
                &mut enc,
                "wireguard_peer_info",
                "Metadata about a peer. The public_key label on peer metrics refers to the peer's public key; not the device's public key.",
                Gauge,
                peers().map(|(p, key)| {
                    let allowed: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
                    let endpoint = p.shared.endpoint.load().as_deref().map(|e| e.to_string()).unwrap_or_default();
                    let labels = [
                        ("allowed_ips", allowed.join(",")),
                        ("device", dev.to_string()),
                        ("endpoint", endpoint),
                        ("public_key", key.clone()),
                    ];
                    (labels, 1u64)
                }),
            )?;
            // Encoded with the `_total` suffix the exporter's names carry.
            family(
                &mut enc,
                "wireguard_peer_receive_bytes",
                "Number of bytes received from a given peer.",
                Counter,
                peers().map(|(p, key)| (per_peer(dev, key), load(&p.shared.rx_bytes))),
            )?;
            family(
                &mut enc,
                "wireguard_peer_transmit_bytes",
                "Number of bytes transmitted to a given peer.",
                Counter,
                peers().map(|(p, key)| (per_peer(dev, key), load(&p.shared.tx_bytes))),
            )?;
            family(
                &mut enc,
                "wireguard_peer_last_handshake_seconds",
                "UNIX timestamp for the last handshake with a given peer.",
                Gauge,
                peers().map(|(p, key)| {
                    let at = p.last_handshake.and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                    (per_peer(dev, key), at.map_or(0.0, |d| d.as_secs_f64()))
                }),
            )?;
            family(
                &mut enc,
                "wgturbo_peers",
                "Peers configured on the device.",
                Gauge,
                [([("device", dev)], report.peers.len() as u64)],
            )?;
        }

        let device: Labels<1> = [("device", dev)];
        let info = [
            ("backend", self.info.backend.as_str()),
            ("device", dev),
            ("parallel_crypto", self.info.parallel_crypto),
            ("tun_offloads", self.info.tun_offloads.as_str()),
            ("udp_offloads", self.info.udp_offloads.as_str()),
            ("version", env!("CARGO_PKG_VERSION")),
        ];
        family(&mut enc, "wgturbo_info", "The I/O backend and offloads in use.", Gauge, [(info, 1u64)])?;
        let responsive = u64::from(report.is_some());
        family(
            &mut enc,
            "wgturbo_control_responsive",
            "1 if the control thread answered this scrape with its peers in time.",
            Gauge,
            [(device, responsive)],
        )?;
        family(
            &mut enc,
            "wgturbo_packets_dropped",
            "Packets dropped, by reason.",
            Counter,
            drops.by_reason().into_iter().map(|(reason, n)| ([("device", dev), ("reason", reason)], n)),
        )?;
        let hs = &s.handshakes;
        family(
            &mut enc,
            "wgturbo_handshake_messages_received",
            "Handshake messages received, by type (before any check).",
            Counter,
            [
                ("initiation", &hs.initiations_received),
                ("response", &hs.responses_received),
                ("cookie_reply", &hs.cookie_replies_received),
            ]
            .map(|(kind, c)| ([("device", dev), ("type", kind)], load(c))),
        )?;
        family(
            &mut enc,
            "wgturbo_handshake_messages_sent",
            "Handshake messages sent, by type.",
            Counter,
            [("initiation", &hs.initiations_sent), ("response", &hs.responses_sent)]
                .map(|(kind, c)| ([("device", dev), ("type", kind)], load(c))),
        )?;
        family(
            &mut enc,
            "wgturbo_handshake_messages_rejected",
            "Handshake messages refused: mac1 wrong, or failed after it (unknown peer, bad AEAD, old timestamp, no initiation pending).",
            Counter,
            [("invalid_mac1", &hs.invalid_mac1), ("invalid", &hs.rejected)]
                .map(|(reason, c)| ([("device", dev), ("reason", reason)], load(c))),
        )?;
        family(
            &mut enc,
            "wgturbo_handshakes_completed",
            "Handshakes that made a session, by our role.",
            Counter,
            [("initiator", &hs.completed_as_initiator), ("responder", &hs.completed_as_responder)]
                .map(|(role, c)| ([("device", dev), ("role", role)], load(c))),
        )?;
        family(
            &mut enc,
            "wgturbo_cookie_replies_sent",
            "Cookie replies sent under load to handshake messages without a valid mac2.",
            Counter,
            [(device, load(&hs.cookie_replies_sent))],
        )?;
        family(
            &mut enc,
            "wgturbo_handshakes_rate_limited",
            "Handshake messages refused by the per-source rate limiter under load.",
            Counter,
            [(device, load(&hs.rate_limited))],
        )?;
        family(
            &mut enc,
            "wgturbo_handshake_queue_depth",
            "Handshake messages waiting for the control thread.",
            Gauge,
            [(device, s.handshake_tx.len() as u64)],
        )?;
        family(
            &mut enc,
            "wgturbo_handshake_queue_capacity",
            "Capacity of the handshake queue (under load from 1/8 full).",
            Gauge,
            [(device, s.handshake_tx.capacity().unwrap_or(0) as u64)],
        )?;
        let under_load = u64::from(s.under_load(s.stamp(std::time::Instant::now())));
        family(
            &mut enc,
            "wgturbo_under_load",
            "1 while handshakes are answered with cookies (the handshake queue filled).",
            Gauge,
            [(device, under_load)],
        )?;
        let workers: Vec<String> = (0..s.workers.len()).map(|i| i.to_string()).collect();
        // Each worker's (outbound, inbound) pair of one counter kind.
        let per_worker = |pick: fn(&WorkerCounters) -> [&AtomicU64; 2]| {
            s.workers.iter().zip(&workers).flat_map(move |(w, i)| {
                let [outbound, inbound] = pick(w);
                [("outbound", outbound), ("inbound", inbound)].map(|(direction, c)| {
                    ([("device", dev), ("direction", direction), ("worker", i.as_str())], load(c))
                })
            })
        };
        family(
            &mut enc,
            "wgturbo_worker_packets",
            "Packets per worker: outbound = read from the TUN (a TSO/USO super-packet counts once), inbound = datagrams received from UDP.",
            Counter,
            per_worker(|w| [&w.tun_packets, &w.udp_datagrams]),
        )?;
        family(
            &mut enc,
            "wgturbo_worker_bytes",
            "Bytes per worker: outbound = read from the TUN, inbound = received from UDP.",
            Counter,
            per_worker(|w| [&w.tun_bytes, &w.udp_bytes]),
        )?;
        family(
            &mut enc,
            "wgturbo_worker_reads_ran_dry",
            "Times a worker's io_uring reads found their provided buffers all taken (ENOBUFS) and waited for them: outbound = TUN reads, inbound = UDP receives. Growing with drops: raise WGTURBO_URING_BUFFERS.",
            Counter,
            per_worker(|w| [&w.tun_reads_ran_dry, &w.udp_reads_ran_dry]),
        )?;
        family(
            &mut enc,
            "wgturbo_crypto_jobs_helped",
            "Seal/open jobs of one worker's batch done by another worker (parallel crypto).",
            Counter,
            [(device, s.crypto_pool.jobs_helped())],
        )?;
        family(
            &mut enc,
            "wgturbo_crypto_jobs_shared",
            "Seal/open jobs handed to the device's pool (whichever worker ran them).",
            Counter,
            [(device, s.crypto_pool.jobs_shared())],
        )?;
        family(
            &mut enc,
            "wgturbo_worker_restarts",
            "Worker loops restarted after a panic.",
            Counter,
            [(device, drops.worker_restarts)],
        )?;
        Ok(())
    }
}
