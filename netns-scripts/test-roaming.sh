#!/usr/bin/env bash
# test-roaming.sh FIXED ROAMER: ROAMER connects to FIXED; mid-transfer ROAMER's outer address
# changes. Traffic must resume and FIXED must show the new endpoint (learned from the latest
# authenticated packet, paper section 2.1).
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
FIXED=$1 ROAMER=$2
setup_pair
start_impl "$FIXED" "$A" "$IA"
start_impl "$ROAMER" "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32,fd00:200::2/128 ""
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128 192.0.2.1:51820
ping_ok "$B" 10.200.0.1 || die "initial ping"
ep=$(ip netns exec "$A" wg show "$IA" endpoints | awk '{ print $2 }')
[ "$ep" = 192.0.2.2:51821 ] || die "endpoint before roaming is '$ep'"

# A bounded TCP transfer from A to the roamer; the roamer moves two seconds in.
iperf_start "$B" "$A" 10.200.0.2 8
client=$IPERF_CLIENT
sleep 2
ip -n "$B" addr del 192.0.2.2/24 dev "vb${RUN_ID}0"
ip -n "$B" addr add 192.0.2.3/24 dev "vb${RUN_ID}0"
# The roamer's next packets (TCP ACKs, keepalives) carry the new source.
ping_ok "$B" 10.200.0.1 || { ip netns exec "$A" wg show; ip netns exec "$B" wg show; ip netns exec "$B" ip addr; cat $WORK/*.log | tail -30; die "ping after roaming"; }
wait "$client" || die "transfer did not survive the move: $(head -c 400 "$WORK/iperf.json")"
ep=$(ip netns exec "$A" wg show "$IA" endpoints | awk '{ print $2 }')
[ "$ep" = 192.0.2.3:51821 ] || die "$FIXED endpoint after roaming is '$ep', expected 192.0.2.3:51821"
ping_ok "$A" 10.200.0.2 || die "ping from $FIXED to the roamed peer"
gbps=$(python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$WORK/iperf.json")
log "ok: $ROAMER roamed to 192.0.2.3 mid-transfer ($gbps Gbit/s); $FIXED follows"
