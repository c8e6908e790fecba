#!/usr/bin/env bash
# bench.sh [SECONDS] [ROUNDS]: iperf3 TCP, one stream, through a tunnel between two namespaces
# on this machine, for wgturbo and each peer implementation (the same implementation on both
# ends), all in one run. Prints each throughput and its ratio to the offloading wireguard-go.
# Bare veth is measured too, as the ceiling. Rounds alternate implementations so drift on a
# shared machine spreads evenly; the median of the rounds is reported.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
bash netns-scripts/install-deps.sh >/dev/null
bash netns-scripts/fetch-peers.sh >/dev/null || { echo "cannot fetch the comparison peers" >&2; exit 1; }
cargo build --release --quiet
IMPLS=${IMPLS:-"veth wgturbo wgturbo-syscalls wgturbo-nooffload wireguard-go-trixie gotatun wireguard-go boringtun"}

one_run() { # IMPL -> Gbit/s
  local impl=$1
  (
    source netns-scripts/lib.sh
    trap cleanup EXIT
    make_ns A a; make_ns B b
    link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
    if [ "$impl" = veth ]; then iperf "$B" "$A" 192.0.2.2 "$SECS"; exit; fi
    genkey a; genkey b
    IA="wgt${RUN_ID}a" IB="wgt${RUN_ID}b"
    real=$impl
    case "$impl" in
      wgturbo-nooffload) export WGTURBO_NO_OFFLOAD=1; real=wgturbo ;;
      wgturbo-syscalls) export WGTURBO_IO=syscalls; real=wgturbo ;;
      wgturbo-uring) export WGTURBO_IO=uring; real=wgturbo ;;
    esac
    start_impl "$real" "$A" "$IA" && start_impl "$real" "$B" "$IB"
    configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 192.0.2.2:51821 >/dev/null
    configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 "" >/dev/null
    ping_ok "$A" 10.200.0.2 || { echo 0; exit; }
    iperf "$B" "$A" 10.200.0.2 "$SECS"
  ) 2>/dev/null | tail -1
}

declare -A results
for round in $(seq 1 "$ROUNDS"); do
  for impl in $IMPLS; do
    g=$(one_run "$impl"); g=${g:-0}
    results[$impl]="${results[$impl]:-} $g"
    printf 'round %d  %-22s %7.3f Gbit/s\n' "$round" "$impl" "$g" >&2
  done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ref=$(median "${results[wireguard-go-trixie]:-0}")
echo "machine: $(nproc) vCPU, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "command: bash netns-scripts/bench.sh $SECS $ROUNDS   (iperf3 -c, TCP, one stream, ${SECS}s, median of $ROUNDS)"
printf '%-22s %10s %22s %s\n' implementation Gbit/s "vs wireguard-go-trixie" rounds
for impl in $IMPLS; do
  m=$(median "${results[$impl]}")
  ratio=$(awk -v m="$m" -v r="$ref" 'BEGIN { if (r > 0) printf "%.2fx", m / r; else print "n/a" }')
  printf '%-22s %10.3f %22s %s\n' "$impl" "$m" "$ratio" "${results[$impl]}"
done
