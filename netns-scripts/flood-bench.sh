#!/usr/bin/env bash
# flood-bench.sh [SECONDS] [RATE]: a handshake flood against a gateway while its real peer
# pushes iperf3 through it. A benchmark, not a test. For each server implementation (IMPLS,
# default "wgturbo wireguard-go"): A runs the server, B runs wireguard-go as the established
# peer and the iperf3 client; from a third namespace F on a veth of its own to A, the
# `flood` example (Rust, batched sends: the flooder costs little CPU, so the figure is the
# server's) sends mac1-valid initiations at RATE/s (default 20000) and then flat out.
# FLOOD_PORTS=N makes the Rust flooder send from N source ports in turn (many endpoints, which
# per-endpoint caps cannot hold). FLOODER=python uses flood.py from B's second address instead (a core of its own at 20k/s),
# which also counts the cookie replies it gets back. Prints throughput without and with each
# flood (and the ratio), what the flooder sent, the server's CPU seconds and RSS before and
# after, and for wgturbo its own counters; each round's line on stderr says how long `wg show`
# took in the middle of the flat-out flood. ROUNDS=N (default 1) repeats the three phases N
# times on the same tunnel and prints medians (each round's figures go to stderr): on a
# shared 2-core machine one phase's figure moves by 10 % from run to run. PROFILE=1 records
# the whole machine (`perf record -a -g`) during the first flat-out phase and prints the share
# of CPU per thread and the top symbols (PROFILE_DATA=FILE keeps the recording).
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
RATE=${2:-20000}
IMPLS=${IMPLS:-"wgturbo wireguard-go"}
bash netns-scripts/install-deps.sh >/dev/null
cargo build --release --quiet
cargo build --release --quiet --example flood
FLOODER=${FLOODER:-rust}
source netns-scripts/lib.sh
trap cleanup EXIT
METRICS=127.0.0.1:9588
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo 0; }
metric() { metric_sum "$A" "$METRICS" "$1" 2>/dev/null || echo "-"; }
median() { python3 -c 'import statistics, sys; print("%.3f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }
ROUNDS=${ROUNDS:-1}
ratio() { python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print("%.0f%%" % (100 * b / a) if a else "-")' "$1" "$2"; }

printf '%-12s %9s %9s %6s %9s %6s %22s %22s %9s %9s\n' server "alone" "at_rate" "kept" "full" "kept" "flood_at_rate" "flood_full" "cpu_s" "rss_MiB"
for impl in $IMPLS; do
  RUN_ID=$(new_run_id)
  setup_pair
  WGTURBO_METRICS=$METRICS start_impl "$impl" "$A" "$IA"
  pid=${PIDS[-1]}
  start_impl wireguard-go "$B" "$IB"
  configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 ""
  configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 192.0.2.1:51820
  ip -n "$B" addr add 192.0.2.9/24 dev "vb${RUN_ID}0"
  make_ns F f
  link_ns "$A" "$F" 1 192.0.3.1 192.0.3.2 2001:db8:3::1 2001:db8:3::2
  ping_ok "$B" 10.200.0.1 || die "$impl: no tunnel"
  rss0=$(rss_mib "$pid"); c0=$(ticks "$pid")
  flood() {
    if [ "$FLOODER" = python ]; then
      ip netns exec "$B" timeout $((SECS + 20)) python3 netns-scripts/flood.py 192.0.2.1 51820 "$(cat "$WORK/a.pub")" \
        $((SECS + 3)) "$1" 0 192.0.2.9 >"$WORK/flood" &
    else
      ip netns exec "$F" timeout $((SECS + 20)) "$ROOT/target/release/examples/flood" 192.0.3.1:51820 "$(cat "$WORK/a.pub")" \
        $((SECS + 3)) "$1" >"$WORK/flood" &
    fi
    local f=$! p=""
    sleep 1
    local data=${PROFILE_DATA:-$WORK/perf.data}
    if [ "${PROFILE:-0}" = 1 ] && [ "$1" = 0 ] && [ ! -e "$WORK/profiled" ]; then
      touch "$WORK/profiled"
      (sleep 1; perf record -q -a -g -F 499 -o "$data" -- sleep $((SECS - 2)) >/dev/null 2>&1) &
      p=$!
    fi
    # How long `wg show` takes in the middle of the flood (a UAPI get from the control thread).
    (sleep $((SECS / 2)); t0=$(date +%s%N); ip netns exec "$A" timeout 10 wg show "$IA" >/dev/null
     echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$WORK/show_ms") &
    local s=$!
    iperf "$A" "$B" 10.200.0.1 "$SECS"
    wait "$f" "$s"
    if [ -n "$p" ]; then
      wait "$p"
      { echo "== $impl, flat-out flood: CPU share by thread (all cores)"
        perf report -i "$data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
        echo "== top symbols"
        perf report -i "$data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
      } >&2
    fi
  }
  alones=(); rates=(); fulls=()
  for round in $(seq "$ROUNDS"); do
    alones+=("$(iperf "$A" "$B" 10.200.0.1 "$SECS")")
    rates+=("$(flood "$RATE" | tail -1)"); flood_rate=$(cut -d' ' -f1,2 "$WORK/flood")
    fulls+=("$(flood 0 | tail -1)"); flood_full=$(cut -d' ' -f1,2 "$WORK/flood")
    echo "$impl round $round: alone ${alones[-1]} at_rate ${rates[-1]} full ${fulls[-1]} ($flood_rate / $flood_full; wg show during the full flood: $(cat "$WORK/show_ms") ms)" >&2
  done
  alone=$(median "${alones[@]}"); at_rate=$(median "${rates[@]}"); full=$(median "${fulls[@]}")
  c1=$(ticks "$pid"); rss1=$(rss_mib "$pid")
  cpu=$(python3 -c "print('%.1f' % (($c1 - $c0) / $(getconf CLK_TCK)))")
  printf '%-12s %9s %9s %6s %9s %6s %22s %22s %9s %9s\n' "$impl" "$alone" "$at_rate" "$(ratio "$alone" "$at_rate")" \
    "$full" "$(ratio "$alone" "$full")" "$flood_rate" "$flood_full" "$cpu" "$rss0->$rss1"
  if [ "$impl" = wgturbo ]; then
    echo "  wgturbo: initiations received $(metric 'wgturbo_handshake_messages_received_total{device="'"$IA"'",type="initiation"}'), cookie replies sent $(metric wgturbo_cookie_replies_sent_total), rate limited $(metric wgturbo_handshakes_rate_limited_total), queue full drops $(metric 'wgturbo_packets_dropped_total{device="'"$IA"'",reason="handshake_queue_full"}'), dropped by the kernel $(metric 'wgturbo_packets_dropped_total{device="'"$IA"'",reason="handshake_dropped_by_kernel"}'), handshakes completed $(metric wgturbo_handshakes_completed_total)"
  fi
  cleanup
  PIDS=(); NAMESPACES=(); WORK=$(mktemp -d "/tmp/wgturbo-flood.XXXX")
done
echo "Gbit/s of one iperf3 TCP stream B -> A, ${SECS} s each, median of $ROUNDS; flood: the last round's; flooder: $FLOODER; machine: $(nproc) vCPU, $(uname -r); commit $(git rev-parse --short HEAD)"
