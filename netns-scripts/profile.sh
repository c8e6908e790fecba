#!/usr/bin/env bash
# profile.sh [SCENARIO] [SECONDS]: where each core's time goes while iperf3 runs through two
# wgturbo daemons in two namespaces (SCENARIO tcp1|tcp4|udp1, as in bench.sh). Records the
# whole machine with `perf record -a -g` for SECONDS in the middle of the transfer, then prints
# the share of CPU per thread kind and the top symbols. A benchmark aid, not a test. IMPL=
# wgturbo-uring or wgturbo-syscalls picks the backend; PERF_OUT=FILE keeps the recording.
#
# SCENARIO gateway-upload|gateway-download: the gateway benchmark's per-core row at 64 bytes
# with one peer (IMPL=wgturbo by default; wgturbo-uring, wgturbo-syscalls, wireguard-go), the
# gateway's core alone recorded, its time split into syscall entry, copies, crypto, the
# kernel's network stack (receive, forwarding, TUN and UDP), routing and the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
SCEN=${1:-tcp1}
SECS=${2:-5}
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
case "$SCEN" in
  gateway-upload|gateway-download)
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    impl=${IMPL:-wgturbo} size=${SIZE:-64}
    SECONDS=$SECS IMPLS=$impl PEERS=1 SIZES=$size DIRECTIONS=${SCEN#gateway-} BIG=0 MIXED=0 WHOLE_BOX=0 \
      TAG=profile PROFILE="$dir" bash netns-scripts/gateway-bench.sh 2>&1 | grep -E 'Mpps' | head -1
    rm -f perf/gateway-profile.jsonl perf/gateway-profile.svg
    data="$dir/$impl-${SCEN#gateway-}-$size-1.data"
    [ -s "$data" ] || { echo "no profile recorded" >&2; exit 1; }
    echo "== the gateway's core (0): share by thread"
    perf report -i "$data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6
    echo "== by kind of work"
    perf report -i "$data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | python3 -c '
import re, sys
kinds = [
    ("idle", r"pv_native_safe_halt|default_idle|cpuidle|do_idle|native_safe_halt"),
    ("crypto (AEAD)", r"chacha|poly1305|aead"),
    ("copies to/from user", r"copy_to_iter|copy_from_iter|copy_to_user|copy_from_user|copyout|copyin|memcpy|memmove|rep_movs|skb_copy_datagram|__check_object_size"),
    ("syscall entry and exit", r"entry_SYSCALL|do_syscall|syscall_exit|syscall_return|__x64_sys|fdget|fput|ksys_|__sys_|x64_sys_call|native_write_msr|read_tsc|do_sys_poll|__do_sys|__se_sys|vfs_read|vfs_write|io_uring_enter|__io_uring"),
    ("routing and peer lookup", r"wgturbo::routing|AllowedIps|wgturbo::dataplane::indices"),
    ("kernel network stack", r"handle_softirqs|net_rx|netif|napi|ip_|ipv6|udp|tun_|tcp_|skb|__dev_queue|dev_hard|veth|neigh|fib_|rt_|dst_|nf_|sock_|sk_|inet_|process_backlog|__napi|gro|flow_dissect|siphash|kfree|kmalloc|kmem|slab|page_|__alloc|raw_spin|_raw_|consume_skb|validate_xmit|sch_direct|qdisc|rcu|icmp|csum|checksum"),
    ("wgturbo (the rest)", r"wgturbo::|ring_core"),
]
share = {k: 0.0 for k, _ in kinds}
rest = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(3)
    for k, rx in kinds:
        if re.search(rx, sym):
            share[k] += pct
            break
    else:
        rest += pct
for k, _ in kinds:
    print(f"{share[k]:6.1f}%  {k}")
print(f"{rest:6.1f}%  other (libc, the scheduler, ...)")'
    echo "== top symbols"
    perf report -i "$data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25
    exit 0 ;;
esac
bash netns-scripts/install-deps.sh >/dev/null
cargo build --release --quiet
source netns-scripts/lib.sh
trap cleanup EXIT
make_ns A a; make_ns B b
link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
genkey a; genkey b
IA="wgt${RUN_ID}a" IB="wgt${RUN_ID}b"
case "${IMPL:-wgturbo}" in
  wgturbo-uring) export WGTURBO_IO=uring ;; wgturbo-syscalls) export WGTURBO_IO=syscalls ;;
esac
start_impl wgturbo "$A" "$IA" && start_impl wgturbo "$B" "$IB" || die "daemons did not start"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 192.0.2.2:51821 >/dev/null
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 "" >/dev/null
ping_ok "$A" 10.200.0.2 || die "no tunnel"
case "$SCEN" in
  tcp1) args=() ;; tcp4) args=(-P 4) ;; udp1) args=(-u -b 0 -l 1360) ;;
  *) die "scenario: tcp1, tcp4 or udp1" ;;
esac
ip netns exec "$B" timeout $((SECS + 30)) iperf3 -s -1 -B 10.200.0.2 >/dev/null 2>&1 &
PIDS+=("$!"); sleep 0.5
ip netns exec "$A" timeout $((SECS + 25)) iperf3 -c 10.200.0.2 -t $((SECS + 4)) "${args[@]}" > "$WORK/iperf.txt" 2>&1 &
PIDS+=("$!"); sleep 2
perf record -q -a -g -F 499 -o "$WORK/perf.data" -- sleep "$SECS" >/dev/null 2>&1
[ -n "${PERF_OUT:-}" ] && cp "$WORK/perf.data" "$PERF_OUT"
wait "${PIDS[-1]}" 2>/dev/null
grep -E 'receiver' "$WORK/iperf.txt" | tail -1
echo "== CPU share by thread (all cores; wg-worker-N are the daemons' workers, iperf3 the load)"
perf report -i "$WORK/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
echo "== top symbols"
perf report -i "$WORK/perf.data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -30
