//! Real tunnels in network namespaces against wireguard-go and boringtun, driven by wg(8).
//! Each test runs a script from netns-scripts/ (they need root, the peers and iperf3, which
//! `netns-scripts/install-deps.sh` installs). Without root a test skips with a message; under
//! CI (`CI=true`, always root) it fails instead, so CI cannot pass on skips.
//! The tests run one at a time: they time traffic on a 2-core machine.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn script(name: &str, args: &[&str]) {
    script_env(name, args, &[]);
}

fn script_env(name: &str, args: &[&str], env: &[(&str, &str)]) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    if !is_root {
        assert!(!ci, "netns tests need root under CI");
        eprintln!("SKIP {name}: needs root");
        return;
    }
    let wgturbo = PathBuf::from(env!("CARGO_BIN_EXE_wgturbo"));
    let status = Command::new("bash")
        .arg(root.join("netns-scripts").join(name))
        .args(args)
        .env("WGTURBO", &wgturbo)
        .envs(env.iter().copied())
        .status()
        .expect("run bash");
    assert!(status.success(), "{name} {args:?} failed ({status})");
}

/// The interop matrix runs on both I/O backends; the script checks from the daemon's start-up
/// line that the backend asked for is the one that ran (no silent fallback).
macro_rules! interop {
    ($($test:ident / $syscalls:ident: $a:literal -> $b:literal over $outer:literal;)*) => {
        $(
            #[test]
            fn $test() {
                script_env("test-interop.sh", &[$a, $b, $outer], &[("WGTURBO_IO", "uring")]);
            }
            #[test]
            fn $syscalls() {
                script_env("test-interop.sh", &[$a, $b, $outer], &[("WGTURBO_IO", "syscalls")]);
            }
        )*
    };
}

interop! {
    wgturbo_to_wgturbo_v4 / wgturbo_to_wgturbo_v4_syscalls: "wgturbo" -> "wgturbo" over "4";
    wgturbo_to_wgturbo_v6 / wgturbo_to_wgturbo_v6_syscalls: "wgturbo" -> "wgturbo" over "6";
    wgturbo_to_wireguard_go_v4 / wgturbo_to_wireguard_go_v4_syscalls: "wgturbo" -> "wireguard-go" over "4";
    wgturbo_to_wireguard_go_v6 / wgturbo_to_wireguard_go_v6_syscalls: "wgturbo" -> "wireguard-go" over "6";
    wireguard_go_to_wgturbo_v4 / wireguard_go_to_wgturbo_v4_syscalls: "wireguard-go" -> "wgturbo" over "4";
    wireguard_go_to_wgturbo_v6 / wireguard_go_to_wgturbo_v6_syscalls: "wireguard-go" -> "wgturbo" over "6";
    wgturbo_to_boringtun_v4 / wgturbo_to_boringtun_v4_syscalls: "wgturbo" -> "boringtun" over "4";
    wgturbo_to_boringtun_v6 / wgturbo_to_boringtun_v6_syscalls: "wgturbo" -> "boringtun" over "6";
    boringtun_to_wgturbo_v4 / boringtun_to_wgturbo_v4_syscalls: "boringtun" -> "wgturbo" over "4";
    boringtun_to_wgturbo_v6 / boringtun_to_wgturbo_v6_syscalls: "boringtun" -> "wgturbo" over "6";
}

/// The interop script on io_uring with one read knob set, the start-up line checked for what
/// engaged.
fn uring_interop(a: &str, b: &str, outer: &str, knob: (&str, &str), engaged: &str) {
    let env = [("WGTURBO_IO", "uring"), knob, ("EXPECT_STARTUP", engaged)];
    script_env("test-interop.sh", &[a, b, outer], &env);
}

/// io_uring's reads forced off multishot: single reads with buffer selection, the fallback of
/// a kernel without multishot, against each other implementation in each role.
#[test]
fn uring_single_reads_wgturbo_to_wireguard_go() {
    let single = "single TUN reads, single UDP receives";
    uring_interop("wgturbo", "wireguard-go", "4", ("WGTURBO_URING_MULTISHOT", "0"), single);
}

#[test]
fn uring_single_reads_boringtun_to_wgturbo() {
    let single = "single TUN reads, single UDP receives";
    uring_interop("boringtun", "wgturbo", "6", ("WGTURBO_URING_MULTISHOT", "0"), single);
}

/// Rings of two buffers: the multishot reads run dry all the time (ENOBUFS) and are armed
/// again as buffers come back; ping, TCP and UDP still cross, both ways.
#[test]
fn uring_tiny_buffer_rings_wireguard_go_to_wgturbo() {
    let tiny = "multishot TUN reads, multishot UDP receives, 2 provided buffers";
    uring_interop("wireguard-go", "wgturbo", "4", ("WGTURBO_URING_BUFFERS", "2"), tiny);
}

#[test]
fn uring_tiny_buffer_rings_wgturbo_to_boringtun() {
    let tiny = "multishot TUN reads, multishot UDP receives, 2 provided buffers";
    uring_interop("wgturbo", "boringtun", "6", ("WGTURBO_URING_BUFFERS", "2"), tiny);
}

#[test]
fn roaming_wgturbo_roams_wireguard_go_follows() {
    script("test-roaming.sh", &["wireguard-go", "wgturbo"]);
}

#[test]
fn roaming_wgturbo_roams_boringtun_follows() {
    script("test-roaming.sh", &["boringtun", "wgturbo"]);
}

#[test]
fn roaming_wgturbo_roams_wgturbo_follows() {
    script("test-roaming.sh", &["wgturbo", "wgturbo"]);
}

#[test]
fn allowed_ips_enforced_against_wireguard_go() {
    script("test-acl.sh", &["wireguard-go"]);
}

#[test]
fn allowed_ips_enforced_against_boringtun() {
    script("test-acl.sh", &["boringtun"]);
}

#[test]
fn wg_tool_drives_every_option() {
    script("test-wg-tool.sh", &[]);
}

#[test]
fn path_faults_loss_delay_reorder_duplicates_against_wireguard_go() {
    script("test-netem.sh", &[]);
}

#[test]
fn dist_systemd_units_pass_systemd_analyze_verify() {
    script("test-dist.sh", &[]);
}

#[test]
fn interface_moved_to_another_namespace_keeps_working() {
    script("test-netns-move.sh", &[]);
}

#[test]
fn ten_thousand_peers_and_the_last_one_carries_traffic() {
    script("test-scale.sh", &["10000"]);
}

#[test]
fn daemon_lifecycle_and_startup_errors() {
    script("test-lifecycle.sh", &[]);
}

#[test]
fn wg_quick_up_and_down() {
    script("test-wg-quick.sh", &[]);
}

#[test]
fn rekey_after_time_against_wireguard_go() {
    script("test-rekey.sh", &[]);
}

/// The fallback dataplane (no vnet_hdr, TSO/GRO, UDP GSO/GRO) against both real peers.
#[test]
fn without_offloads_against_wireguard_go() {
    script_env("test-interop.sh", &["wgturbo", "wireguard-go", "4"], &[("WGTURBO_NO_OFFLOAD", "1")]);
}

#[test]
fn without_offloads_from_boringtun() {
    script_env("test-interop.sh", &["boringtun", "wgturbo", "6"], &[("WGTURBO_NO_OFFLOAD", "1")]);
}

/// The other worker placement and crypto hand-off (pinned, chunks handed out every round)
/// against a real peer.
#[test]
fn pinned_with_parallel_crypto_always_against_wireguard_go() {
    script_env(
        "test-interop.sh",
        &["wireguard-go", "wgturbo", "4"],
        &[("WGTURBO_PIN", "1"), ("WGTURBO_PARALLEL_CRYPTO", "always")],
    );
}

#[test]
fn handshake_flood_gets_cookies_and_real_peer_gets_through() {
    script("test-dos.sh", &[]);
}

/// io_uring refused by the kernel: the daemon says so and runs on syscalls.
#[test]
fn uring_refused_falls_back_to_syscalls() {
    script_env("test-uring-fallback.sh", &[], &[("WGTURBO_IO", "uring")]);
}

/// The same with no backend asked for: io_uring is the default, and its refusal is said too.
#[test]
fn uring_refused_by_default_falls_back_to_syscalls() {
    script_env("test-uring-fallback.sh", &[], &[]);
}

/// Prometheus metrics scraped during traffic: counters grow, drop reasons count exactly the
/// spoofed sources and garbage the test sent, no secret on the page.
#[test]
fn metrics_scraped_during_traffic_count_what_was_sent() {
    script("test-metrics.sh", &["wireguard-go"]);
}

/// The same with io_uring buffer rings of two buffers: the counter of reads that found their
/// ring empty grows, and everything else still counts exactly.
#[test]
fn metrics_count_io_uring_rings_running_dry() {
    script_env("test-metrics.sh", &["wireguard-go"], &[("WGTURBO_URING_BUFFERS", "2")]);
}

/// wireguard-go's own netns.sh shape: interfaces moved out of the sockets' namespace, MTU 1420
/// and 34,736 over v4 and v6, roaming with a port change, crypto-RP with a more specific
/// allowed IP on another peer, NAT with persistent keepalive, source address fall-over.
#[test]
fn netns_suite_against_wireguard_go() {
    script("test-netns-suite.sh", &[]);
}

/// A wireguard-go peer restarted mid-transfer: back after one handshake, the transfer
/// completes; many small flows through an authenticated peer leave RSS bounded.
#[test]
fn peer_restart_mid_transfer_and_many_small_flows() {
    script("test-restart.sh", &[]);
}

/// The gateway benchmark, short: wgturbo-load's 10 peers against wgturbo and wireguard-go as
/// the gateway, upload and download at 64 bytes, one core each; every row must carry traffic
/// and every opened download datagram be authentic (CHECK=1).
#[test]
fn gateway_bench_smoke_against_wireguard_go() {
    let dir = std::env::temp_dir().join(format!("wgturbo-gw-smoke-{}", std::process::id()));
    let dir_s = dir.to_string_lossy().to_string();
    let load = env!("CARGO_BIN_EXE_wgturbo-load");
    let wg_go = String::from_utf8(
        Command::new("sh").args(["-c", "command -v wireguard-go"]).output().map(|o| o.stdout).unwrap_or_default(),
    )
    .unwrap_or_default()
    .trim()
    .to_string();
    script_env(
        "gateway-bench.sh",
        &[],
        &[
            ("SECONDS", "5"),
            ("IMPLS", "wgturbo wireguard-go"),
            ("PEERS", "10"),
            ("SIZES", "64"),
            ("DIRECTIONS", "upload download"),
            ("BIG", "0"),
            ("MIXED", "0"),
            ("WHOLE_BOX", "0"),
            ("TAG", "smoke"),
            ("PERF_DIR", &dir_s),
            ("CHECK", "1"),
            ("LOAD", load),
            ("WIREGUARD_GO", &wg_go),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_endpoint_survives_idle_connections_endless_headers_and_slowloris() {
    script("test-metrics-abuse.sh", &[]);
}

#[test]
fn corrupted_datagrams_are_not_repaired_by_coalescing() {
    script("test-checksum.sh", &[]);
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    script("test-systemd-notify.sh", &[]);
}

#[test]
fn a_flood_spoofing_a_peers_endpoint_cannot_deny_its_handshake() {
    script("test-dos-spoofed.sh", &[]);
}
