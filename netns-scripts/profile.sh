#!/usr/bin/env bash
# profile.sh [SCENARIO] [SECONDS]: where each core's time goes while iperf3 runs through two
# wgturbo daemons in two namespaces (SCENARIO tcp1|tcp4|udp1, as in bench.sh). Records the
# whole machine with `perf record -a -g` for SECONDS in the middle of the transfer, then prints
# the share of CPU per thread kind and the top symbols. A benchmark aid, not a test.
set -uo pipefail
cd "$(dirname "$0")/.."
SCEN=${1:-tcp1}
SECS=${2:-5}
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
bash netns-scripts/install-deps.sh >/dev/null
cargo build --release --quiet
source netns-scripts/lib.sh
trap cleanup EXIT
make_ns A a; make_ns B b
link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
genkey a; genkey b
IA="wgt${RUN_ID}a" IB="wgt${RUN_ID}b"
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
wait "${PIDS[-1]}" 2>/dev/null
grep -E 'receiver' "$WORK/iperf.txt" | tail -1
echo "== CPU share by thread (all cores; wg-worker-N are the daemons' workers, iperf3 the load)"
perf report -i "$WORK/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
echo "== top symbols"
perf report -i "$WORK/perf.data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -30
