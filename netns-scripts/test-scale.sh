#!/usr/bin/env bash
# test-scale.sh [PEERS]: a wgturbo gateway with PEERS (default 10,000) random peers configured in
# one `wg setconf`, the real peer (wireguard-go) added last. Traffic to it must flow both ways,
# every peer must be listed by `wg show`, removing a peer must leave the rest, and all of it
# within a time bound (5 s for the setconf; 0.1 s here, where it took 1.2 s before the
# per-peer lists; `netns-scripts/scale.sh` is the benchmark at 100,000).
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
PEERS=${1:-10000}
setup_pair
start_impl wgturbo "$A" "$IA"
start_impl wireguard-go "$B" "$IB"
python3 - "$WORK/gw.conf" "$PEERS" "$(cat "$WORK/a.key")" "$(cat "$WORK/b.pub")" <<'PY'
import base64, ipaddress, os, sys
path, peers, key, real = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
base = int(ipaddress.IPv4Address("10.64.0.0"))
with open(path, "w") as f:
    f.write(f"[Interface]\nPrivateKey = {key}\nListenPort = 51820\n")
    for p in range(peers):
        pub = base64.b64encode(os.urandom(32)).decode()
        f.write(f"\n[Peer]\nPublicKey = {pub}\nAllowedIPs = {ipaddress.IPv4Address(base + p)}/32\nEndpoint = 192.0.2.77:{1024 + p % 60000}\n")
    f.write(f"\n[Peer]\nPublicKey = {real}\nAllowedIPs = 10.200.0.2/32, fd00:200::2/128\nEndpoint = 192.0.2.2:51821\n")
PY
t0=$(date +%s%N)
timeout 30 ip netns exec "$A" wg setconf "$IA" "$WORK/gw.conf" || die "wg setconf of $PEERS peers"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$ms" -lt 5000 ] || die "wg setconf of $PEERS peers took $ms ms"
ip -n "$A" addr add 10.200.0.1/24 dev "$IA"
ip -n "$A" addr add fd00:200::1/64 dev "$IA" nodad
ip -n "$A" link set "$IA" up
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128 ""
ping_ok "$A" 10.200.0.2 || die "gateway -> last peer ping IPv4"
ping_ok "$B" 10.200.0.1 || die "last peer -> gateway ping IPv4"
ping_ok "$A" fd00:200::2 || die "gateway -> last peer ping IPv6"
n=$(timeout 10 ip netns exec "$A" wg show "$IA" peers | wc -l)
[ "$n" -eq $((PEERS + 1)) ] || die "wg show lists $n peers, not $((PEERS + 1))"
victim=$(ip netns exec "$A" wg show "$IA" peers | head -1)
timeout 10 ip netns exec "$A" wg set "$IA" peer "$victim" remove || die "removing one peer"
n=$(ip netns exec "$A" wg show "$IA" peers | wc -l)
[ "$n" -eq "$PEERS" ] || die "after removing one, $n peers"
ping_ok "$A" 10.200.0.2 || die "ping after removing another peer"
log "ok: $PEERS peers set in $ms ms; the last one added carries traffic both ways; removal leaves the rest"
