#!/usr/bin/env bash
# test-netns-move.sh: WireGuard's namespace technique. wgturbo is started in namespace A (where
# its UDP sockets stay) and its interface is moved into namespace C; from C, traffic flows
# through the tunnel to a wireguard-go peer in B, both ways, on IPv4 and IPv6, and `wg`
# still configures it. Deleting the interface in C stops the daemon: it learns of the
# deletion from the TUN itself, not by looking for the name in its own namespace.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
setup_pair
make_ns C c
start_impl wgturbo "$A" "$IA"
pid=${PIDS[0]}
start_impl wireguard-go "$B" "$IB"
ip netns exec "$A" wg set "$IA" private-key "$WORK/a.key" listen-port 51820 \
  peer "$(cat "$WORK/b.pub")" allowed-ips 10.200.0.2/32,fd00:200::2/128 endpoint 192.0.2.2:51821 || die "wg set"
ip -n "$A" link set "$IA" netns "$C" || die "moving the interface to C"
ip -n "$A" link show "$IA" >/dev/null 2>&1 && die "the interface is still in A"
sleep 1.5
kill -0 "$pid" 2>/dev/null || die "wgturbo exited when its interface moved"
ip -n "$C" addr add 10.200.0.1/24 dev "$IA"
ip -n "$C" addr add fd00:200::1/64 dev "$IA" nodad
ip -n "$C" link set "$IA" up
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128 ""
ping_ok "$C" 10.200.0.2 || die "C -> B through the moved interface, IPv4"
ping_ok "$B" 10.200.0.1 || die "B -> C, IPv4"
ping_ok "$C" fd00:200::2 || die "C -> B, IPv6"
tcp=$(iperf "$B" "$C" 10.200.0.2 2) || die "iperf3 through the moved interface"
python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0.01 else 1)' "$tcp" || die "TCP '$tcp' Gbit/s"
# wg reaches the daemon through its socket, from any namespace.
ip netns exec "$C" wg set "$IA" peer "$(cat "$WORK/b.pub")" persistent-keepalive 7 || die "wg set from C"
ip netns exec "$C" wg show "$IA" persistent-keepalive | grep -q 7 || die "wg show from C"
ip -n "$C" link del "$IA"
for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && die "wgturbo survived the deletion of its interface in C"
grep -q "was deleted" "$WORK/$IA.log" || die "no deletion message: $(tail -3 "$WORK/$IA.log")"
log "ok: interface moved A -> C carries v4/v6 and TCP ($tcp Gbit/s) to wireguard-go; deletion in C stops the daemon"
