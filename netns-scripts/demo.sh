#!/usr/bin/env bash
# The README's first command: install what is needed, build, then bring up a wgturbo tunnel
# between two fresh network namespaces, ping through it, run a short iperf3, print the
# result and remove everything again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash netns-scripts/install-deps.sh
cargo build --release --quiet
source netns-scripts/lib.sh
require_root
trap cleanup EXIT
setup_pair
start_impl wgturbo "$A" "$IA"
start_impl "${DEMO_PEER:-wgturbo}" "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32,fd00:200::2/128 192.0.2.2:51821
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128 ""
echo "== ping through the tunnel (wgturbo in $A -> ${DEMO_PEER:-wgturbo} in $B)"
ip netns exec "$A" ping -c 3 -i 0.2 10.200.0.2
ip netns exec "$A" ping -c 3 -i 0.2 fd00:200::2
echo "== iperf3 TCP, 5 s"
gbps=$(iperf "$B" "$A" 10.200.0.2 5)
echo "== wg show"
ip netns exec "$A" wg show "$IA"
echo
echo "RESULT: tunnel up, ping ok, iperf3 TCP ${gbps} Gbit/s through wgturbo"
