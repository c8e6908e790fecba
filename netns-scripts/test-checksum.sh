#!/usr/bin/env bash
# test-checksum.sh: UDP datagrams corrupted before they were sealed (their checksum fails) are
# dropped by the receiving kernel, as they would be without a tunnel: the receiving wgturbo
# must not merge them into GRO super-packets, whose checksums the kernel computes afresh.
# Bursts of 40 back-to-back datagrams of one flow, every tenth corrupted, from a raw socket.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
setup_pair
start_impl wgturbo "$A" "$IA"
start_impl wgturbo "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 192.0.2.2:51821
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 ""
ping_ok "$A" 10.200.0.2 || die "no tunnel"
grep -q "GRO" "$WORK/$IB.log" || die "the receiving daemon did not take TUN GRO: $(cat "$WORK/$IB.log")"
csum_errors() { ip netns exec "$B" awk '/^Udp:/ { if (h) { print $8; exit } h = 1 }' /proc/net/snmp; }
[ "$(ip netns exec "$B" awk '/^Udp:/ { print $8; exit }' /proc/net/snmp)" = InCsumErrors ] || die "no InCsumErrors column"
e0=$(csum_errors)
ip netns exec "$B" timeout 30 python3 "$ROOT/netns-scripts/corrupt.py" recv 10.200.0.2 6 > "$WORK/got" &
RECV=$!
PIDS+=("$RECV")
sleep 0.5
sent=$(ip netns exec "$A" timeout 20 python3 "$ROOT/netns-scripts/corrupt.py" send 10.200.0.1 10.200.0.2 10) || die "sender failed"
wait "$RECV"
got=$(cat "$WORK/got")
errors=$(( $(csum_errors) - e0 ))
[ "$sent" = 400 ] || die "sent $sent"
[ "$got" = 360 ] || die "the receiver got $got of 360 intact datagrams (400 sent, 40 corrupted; $errors checksum errors)"
[ "$errors" = 40 ] || die "the receiving kernel counted $errors checksum errors, not 40"
log "ok: 400 sent, 360 intact delivered, the 40 corrupted dropped by the kernel as checksum errors"
