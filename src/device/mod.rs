//! The daemon: TUN, UDP, the UAPI socket, the workers and the control thread.

mod apply;
pub mod control;
mod handshakes;
pub mod requests;
mod timers;
pub mod uapi_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tracing::{info, warn};

use crate::config::uapi::{Errno, Reply};
use crate::constants::HANDSHAKE_QUEUE;
use crate::dataplane::pool::{CryptoPool, ParallelCrypto};
use crate::dataplane::shared::Shared;
use crate::dataplane::worker::{self, WorkerConfig};
use crate::io::tun::{self, OpenedTun};
use crate::io::{Backend, Doorbell, Network, TunQueue, UringOptions, WorkerIoConfig};
use crate::metrics::{DeviceInfo, Metrics, CONTENT_TYPE};
use control::Control;
use requests::DeviceRequest;

pub use crate::constants::DEFAULT_MTU;
/// When workers help seal and open one another's flows unless told otherwise (perf/README.md).
const DEFAULT_PARALLEL_CRYPTO: ParallelCrypto = ParallelCrypto::Backlogged;
/// Whether workers are pinned one per core unless told otherwise (perf/README.md: pinned
/// workers cannot move off a core another busy thread shares).
const DEFAULT_PIN_WORKERS: bool = false;
const TIMER_TICK: Duration = Duration::from_millis(100);
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// A worker that has not gone round its loop for this long (it wakes at least every 200 ms)
/// is taken as hung: the control loop stops pinging systemd's watchdog.
const WORKER_STALLED: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0}")]
    Tun(std::io::Error),
    #[error("cannot open the UAPI socket: {0}")]
    Uapi(std::io::Error),
    #[error("cannot listen on UDP: {0}")]
    Udp(std::io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("WGTURBO_IO must be 'uring' or 'syscalls', not '{0}'")]
    BadBackend(String),
    #[error("{0} must be {1}, not '{2}'")]
    BadSetting(&'static str, &'static str, String),
    #[error("a worker kept panicking; the daemon stopped (see the log)")]
    WorkerFailed,
    #[error("cannot serve metrics on {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
}

/// The knobs that reach a daemon started by wg-quick: environment variables, read here only.
pub struct Settings {
    pub workers: usize,
    pub backend: Backend,
    /// `WGTURBO_NO_OFFLOAD=1`: no TUN vnet_hdr/TSO/GRO and no UDP GSO/GRO (the fallback path,
    /// tested and benchmarked on its own).
    pub offloads: bool,
    /// `WGTURBO_PARALLEL_CRYPTO=0|1|always`: when workers seal and open another's batch.
    pub parallel_crypto: ParallelCrypto,
    /// `WGTURBO_METRICS=ADDR:PORT` (or `--metrics`): serve Prometheus metrics there.
    pub metrics: Option<std::net::SocketAddr>,
    /// `WGTURBO_PIN=0|1`: whether each worker is pinned to a core of its own.
    pub pin_workers: bool,
    /// `WGTURBO_URING_MULTISHOT=0|1` and `WGTURBO_URING_BUFFERS=N`: how io_uring reads.
    pub uring: UringOptions,
}

/// The metrics address as given: `ADDR:PORT`, IPv6 in brackets.
pub fn parse_metrics_addr(value: &str) -> Result<std::net::SocketAddr, DeviceError> {
    value.trim().parse().map_err(|_| {
        DeviceError::BadSetting(
            "WGTURBO_METRICS (or --metrics)",
            "ADDR:PORT, like 127.0.0.1:9586 or [::1]:9586",
            value.to_string(),
        )
    })
}

impl Settings {
    pub fn from_env() -> Result<Settings, DeviceError> {
        let workers = std::env::var("WGTURBO_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
            .min(16);
        // The default is io_uring wherever the kernel takes it (perf/README.md, 2026-12-06).
        let backend = match std::env::var("WGTURBO_IO").unwrap_or_default().as_str() {
            "" | "uring" | "io_uring" => Backend::Uring,
            "syscalls" => Backend::Syscalls,
            other => return Err(DeviceError::BadBackend(other.to_string())),
        };
        let offloads = std::env::var_os("WGTURBO_NO_OFFLOAD").is_none_or(|v| v == "0");
        let parallel_crypto = match std::env::var("WGTURBO_PARALLEL_CRYPTO").unwrap_or_default().as_str() {
            "" => DEFAULT_PARALLEL_CRYPTO,
            "1" | "on" | "backlogged" => ParallelCrypto::Backlogged,
            "always" => ParallelCrypto::Always,
            "0" | "off" => ParallelCrypto::Off,
            other => {
                return Err(DeviceError::BadSetting("WGTURBO_PARALLEL_CRYPTO", "0, 1 or always", other.to_string()))
            }
        };
        let metrics = match std::env::var("WGTURBO_METRICS") {
            Ok(v) if !v.is_empty() => Some(parse_metrics_addr(&v)?),
            _ => None,
        };
        let pin_workers = match std::env::var("WGTURBO_PIN").unwrap_or_default().as_str() {
            "" => DEFAULT_PIN_WORKERS,
            "1" | "on" => true,
            "0" | "off" => false,
            other => return Err(DeviceError::BadSetting("WGTURBO_PIN", "0 or 1", other.to_string())),
        };
        let multishot = match std::env::var("WGTURBO_URING_MULTISHOT").unwrap_or_default().as_str() {
            "" | "1" | "on" => true,
            "0" | "off" => false,
            other => return Err(DeviceError::BadSetting("WGTURBO_URING_MULTISHOT", "0 or 1", other.to_string())),
        };
        let buffers = match std::env::var("WGTURBO_URING_BUFFERS").unwrap_or_default().as_str() {
            "" => UringOptions::default().buffers,
            v => v.parse::<u16>().ok().filter(|n| n.is_power_of_two() && *n <= 1 << 15).ok_or_else(|| {
                DeviceError::BadSetting("WGTURBO_URING_BUFFERS", "a power of two from 1 to 32768", v.to_string())
            })?,
        };
        let uring = UringOptions { multishot, buffers };
        Ok(Settings { workers, backend, offloads, parallel_crypto, metrics, pin_workers, uring })
    }
}

/// What a device's workers run on.
pub struct DeviceIo {
    /// One TUN queue per worker.
    pub queues: Vec<TunQueue>,
    pub network: Network,
    pub backend: Backend,
    /// UDP GSO may be used where the socket supports it.
    pub gso: bool,
    /// The TUN queues carry a virtio_net_hdr.
    pub vnet: bool,
    /// The TUN took USO: UDP datagrams of a flow may be written as one GSO_UDP_L4 packet.
    pub uso: bool,
    /// When workers seal and open chunks of another worker's batch.
    pub parallel_crypto: ParallelCrypto,
    /// Each worker is pinned to a core of its own.
    pub pin_workers: bool,
    /// How the io_uring backend reads.
    pub uring: UringOptions,
}

impl DeviceIo {
    /// A device over the in-memory twins (tests, benchmarks): `workers` TUN queues (vnet_hdr
    /// and USO when `vnet`), UDP GSO on. Returns the host side of each queue too.
    pub fn twin(
        net: &Arc<crate::io::twin::TwinNet>,
        workers: usize,
        vnet: bool,
        parallel_crypto: ParallelCrypto,
    ) -> (DeviceIo, Vec<crate::io::twin::TwinHost>) {
        let (queues, hosts) = (0..workers.max(1))
            .map(|_| {
                let (tun, host) = crate::io::twin::twin_tun(vnet);
                (TunQueue::Twin(tun), host)
            })
            .unzip();
        let io = DeviceIo {
            queues,
            network: Network::Twin(net.clone()),
            backend: Backend::Twin,
            gso: true,
            vnet,
            uso: vnet,
            parallel_crypto,
            pin_workers: false,
            uring: UringOptions::default(),
        };
        (io, hosts)
    }
}

/// A running device: its workers, and the control state the caller drives with `tick`.
pub struct Device {
    pub shared: Arc<Shared>,
    control: Control,
    requests_tx: Sender<DeviceRequest>,
    /// The backend each worker runs, and the engaged offloads, for the start-up line.
    pub summary: String,
    /// The same, as labels for `wgturbo_info` (device and TUN offloads filled in by the caller).
    pub info: DeviceInfo,
}

impl Device {
    /// Binds a random UDP port (as wireguard-go does until configured) and starts the workers.
    pub fn start(io: DeviceIo) -> Result<Device, DeviceError> {
        let workers = io.queues.len().max(1);
        let bells: Vec<Arc<Doorbell>> =
            io.queues.iter().map(|q| q.doorbell().map(Arc::new)).collect::<Result<_, _>>().map_err(DeviceError::Tun)?;
        let (handshake_tx, handshake_rx) = crossbeam_channel::bounded(HANDSHAKE_QUEUE);
        let (worker_tx, worker_rx) = crossbeam_channel::bounded(4096);
        let (requests_tx, requests_rx) = crossbeam_channel::bounded(64);
        let (active_tx, active_rx) = crossbeam_channel::unbounded();
        let pool = CryptoPool::new(bells.clone(), io.parallel_crypto);
        let shared = Arc::new(Shared::new(workers, pool, handshake_tx, worker_tx, active_tx));
        let mut control =
            Control::new(shared.clone(), io.network.clone(), workers, handshake_rx, worker_rx, requests_rx, active_rx);
        let bind = crate::config::DeviceChange { listen_port: Some(0), ..Default::default() };
        control
            .apply(bind, Instant::now())
            .map_err(|errno| DeviceError::Udp(std::io::Error::from_raw_os_error(-errno.code())))?;
        let sockets = shared.sockets.load_full();
        let gso = io.gso && sockets.first().is_some_and(|s| s.supports_gso());
        let cores = if io.pin_workers { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        let mut backends = Vec::new();
        let mut engaged = Vec::new();
        for (i, queue) in io.queues.into_iter().enumerate() {
            let socket = sockets[i % sockets.len()].clone();
            let config = WorkerIoConfig { backend: io.backend, uring: io.uring, gso };
            let (worker_io, fallback) =
                crate::io::worker_io(queue, socket, bells[i].clone(), &config).map_err(DeviceError::Tun)?;
            if let Some(reason) = fallback {
                warn!("worker {i}: {reason}");
            }
            backends.push(worker_io.backend().to_string());
            engaged.push(match worker_io.engaged() {
                Some(how) => format!("{} ({how})", worker_io.backend()),
                None => worker_io.backend().to_string(),
            });
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let shared = shared.clone();
            let config = WorkerConfig { index: i, vnet: io.vnet, gso, uso: io.vnet && io.uso };
            std::thread::Builder::new()
                .name(format!("wg-worker-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker::supervise(shared, worker_io, config)
                })
                .map_err(DeviceError::Thread)?;
        }
        let side = shared.clone();
        std::thread::Builder::new()
            .name("wg-handshake".into())
            .spawn(move || crate::dataplane::side::serve_side(&side))
            .map_err(DeviceError::Thread)?;
        let mut names = backends.clone();
        names.dedup();
        engaged.dedup();
        let udp = match (&io.network, gso) {
            (Network::Os { gro: true }, true) => "UDP GSO+GRO",
            (Network::Os { gro: true }, false) => "UDP GRO",
            (_, true) => "UDP GSO",
            _ => "no UDP offloads",
        };
        let seal = match shared.crypto_pool.mode() {
            ParallelCrypto::Off => "crypto per worker",
            ParallelCrypto::Backlogged => "parallel crypto when backlogged",
            ParallelCrypto::Always => "parallel crypto",
        };
        let pinned = if cores.is_empty() { "unpinned" } else { "pinned" };
        let summary = format!("{} worker(s), {pinned}, on {}; {seal}; {udp}", backends.len(), engaged.join("+"));
        let info = DeviceInfo {
            device: String::new(),
            backend: names.join("+"),
            udp_offloads: udp.to_string(),
            tun_offloads: String::new(),
            parallel_crypto: shared.crypto_pool.mode().name(),
        };
        Ok(Device { shared, control, requests_tx, summary, info })
    }

    /// Where the device's own threads (UAPI, metrics) send their requests.
    pub fn requests(&self) -> Sender<DeviceRequest> {
        self.requests_tx.clone()
    }

    /// Handles control messages for one timer tick, then runs the timers.
    pub fn tick(&mut self) {
        self.control.run_until(Instant::now() + TIMER_TICK);
        self.control.run_timers();
    }

    /// Stops the workers (they notice within their idle wait).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// How a metrics scrape asks this device's control thread for its report.
fn ask_report(requests: Sender<DeviceRequest>) -> crate::metrics::AskReport {
    Box::new(move |reply, wait| requests.send_timeout(DeviceRequest::Report(reply), wait).is_ok())
}

/// A device whose control loop runs on a thread of its own: for tests and benchmarks over
/// the in-memory twins. Dropping it stops the device.
pub struct BackgroundDevice {
    pub shared: Arc<Shared>,
    requests_tx: Sender<DeviceRequest>,
    info: DeviceInfo,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundDevice {
    pub fn spawn(io: DeviceIo) -> Result<BackgroundDevice, DeviceError> {
        let mut device = Device::start(io)?;
        let shared = device.shared.clone();
        let requests_tx = device.requests();
        let info = DeviceInfo { device: "twin".into(), tun_offloads: "twin".into(), ..device.info.clone() };
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !device.shared.stopping() {
                    device.tick();
                }
            })
            .map_err(DeviceError::Thread)?;
        Ok(BackgroundDevice { shared, requests_tx, info, thread: Some(thread) })
    }

    /// The device's metrics, as `/metrics` serves them (device label "twin").
    pub fn metrics(&self) -> Metrics {
        Metrics::new(self.shared.clone(), self.info.clone(), ask_report(self.requests_tx.clone()))
    }

    /// Sends a UAPI request (`get=1` or `set=1` and its lines) and returns the reply text.
    pub fn uapi(&self, request: &str) -> String {
        match crate::config::uapi::parse_request(request) {
            Ok(req) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                if self.requests_tx.send(DeviceRequest::Uapi(req, tx)).is_err() {
                    return Reply::Failed(Errno::Io).text().as_str().to_owned();
                }
                // For tests and benchmarks: the reply leaves its wiped buffer as a plain string.
                let reply = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(Reply::Failed(Errno::Io));
                reply.text().as_str().to_owned()
            }
            Err(e) => Reply::Failed(e.errno()).text().as_str().to_owned(),
        }
    }
}

impl Drop for BackgroundDevice {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates the interface and the UAPI socket, calls `ready`, then runs until the interface is
/// deleted, the socket file removed, or SIGINT/SIGTERM arrives.
pub fn run(iface: &str, settings: Settings, ready: impl FnOnce()) -> Result<(), DeviceError> {
    // A running daemon's interface is left alone: no queue attached, no MTU reset.
    uapi_server::ensure_free(iface).map_err(DeviceError::Uapi)?;
    // Bound before the interface exists, so a port in use leaves nothing behind.
    let metrics_endpoint = match settings.metrics {
        Some(addr) => Some(crate::metrics::http::bind(addr).map_err(|e| DeviceError::Metrics(addr, e))?),
        None => None,
    };
    let OpenedTun { queues, vnet, uso, engaged: tun_offloads } =
        tun::open_queues(iface, settings.workers, settings.offloads).map_err(DeviceError::Tun)?;
    let iface = queues[0].name().to_string();
    if let Err(e) = tun::set_mtu(&iface, DEFAULT_MTU) {
        warn!("cannot set MTU {DEFAULT_MTU} on {iface}: {e}");
    }
    let listener = uapi_server::bind(&iface).map_err(DeviceError::Uapi)?;
    let io = DeviceIo {
        queues: queues.into_iter().map(TunQueue::Os).collect(),
        network: Network::Os { gro: settings.offloads },
        backend: settings.backend,
        gso: settings.offloads,
        vnet,
        uso,
        parallel_crypto: settings.parallel_crypto,
        pin_workers: settings.pin_workers,
        uring: settings.uring,
    };
    let mut device = Device::start(io)?;
    let requests_tx = device.requests();
    std::thread::Builder::new()
        .name("uapi".into())
        .spawn(move || uapi_server::serve(listener, requests_tx))
        .map_err(DeviceError::Thread)?;
    let metrics_line = match metrics_endpoint {
        Some(endpoint) => {
            let info =
                DeviceInfo { device: iface.clone(), tun_offloads: tun_offloads.to_string(), ..device.info.clone() };
            let line = format!("; metrics at http://{}/metrics", endpoint.local_addr());
            let metrics = Metrics::new(device.shared.clone(), info, ask_report(device.requests()));
            let shared = device.shared.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || endpoint.serve("/metrics", CONTENT_TYPE, || shared.stopping(), || metrics.render()))
                .map_err(DeviceError::Thread)?;
            line
        }
        None => String::new(),
    };

    let terminate = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, terminate.clone());
    }
    info!(
        "interface {iface} up: {}; {tun_offloads}; UAPI at {}{metrics_line}",
        device.summary,
        uapi_server::socket_path(&iface).display()
    );
    ready();
    crate::io::systemd::ready(&format!("interface {iface} up: {}; {tun_offloads}", device.summary));

    let socket_path = uapi_server::socket_path(&iface);
    let mut next_housekeeping = Instant::now();
    let shared = device.shared.clone();
    // Pinged twice per interval systemd set, and only while every worker goes round its loop:
    // a hung dataplane stops the pings and `WatchdogSec=` restarts the daemon.
    let watchdog = crate::io::systemd::watchdog_interval().map(|w| w / 2);
    let mut next_ping = Instant::now();
    loop {
        device.tick();
        if let Some(every) = watchdog {
            let now = Instant::now();
            if now >= next_ping {
                next_ping = now + every;
                if shared.workers_answering(now, WORKER_STALLED) {
                    crate::io::systemd::watchdog_ping();
                } else {
                    warn!("a worker has not gone round its loop for {WORKER_STALLED:?}: no watchdog ping");
                }
            }
        }
        if terminate.load(Ordering::Relaxed) {
            info!("signal received, shutting down");
            break;
        }
        if shared.interface_gone.load(Ordering::Relaxed) {
            // Told by the TUN itself, so also when the interface was moved to another
            // namespace first (where it keeps working until deleted there).
            info!("interface {iface} was deleted, shutting down");
            break;
        }
        if shared.stopping() {
            break;
        }
        let now = Instant::now();
        if now >= next_housekeeping {
            next_housekeeping = now + HOUSEKEEPING;
            if !socket_path.exists() {
                info!("UAPI socket removed, shutting down");
                break;
            }
            // By name in our namespace: an interface moved elsewhere keeps the MTU it had.
            if let Ok(mtu) = tun::get_mtu(&iface) {
                shared.mtu.store(mtu as usize, Ordering::Relaxed);
            }
            tracing::debug!("drops: {}", shared.drop_totals().summary());
        }
    }
    crate::io::systemd::stopping();
    device.stop();
    let _ = std::fs::remove_file(&socket_path);
    if shared.failed.load(Ordering::Relaxed) {
        return Err(DeviceError::WorkerFailed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::uapi::{parse_request, Errno, Request};
    use crate::io::twin::TwinNet;
    use crate::keys::PrivateKey;

    fn set(device: &mut Device, text: &str) -> Result<(), Errno> {
        match parse_request(text) {
            Ok(Request::Set(change)) => device.control.apply(change, Instant::now()),
            other => panic!("not a set: {other:?}"),
        }
    }

    fn peers(n: usize) -> String {
        (0..n)
            .map(|_| format!("public_key={}\nallowed_ip=10.9.0.0/16\n", PrivateKey::generate().public_key().to_hex()))
            .collect()
    }

    /// Beyond the peer cap a `set` gets ENOSPC and changes nothing, not even what came before
    /// the peer that would not fit; removals and updates of known peers still work.
    #[test]
    fn the_peer_cap_refuses_whole_requests() {
        let (io, _hosts) = DeviceIo::twin(&TwinNet::new(), 1, false, ParallelCrypto::Off);
        let mut device = Device::start(io).unwrap();
        device.control.peer_limit = 3;
        set(&mut device, &format!("set=1\n{}", peers(3))).unwrap();
        let before = device.control.status();
        assert_eq!(set(&mut device, &format!("set=1\nlisten_port=5999\n{}", peers(1))), Err(Errno::TooManyPeers));
        let after = device.control.status();
        assert_eq!(after.peers.len(), 3);
        assert_eq!(after.listen_port, before.listen_port, "nothing of the refused request was applied");
        let known = after.peers[0].public_key.to_hex();
        set(&mut device, &format!("set=1\npublic_key={known}\nremove=true\n{}", peers(0))).unwrap();
        set(&mut device, &format!("set=1\n{}", peers(1))).unwrap();
        assert_eq!(device.control.status().peers.len(), 3);
        // replace_peers counts only what the request brings.
        set(&mut device, &format!("set=1\nreplace_peers=true\n{}", peers(3))).unwrap();
        assert_eq!(device.control.status().peers.len(), 3);
        device.stop();
    }

    /// A peer's prefixes move to the peer that claims them last; removing a peer removes its
    /// own prefixes and leaves the others'; `get` lists each peer's prefixes in order.
    #[test]
    fn allowed_ips_follow_their_owner() {
        let (io, _hosts) = DeviceIo::twin(&TwinNet::new(), 1, false, ParallelCrypto::Off);
        let mut device = Device::start(io).unwrap();
        let (a, b) = (PrivateKey::generate().public_key(), PrivateKey::generate().public_key());
        set(
            &mut device,
            &format!(
                "set=1\npublic_key={}\nallowed_ip=10.0.0.0/24\nallowed_ip=10.1.0.0/16\nallowed_ip=fd00::/64\npublic_key={}\nallowed_ip=10.1.0.0/16\n",
                a.to_hex(),
                b.to_hex()
            ),
        )
        .unwrap();
        let listed = |d: &Device, k| -> Vec<String> {
            let s = d.control.status();
            s.peers
                .iter()
                .find(|p| p.public_key == k)
                .map(|p| p.allowed_ips.iter().map(|n| n.to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(listed(&device, a), ["10.0.0.0/24", "fd00::/64"]);
        assert_eq!(listed(&device, b), ["10.1.0.0/16"]);
        set(&mut device, &format!("set=1\npublic_key={}\nremove=true\n", b.to_hex())).unwrap();
        let routing = device.shared.routing.load();
        assert!(routing.lookup("10.1.2.3".parse().unwrap()).is_none(), "b's prefix left with b");
        assert!(routing.lookup("10.0.0.9".parse().unwrap()).is_some_and(|p| p.public_key == a));
        set(
            &mut device,
            &format!("set=1\npublic_key={}\nreplace_allowed_ips=true\nallowed_ip=10.2.0.0/16\n", a.to_hex()),
        )
        .unwrap();
        assert_eq!(listed(&device, a), ["10.2.0.0/16"]);
        assert!(device.shared.routing.load().lookup("10.0.0.9".parse().unwrap()).is_none());
        device.stop();
    }
}
