//! wgturbo-load: the load of the gateway benchmark. It plays many WireGuard peers against a
//! gateway (any implementation, configured with the real wg(8)), and the plain-UDP hosts
//! behind it. Roles:
//!
//!   config   the gateway's `wg setconf` fragment for the peers
//!   peers    the peers: handshakes, then upload (sealed ahead, sent in trains), download
//!            counting (every k-th datagram opened), or both
//!   source   a plain-UDP source behind the gateway, sending to the peers' inner addresses
//!   sink     a plain-UDP sink behind the gateway, counting per flow
//!
//! Each role ends by printing one JSON line on stdout; errors are one line on stderr.

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wgturbo::io::unix::process_cpu_time;
use wgturbo::io::{Network, SendBatch, Socket, SocketBatcher};
use wgturbo::keys::PublicKey;
use wgturbo::load::counters::{DownloadCounter, FlowStats};
use wgturbo::load::run::{self, IDLE_END};
use wgturbo::load::traffic::{build_udp4, Stamp};
use wgturbo::load::upload::{Sender, Uploader};
use wgturbo::load::{Initiators, PacketSize, PeerPlan, Report};

const USAGE: &str = "usage:
  wgturbo-load config --peers N [--prefix 10.128.0.0/9] [--seed S] [--out FILE]
  wgturbo-load peers  --gateway IP:PORT --gateway-key KEY [--peers N] [--prefix P] [--seed S]
                      [--upload SINK_IP:PORT] [--download] [--size 64|128|512|1420|imix]
                      [--flows F] [--rate PPS] [--seconds S] [--burst B] [--verify-every K]
                      [--window W] [--handshake-timeout S] [--preseal-mib M] [--ready-file PATH]
  wgturbo-load source --port PORT [--peers N] [--prefix P] [--size ..] [--flows F] [--rate PPS] [--seconds S]
  wgturbo-load sink   --port PORT [--seconds S]";

const DEFAULT_PREFIX: &str = "10.128.0.0/9";
const DEFAULT_SEED: &str = "wgturbo-load";
/// The longest run: a keypair must stay well inside REKEY_AFTER_TIME (120 s).
const MAX_SECONDS: f64 = 90.0;
/// The most peers one load plays.
const MAX_PEERS: u64 = 1_000_000;
/// Extra time a receiving end waits for traffic to begin.
const START_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

/// `--key value` options and `--flag`s, each allowed once and only where the role takes it.
struct Options {
    values: Vec<(String, Option<String>)>,
}

impl Options {
    fn parse(args: &[String], takes_value: &[&str], flags: &[&str]) -> Result<Options, Fail> {
        let mut values: Vec<(String, Option<String>)> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else { return Err(Fail(format!("unexpected argument '{a}'"))) };
            if values.iter().any(|(k, _)| k == key) {
                return Err(Fail(format!("--{key} given twice")));
            }
            if takes_value.contains(&key) {
                let v = it.next().ok_or_else(|| Fail(format!("--{key} needs a value")))?;
                values.push((key.to_string(), Some(v.clone())));
            } else if flags.contains(&key) {
                values.push((key.to_string(), None));
            } else {
                return Err(Fail(format!("unknown option --{key}")));
            }
        }
        Ok(Options { values })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
    }

    fn flag(&self, key: &str) -> bool {
        self.values.iter().any(|(k, _)| k == key)
    }

    fn parsed<T: std::str::FromStr>(&self, key: &str, default: T, what: &str) -> Result<T, Fail> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Fail(format!("--{key} must be {what}, not '{v}'"))),
        }
    }

    fn required<T: std::str::FromStr>(&self, key: &str, what: &str) -> Result<T, Fail> {
        let v = self.get(key).ok_or_else(|| Fail(format!("--{key} is required ({what})")))?;
        v.parse().map_err(|_| Fail(format!("--{key} must be {what}, not '{v}'")))
    }

    fn seconds(&self) -> Result<f64, Fail> {
        let s: f64 = self.parsed("seconds", 10.0, "a number of seconds")?;
        if !(s > 0.0 && s <= MAX_SECONDS) {
            return Err(Fail(format!("--seconds must be above 0 and at most {MAX_SECONDS} (keys stay fresh)")));
        }
        Ok(s)
    }

    fn rate(&self) -> Result<f64, Fail> {
        let r: f64 = self.parsed("rate", 0.0, "packets per second (0: flat out)")?;
        if !(r >= 0.0 && r.is_finite()) {
            return Err(Fail("--rate must be 0 (flat out) or a positive number of packets per second".into()));
        }
        Ok(r)
    }

    fn peers(&self, default: u64) -> Result<u32, Fail> {
        let n: u64 = self.parsed("peers", default, "a count of peers")?;
        if n == 0 || n > MAX_PEERS {
            return Err(Fail(format!("--peers must be 1 to {MAX_PEERS}")));
        }
        Ok(n as u32)
    }

    fn plan(&self, peers: u32) -> Result<PeerPlan, Fail> {
        let plan =
            PeerPlan::new(self.get("seed").unwrap_or(DEFAULT_SEED), self.get("prefix").unwrap_or(DEFAULT_PREFIX))?;
        plan.check(u64::from(peers))?;
        Ok(plan)
    }
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(tracing::Level::WARN).try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("config") => config(&args[1..]),
        Some("peers") => peers(&args[1..]),
        Some("source") => source(&args[1..]),
        Some("sink") => sink(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(Fail(format!("unknown role '{other}' (config, peers, source or sink)"))),
        None => Err(Fail("a role is required (config, peers, source or sink); --help shows them".into())),
    };
    match result {
        Ok(report) => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Err(Fail(msg)) => {
            eprintln!("wgturbo-load: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn config(args: &[String]) -> Result<Report, Fail> {
    let o = Options::parse(args, &["peers", "prefix", "seed", "out"], &[])?;
    let n = o.peers(1)?;
    let plan = o.plan(n)?;
    match o.get("out") {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| Fail(format!("cannot write {path}: {e}")))?;
            let mut w = std::io::BufWriter::new(file);
            plan.write_setconf(n, &mut w).and_then(|()| w.flush())?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            plan.write_setconf(n, &mut w).and_then(|()| w.flush())?;
            // stdout carries the fragment: the report goes to stderr.
            eprintln!("{}", Report::default().text("role", "config").int("peers", u64::from(n)).to_json());
            std::process::exit(0);
        }
    }
    Ok(Report::default()
        .text("role", "config")
        .int("peers", u64::from(n))
        .text("gateway_address", &plan.gateway_address().to_string()))
}

/// One kernel UDP socket through the I/O seam (port 0: a free one).
fn bind(port: u16, gro: bool) -> Result<Arc<Socket>, Fail> {
    let bound =
        Network::Os { gro }.bind(port, 0, 1, None).map_err(|e| Fail(format!("cannot bind UDP port {port}: {e}")))?;
    bound.sockets.into_iter().next().ok_or_else(|| Fail(format!("cannot bind UDP port {port}")))
}

fn peers(args: &[String]) -> Result<Report, Fail> {
    let o = Options::parse(
        args,
        &[
            "gateway",
            "gateway-key",
            "peers",
            "prefix",
            "seed",
            "upload",
            "size",
            "flows",
            "rate",
            "seconds",
            "burst",
            "verify-every",
            "window",
            "handshake-timeout",
            "preseal-mib",
            "ready-file",
        ],
        &["download"],
    )?;
    let gateway: SocketAddr = o.required("gateway", "the gateway's IP:PORT")?;
    let key = o.get("gateway-key").ok_or_else(|| Fail("--gateway-key is required (its public key)".into()))?;
    let gateway_key =
        PublicKey::from_base64(key).map_err(|_| Fail("--gateway-key is not a base64 public key".into()))?;
    let n = o.peers(1)?;
    let plan = o.plan(n)?;
    let upload: Option<SocketAddrV4> = match o.get("upload") {
        None => None,
        Some(v) => Some(v.parse().map_err(|_| Fail(format!("--upload must be the sink's IPv4:PORT, not '{v}'")))?),
    };
    let download = o.flag("download");
    let size: PacketSize = o.parsed("size", PacketSize::Fixed(64), "64 to 1420 or imix")?;
    let flows: u32 = o.parsed("flows", 4, "a count of flows per peer")?;
    let rate = o.rate()?;
    let seconds = o.seconds()?;
    let burst: usize = o.parsed("burst", 16, "a count of datagrams")?;
    let verify_every: u64 = o.parsed("verify-every", 64, "a count (0: open none)")?;
    let window: usize = o.parsed("window", 64, "a count of handshakes")?;
    let timeout: f64 = o.parsed("handshake-timeout", 30.0 + f64::from(n) / 500.0, "seconds")?;
    let preseal_mib: usize = o.parsed("preseal-mib", 256, "MiB")?;
    if flows == 0 || flows > 1000 || burst == 0 || burst > 64 || window == 0 || !(timeout > 0.0 && timeout <= 3600.0) {
        return Err(Fail(
            "--flows must be 1-1000, --burst 1-64, --window at least 1, --handshake-timeout 0-3600 s".into(),
        ));
    }
    if upload.is_none() && !download {
        return Err(Fail("say what to carry: --upload SINK_IP:PORT, --download, or both".into()));
    }

    let socket = bind(0, true)?;
    let index_base = rand::random::<u32>() & 0x7fff_ffff;
    let keys = (0..n).map(|i| plan.private_key(i)).collect();
    let mut initiators = Initiators::new(gateway_key, keys, index_base);
    let terminal = std::io::stderr().is_terminal();
    let outcome =
        run::handshakes(&socket, &mut initiators, gateway, window, Duration::from_secs_f64(timeout), |done, all, t| {
            if terminal {
                let rate = done as f64 / t.as_secs_f64().max(1e-3);
                let left = if rate > 0.0 { (all - done) as f64 / rate } else { f64::INFINITY };
                eprint!("\rhandshakes {done}/{all}, {rate:.0}/s, {left:.0} s left   ");
            }
        });
    if terminal {
        eprintln!();
    }
    if outcome.established < outcome.wanted {
        return Err(Fail(format!(
            "the gateway {gateway} completed {} of {} handshakes in {:.0} s ({} initiations sent, {} cookie replies): \
             is it listening there, is {key} its public key, and has it these peers (wgturbo-load config)?",
            outcome.established, outcome.wanted, outcome.seconds, outcome.initiations_sent, outcome.cookies
        )));
    }
    let keypairs: Vec<_> = initiators.keypairs().into_iter().flatten().collect();
    run::confirm_sessions(&socket, &keypairs, gateway);
    std::thread::sleep(Duration::from_millis(100));

    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs_f64(seconds);
    let receiver = download.then(|| {
        let peers = keypairs
            .iter()
            .enumerate()
            .map(|(i, k)| (initiators.local_index(i), k.clone(), plan.address(i as u32)))
            .collect();
        let mut counter = DownloadCounter::new(peers, verify_every);
        let (socket, stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || {
            run::receive(&socket, Instant::now() + duration + START_GRACE, &stop, |d, now| counter.count(d, now));
            counter
        })
    });
    if let Some(path) = o.get("ready-file") {
        std::fs::write(path, b"ready\n").map_err(|e| Fail(format!("cannot write {path}: {e}")))?;
    }
    let cpu_start = process_cpu_time();
    let sent = upload.map(|sink| {
        let senders = keypairs
            .iter()
            .enumerate()
            .map(|(i, k)| Sender { keypair: k.clone(), address: plan.address(i as u32) })
            .collect();
        let mut up = Uploader::new(senders, sink, gateway, size, flows, burst);
        run::upload(&socket, &mut up, duration, rate, preseal_mib << 20, &stop)
    });
    let counter = receiver.and_then(|h| h.join().ok());
    let cpu = (process_cpu_time() - cpu_start).as_secs_f64();
    let mut r = Report::default()
        .text("role", "peers")
        .int("peers_active", u64::from(n))
        .text("size", &size.to_string())
        .int("handshakes", outcome.established as u64)
        .num("handshake_s", outcome.seconds)
        .num("handshakes_per_s", outcome.established as f64 / outcome.seconds.max(1e-6))
        .int("cookie_replies", outcome.cookies)
        .num("cpu_s", cpu);
    if let Some(s) = sent {
        r = r
            .int("sent", s.sent)
            .int("sealed_ahead", s.sealed_ahead)
            .int("send_errors", s.send_errors)
            .num("send_s", s.seconds);
    }
    if let Some(c) = counter {
        let span = c.span();
        r = r
            .int("received", c.datagrams)
            .num("recv_span_s", span)
            .num("recv_mpps", if span > 0.0 { c.datagrams as f64 / span / 1e6 } else { 0.0 })
            .num("recv_gbits", if span > 0.0 { c.datagrams as f64 * size.mean() * 8.0 / span / 1e9 } else { 0.0 })
            .int("peers_reached", c.peers_reached() as u64)
            .int("verified", c.verified)
            .int("failed", c.failed)
            .int("keepalives", c.keepalives)
            .int("strangers", c.strangers);
        if c.failed > 0 {
            eprintln!("wgturbo-load: {} opened datagrams were not authentic or not for their peer", c.failed);
        }
    }
    Ok(r)
}

fn source(args: &[String]) -> Result<Report, Fail> {
    let o = Options::parse(args, &["port", "peers", "prefix", "seed", "size", "flows", "rate", "seconds"], &[])?;
    let port: u16 = o.required("port", "the UDP port to send to")?;
    let n = o.peers(1)?;
    let plan = o.plan(n)?;
    let size: PacketSize = o.parsed("size", PacketSize::Fixed(64), "64 to 1420 or imix")?;
    let flows: u32 = o.parsed("flows", 4, "a count of flows per peer")?;
    if flows == 0 || flows > 1000 {
        return Err(Fail("--flows must be 1-1000".into()));
    }
    let rate = o.rate()?;
    let duration = Duration::from_secs_f64(o.seconds()?);
    let socket = bind(0, false)?;
    let from = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    // Single datagrams, each to its own host, as traffic from many hosts arrives: no GSO.
    let mut batch = SendBatch::new(4, 1024, false);
    let mut batcher = SocketBatcher::default();
    let mut sizes = size.schedule();
    let mut seqs = vec![0u64; n as usize * flows as usize];
    let (mut peer, mut flow_in_peer) = (0u32, 0u32);
    let per_batch = if rate > 0.0 { ((rate / 2000.0) as usize).clamp(1, 512) } else { 512 };
    let (mut sent, mut errors) = (0u64, 0u64);
    let cpu_start = process_cpu_time();
    let start = Instant::now();
    while start.elapsed() < duration {
        if rate > 0.0 && ((start.elapsed().as_secs_f64() * rate) as u64) < sent + per_batch as u64 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for _ in 0..per_batch {
            let len = sizes.next().unwrap_or(64);
            if !batch.has_room(len) {
                break;
            }
            let flow = peer * flows + flow_in_peer;
            let seq = &mut seqs[flow as usize];
            let to = SocketAddrV4::new(plan.address(peer), port.wrapping_add(flow_in_peer as u16));
            let (_, space) = batch.reserve(len);
            // The UDP payload of an inner packet of `len` bytes; the kernel adds the headers.
            let mut packet = [0u8; 1500];
            build_udp4(&mut packet, from, to, len, Stamp { flow, seq: *seq });
            let payload = len - 28;
            space[..payload].copy_from_slice(&packet[28..len]);
            batch.commit(payload, SocketAddr::V4(to));
            *seq += 1;
            peer = (peer + 1) % n;
            if peer == 0 {
                flow_in_peer = (flow_in_peer + 1) % flows;
            }
        }
        sent += batch.datagram_count() as u64;
        if socket.send_batch(&mut batcher, &mut batch).is_err() {
            errors += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Report::default()
        .text("role", "source")
        .int("peers", u64::from(n))
        .text("size", &size.to_string())
        .int("sent", sent)
        .int("send_errors", errors)
        .num("send_s", secs)
        .num("cpu_s", (process_cpu_time() - cpu_start).as_secs_f64()))
}

fn sink(args: &[String]) -> Result<Report, Fail> {
    let o = Options::parse(args, &["port", "seconds"], &[])?;
    let port: u16 = o.required("port", "the UDP port to listen on")?;
    let duration = Duration::from_secs_f64(o.seconds()?);
    let socket = bind(port, true)?;
    let mut stats = FlowStats::default();
    let stop = AtomicBool::new(false);
    let cpu_start = process_cpu_time();
    // Traffic starts within the run's seconds (plus a grace) and ends IDLE_END after its last.
    run::receive(&socket, Instant::now() + duration + START_GRACE, &stop, |d, now| stats.count_payload(d, now));
    stop.store(true, Ordering::Relaxed);
    let span = stats.span();
    let per_s = |x: f64| if span > 0.0 { x / span } else { 0.0 };
    Ok(Report::default()
        .text("role", "sink")
        .int("packets", stats.packets)
        .int("inner_bytes", stats.inner_bytes)
        .num("span_s", span)
        .num("mpps", per_s(stats.packets as f64) / 1e6)
        .num("gbits", per_s(stats.inner_bytes as f64 * 8.0) / 1e9)
        .int("flows", stats.flows() as u64)
        .int("reordered", stats.reordered)
        .int("foreign", stats.foreign)
        .num("idle_end_s", IDLE_END.as_secs_f64())
        .num("cpu_s", (process_cpu_time() - cpu_start).as_secs_f64()))
}
