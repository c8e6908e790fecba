#!/usr/bin/env bash
# test-netem.sh: path faults between wgturbo (A) and wireguard-go (B): 1 % and 10 % loss,
# 50 ms delay, reordering, duplication, on both directions. Made with tc netem on both ends of
# the veth where the kernel has it; where it does not (CONFIG_NET_SCH_NETEM unset, as on the
# VMs this was written on), by `impair.py`, a UDP relay in A that applies the same faults
# between wgturbo and the veth (the test says which). Each time the tunnel keeps working
# (ping) and a bounded iperf3 TCP run completes through it, in both directions. Duplicated
# datagrams reach wgturbo and must be dropped by the replay window, counted (its debug log
# prints the drop counters every second).
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
command -v tc >/dev/null || die "tc (iproute2) is missing"
setup_pair
if ip netns exec "$A" tc qdisc replace dev "va${RUN_ID}0" root netem delay 0ms 2>/dev/null; then
  MODE=netem; EP=192.0.2.2:51821
else
  MODE=relay; EP=127.0.0.1:51900
  log "tc netem is not available in this kernel: faults come from netns-scripts/impair.py"
fi
LOG_LEVEL=debug start_impl wgturbo "$A" "$IA"
start_impl wireguard-go "$B" "$IB"
RELAY=
netem() { # ARGS...: the same impairment on both directions
  if [ "$MODE" = netem ]; then
    ip netns exec "$A" tc qdisc replace dev "va${RUN_ID}0" root netem "$@" || die "tc on A: $*"
    ip netns exec "$B" tc qdisc replace dev "vb${RUN_ID}0" root netem "$@" || die "tc on B: $*"
    return
  fi
  [ -n "$RELAY" ] && { kill "$RELAY" 2>/dev/null; wait "$RELAY" 2>/dev/null; }
  ip netns exec "$A" python3 "$(dirname "$0")/impair.py" 51900 51820 192.0.2.2 51821 "$@" &
  RELAY=$!; PIDS+=("$RELAY"); sleep 0.3
}
netem delay 0ms
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 "$EP"
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 ""
ping_ok "$A" 10.200.0.2 || die "no tunnel before the faults"
replayed() { grep -o 'replayed=[0-9]*' "$WORK/$IA.log" | tail -1 | cut -d= -f2; }
for fault in "loss 1%" "loss 10%" "delay 50ms" "delay 10ms reorder 25% 50%" "duplicate 10%"; do
  # shellcheck disable=SC2086 # the fault is a list of netem words
  netem $fault
  ping_ok "$A" "-c 5 10.200.0.2" || ping_ok "$A" 10.200.0.2 || die "ping under '$fault'"
  up=$(iperf "$B" "$A" 10.200.0.2 3) || die "iperf3 A -> B under '$fault'"
  down=$(iperf "$A" "$B" 10.200.0.1 3) || die "iperf3 B -> A under '$fault'"
  python3 -c 'import sys; sys.exit(0 if min(map(float, sys.argv[1:])) > 0.001 else 1)' "$up" "$down" \
    || die "no throughput under '$fault': $up / $down Gbit/s"
  log "ok under '$fault': $up Gbit/s A->B, $down Gbit/s B->A"
done
sleep 1.2 # one more drop-counter line in the log
r=$(replayed)
[ "${r:-0}" -gt 0 ] || die "duplicated datagrams were not counted as replays (replayed=${r:-none})"
netem delay 0ms
ping_ok "$A" 10.200.0.2 || die "no tunnel after the faults"
log "ok ($MODE): every fault survived; $r duplicates dropped by the replay window"
