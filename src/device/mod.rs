//! The daemon: TUN, UDP, the UAPI socket, the workers and the control thread.

pub mod control;
pub mod shared;
pub mod uapi_server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::io::tun::{self, Tun};
use crate::routing::AllowedIps;
use control::{Control, HANDSHAKE_QUEUE};
use shared::{DropCounters, Shared};

pub const DEFAULT_MTU: u32 = 1420;
const TIMER_TICK: Duration = Duration::from_millis(100);
const HOUSEKEEPING: Duration = Duration::from_secs(1);

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
}

/// `WGTURBO_NO_OFFLOAD=1` turns off TUN vnet_hdr/TSO/GRO and UDP GSO/GRO: the fallback path,
/// tested and benchmarked on its own.
pub fn offloads_disabled() -> bool {
    std::env::var_os("WGTURBO_NO_OFFLOAD").is_some_and(|v| v != "0")
}

/// How many workers: one per core unless WGTURBO_WORKERS says otherwise.
fn worker_count() -> usize {
    std::env::var("WGTURBO_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .min(16)
}

/// Creates the interface and the UAPI socket, calls `ready`, then runs until the interface is
/// deleted, the socket file removed, or SIGINT/SIGTERM arrives.
pub fn run(iface: &str, ready: impl FnOnce()) -> Result<(), DeviceError> {
    let workers = worker_count();
    let vnet = !offloads_disabled();
    let first = match Tun::open(iface, workers > 1, vnet) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            warn!("multi-queue/vnet_hdr TUN refused ({e}); falling back to one plain queue and one worker");
            Tun::open(iface, false, false).map_err(DeviceError::Tun)?
        }
        Err(e) => return Err(DeviceError::Tun(e)),
    };
    if first.has_vnet_hdr() {
        use crate::io::vnet::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
        match first.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) {
            Ok(()) => info!("TUN offloads on: checksum, TSO4, TSO6 (and GRO on write)"),
            Err(e) => warn!("TUN offloads refused ({e}); packets come one by one"),
        }
    } else {
        info!("TUN offloads off");
    }
    let iface = first.name().to_string();
    let mut queues = vec![first];
    for _ in 1..workers {
        match queues[0].open_queue() {
            Ok(q) => queues.push(q),
            Err(e) => {
                warn!("cannot open another TUN queue ({e}); running {} worker(s)", queues.len());
                break;
            }
        }
    }
    let workers = queues.len();
    if let Err(e) = tun::set_mtu(&iface, DEFAULT_MTU) {
        warn!("cannot set MTU {DEFAULT_MTU} on {iface}: {e}");
    }
    let listener = uapi_server::bind(&iface).map_err(DeviceError::Uapi)?;

    let (handshake_tx, handshake_rx) = crossbeam_channel::bounded(HANDSHAKE_QUEUE);
    let (control_tx, control_rx) = crossbeam_channel::bounded(4096);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        routing: ArcSwap::from_pointee(AllowedIps::default()),
        indices: ArcSwap::from_pointee(HashMap::new()),
        sockets: ArcSwap::from_pointee(Vec::new()),
        mtu: AtomicUsize::new(DEFAULT_MTU as usize),
        handshake_tx,
        control_tx: control_tx.clone(),
        stop: AtomicBool::new(false),
        drops: DropCounters::default(),
    });
    let mut control = Control::new(shared.clone(), 0, workers, handshake_rx, control_rx);
    // Listen on a random port until configured, as wireguard-go does once the link is up.
    let bind = crate::config::DeviceChange { listen_port: Some(0), ..Default::default() };
    control.apply(bind, Instant::now()).map_err(|errno| DeviceError::Udp(std::io::Error::from_raw_os_error(-errno)))?;

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    for (i, queue) in queues.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        let rx_queue = queue.try_clone().map_err(DeviceError::Tun)?;
        for (kind, q) in [("tx", queue), ("rx", rx_queue)] {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("wg-{kind}-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    if kind == "tx" {
                        crate::dataplane::tx::run(shared, q, i)
                    } else {
                        crate::dataplane::rx::run(shared, q, i)
                    }
                })
                .map_err(DeviceError::Thread)?;
        }
    }
    std::thread::Builder::new()
        .name("uapi".into())
        .spawn(move || uapi_server::serve(listener, control_tx))
        .map_err(DeviceError::Thread)?;

    let terminate = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, terminate.clone());
    }
    info!("interface {iface} up with {workers} worker(s); UAPI at {}", uapi_server::socket_path(&iface).display());
    ready();

    let socket_path = uapi_server::socket_path(&iface);
    let mut next_housekeeping = Instant::now();
    loop {
        control.run_until(Instant::now() + TIMER_TICK);
        control.run_timers();
        if terminate.load(Ordering::Relaxed) {
            info!("signal received, shutting down");
            break;
        }
        let now = Instant::now();
        if now >= next_housekeeping {
            next_housekeeping = now + HOUSEKEEPING;
            if !tun::interface_exists(&iface) {
                info!("interface {iface} was deleted, shutting down");
                break;
            }
            if !socket_path.exists() {
                info!("UAPI socket removed, shutting down");
                break;
            }
            if let Ok(mtu) = tun::get_mtu(&iface) {
                shared.mtu.store(mtu as usize, Ordering::Relaxed);
            }
            tracing::debug!("drops: {}", shared.drops.summary());
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}
