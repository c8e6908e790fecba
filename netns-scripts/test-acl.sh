#!/usr/bin/env bash
# test-acl.sh PEER: cryptokey routing as an access list. PEER (a real WireGuard) is allowed to
# send everything, but wgturbo allows it only 10.200.0.2/32 and fd00:200::2/128: packets with
# any other inner source are authenticated, counted, and dropped. A destination no peer owns
# is dropped and answered with ICMP unreachable, as the kernel does.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
PEER=${1:-wireguard-go}
setup_pair
start_impl wgturbo "$A" "$IA"
start_impl "$PEER" "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32,fd00:200::2/128 ""
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 0.0.0.0/0,::/0 192.0.2.1:51820
ping_ok "$B" 10.200.0.1 || die "allowed source cannot ping"
ping_ok "$B" fd00:200::1 || die "allowed IPv6 source cannot ping"
ip -n "$B" addr add 10.200.0.99/24 dev "$IB"
ip -n "$B" addr add fd00:200::99/64 dev "$IB" nodad

rx_packets() { ip -n "$A" -s -j link show "$IA" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'; }
rx_bytes() { ip netns exec "$A" wg show "$IA" transfer | awk '{ print $2 }'; }

before_pk=$(rx_packets); before_b=$(rx_bytes)
ip netns exec "$B" ping -c 5 -i 0.2 -W 1 -I 10.200.0.99 10.200.0.1 >/dev/null 2>&1 && die "spoofed IPv4 source got an answer"
ip netns exec "$B" ping -c 5 -i 0.2 -W 1 -I fd00:200::99 fd00:200::1 >/dev/null 2>&1 && die "spoofed IPv6 source got an answer"
after_pk=$(rx_packets); after_b=$(rx_bytes)
[ "$after_pk" = "$before_pk" ] || die "spoofed packets reached the interface ($before_pk -> $after_pk packets)"
[ $((after_b - before_b)) -ge $((10 * 100)) ] || die "spoofed packets never arrived ($before_b -> $after_b bytes); the test proves nothing"
ping_ok "$B" "-I 10.200.0.2 10.200.0.1" || die "allowed source stopped working"

# No peer owns 10.200.0.77 or fd00:200::77: dropped, with ICMP unreachable from wgturbo.
out=$(ip netns exec "$A" ping -c 1 -W 2 10.200.0.77 2>&1) && die "ping to a destination with no peer succeeded"
grep -qi "unreachable" <<<"$out" || die "no ICMP unreachable for a destination with no peer: $out"
out=$(ip netns exec "$A" ping -c 1 -W 2 fd00:200::77 2>&1) && die "ping6 to a destination with no peer succeeded"
grep -qi "unreachable" <<<"$out" || die "no ICMPv6 unreachable for a destination with no peer: $out"
log "ok: $PEER's spoofed sources dropped ($((after_b - before_b)) bytes authenticated, 0 packets delivered); no-peer destinations unreachable"
