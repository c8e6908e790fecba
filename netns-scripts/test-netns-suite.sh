#!/usr/bin/env bash
# test-netns-suite.sh: the shape of wireguard-go's own tests/netns.sh, with wgturbo on one side
# and wireguard-go on the other.
# Part 1: both daemons start in namespace O, where their UDP sockets stay and talk over O's
# loopback; their interfaces move into C (wgturbo) and D (wireguard-go). Then: ping and iperf3
# over IPv4 and IPv6 inner at MTU 1420 and at 34,736; roaming with a port change, each way;
# crypto-RP: a more specific allowed IP on another peer takes the address over, in both
# directions, until that peer goes.
# Part 2: wireguard-go behind a masquerading router R, with persistent keepalive, reaches a
# wgturbo that has no endpoint for it: wgturbo learns the NAT's address from the keepalives
# and reaches back through it. Then, without NAT, the address wgturbo was reached at is
# removed: its next sends fall over to the interface's new address and the peer follows.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
command -v nft >/dev/null || die "nft is missing (install-deps.sh installs nftables)"
make_ns O o
make_ns C c
make_ns D d
genkey a
genkey b
IC="wgt${RUN_ID}c"
ID="wgt${RUN_ID}d"
start_impl wgturbo "$O" "$IC"
start_impl wireguard-go "$O" "$ID"
ip netns exec "$O" wg set "$IC" private-key "$WORK/a.key" listen-port 51001 \
  peer "$(cat "$WORK/b.pub")" allowed-ips 192.168.241.2/32,fd00::2/128 endpoint 127.0.0.1:51002 || die "wg set $IC"
ip netns exec "$O" wg set "$ID" private-key "$WORK/b.key" listen-port 51002 \
  peer "$(cat "$WORK/a.pub")" allowed-ips 192.168.241.1/32,fd00::1/128 endpoint 127.0.0.1:51001 || die "wg set $ID"
ip -n "$O" link set "$IC" netns "$C" || die "move $IC"
ip -n "$O" link set "$ID" netns "$D" || die "move $ID"
ip -n "$C" addr add 192.168.241.1/24 dev "$IC"
ip -n "$C" addr add fd00::1/112 dev "$IC" nodad
ip -n "$D" addr add 192.168.241.2/24 dev "$ID"
ip -n "$D" addr add fd00::2/112 dev "$ID" nodad
ip -n "$C" link set "$IC" up
ip -n "$D" link set "$ID" up

big_enough() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0.01 else 1)' "$1"; }
for mtu in 1420 34736; do
  ip -n "$C" link set "$IC" mtu "$mtu" || die "mtu $mtu on $IC"
  ip -n "$D" link set "$ID" mtu "$mtu" || die "mtu $mtu on $ID"
  sleep 1.2  # wgturbo reads the MTU once a second
  ping_ok "$C" 192.168.241.2 || die "MTU $mtu: C -> D ping IPv4"
  ping_ok "$D" fd00::1 || die "MTU $mtu: D -> C ping IPv6"
  ip netns exec "$C" ping -c 2 -W 2 -s $((mtu - 28)) -M do 192.168.241.2 >/dev/null 2>&1 \
    || die "MTU $mtu: a full-sized IPv4 packet does not cross"
  v4=$(iperf "$D" "$C" 192.168.241.2 2) && big_enough "$v4" || die "MTU $mtu: iperf3 C -> D IPv4 ($v4)"
  v6=$(iperf "$C" "$D" fd00::1 2) && big_enough "$v6" || die "MTU $mtu: iperf3 D -> C IPv6 ($v6)"
  log "MTU $mtu: C -> D IPv4 $v4 Gbit/s, D -> C IPv6 $v6 Gbit/s"
done

# Roaming with a port change: each side learns the other's new port from its packets.
endpoint_of() { ip netns exec "$O" wg show "$1" endpoints | awk -v p="$2" '$1 == p { print $2 }'; }
ip netns exec "$O" wg set "$ID" listen-port 51003 || die "wireguard-go port change"
ping_ok "$D" 192.168.241.1 || die "D -> C after wireguard-go changed its port"
[ "$(endpoint_of "$IC" "$(cat "$WORK/b.pub")")" = 127.0.0.1:51003 ] \
  || die "wgturbo did not follow the new port: $(endpoint_of "$IC" "$(cat "$WORK/b.pub")")"
ip netns exec "$O" wg set "$IC" listen-port 51004 || die "wgturbo port change"
ping_ok "$C" 192.168.241.2 || die "C -> D after wgturbo changed its port"
[ "$(endpoint_of "$ID" "$(cat "$WORK/a.pub")")" = 127.0.0.1:51004 ] \
  || die "wireguard-go did not follow wgturbo's new port: $(endpoint_of "$ID" "$(cat "$WORK/a.pub")")"

# Crypto-RP: another peer with a more specific allowed IP owns 192.168.241.2 on wgturbo's side.
other=$(wg genkey | wg pubkey)
ip netns exec "$O" wg set "$IC" peer "$(cat "$WORK/b.pub")" allowed-ips 192.168.241.0/24,fd00::2/128 || die "widen"
ip netns exec "$O" wg set "$IC" peer "$other" allowed-ips 192.168.241.2/32 || die "more specific peer"
ip netns exec "$D" ping -c 2 -i 0.3 -W 1 192.168.241.1 >/dev/null 2>&1 && die "a source owned by another peer got through"
ip netns exec "$C" ping -c 2 -i 0.3 -W 1 192.168.241.2 >/dev/null 2>&1 && die "traffic to the other peer's address reached D"
ip netns exec "$O" wg set "$IC" peer "$other" remove || die "remove the more specific peer"
ping_ok "$D" 192.168.241.1 || die "D -> C after the more specific peer went"
ping_ok "$C" 192.168.241.2 || die "C -> D after the more specific peer went"
log "part 1: moved interfaces, MTU 1420 and 34736, port roaming both ways, crypto-RP: ok"

# Part 2: E (wgturbo) -- R (router) -- F (wireguard-go, masqueraded by R).
make_ns E e
make_ns F f
make_ns R r
link_ns "$E" "$R" 1 10.0.1.1 10.0.1.254 2001:db8:1::1 2001:db8:1::fe
link_ns "$F" "$R" 2 10.0.2.1 10.0.2.254 2001:db8:2::1 2001:db8:2::fe
ip -n "$E" route add default via 10.0.1.254
ip -n "$F" route add default via 10.0.2.254
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$R" nft -f - <<NFT || die "nft masquerade"
table ip nat {
  chain post { type nat hook postrouting priority 100; ip saddr 10.0.2.0/24 oifname "va${RUN_ID}1" masquerade; }
}
NFT
# The router's side of each veth is the "b" end: name them for the rule.
ip -n "$R" link set "vb${RUN_ID}1" name "va${RUN_ID}1" 2>/dev/null || die "rename"
IE="wgt${RUN_ID}e"
IF="wgt${RUN_ID}f"
start_impl wgturbo "$E" "$IE"
start_impl wireguard-go "$F" "$IF"
configure "$E" "$IE" "$WORK/a.key" 51001 192.168.242.1/24 fd00:242::1/64 "$(cat "$WORK/b.pub")" 192.168.242.2/32,fd00:242::2/128 ""
configure "$F" "$IF" "$WORK/b.key" 51002 192.168.242.2/24 fd00:242::2/64 "$(cat "$WORK/a.pub")" 192.168.242.1/32,fd00:242::1/128 \
  10.0.1.1:51001 persistent-keepalive 1
learned=""
for _ in $(seq 1 50); do
  learned=$(ip netns exec "$E" wg show "$IE" endpoints | awk '{ print $2 }')
  [[ "$learned" == 10.0.1.254:* ]] && break
  sleep 0.1
done
[[ "$learned" == 10.0.1.254:* ]] || die "wgturbo did not learn the NAT's address from keepalives: '$learned'"
ping_ok "$E" 192.168.242.2 || die "wgturbo -> behind the NAT"
log "NAT: wgturbo learned $learned from persistent keepalives and reaches back through it"

# Source fall-over, without NAT: the address wgturbo was reached at goes away.
ip netns exec "$R" nft flush ruleset
ip netns exec "$F" wg set "$IF" peer "$(cat "$WORK/a.pub")" persistent-keepalive 0 endpoint 10.0.1.1:51001
ping_ok "$F" 192.168.242.1 || die "F -> E before the fall-over"
ip -n "$E" addr del 10.0.1.1/24 dev "va${RUN_ID}1"
ip -n "$E" addr add 10.0.1.3/24 dev "va${RUN_ID}1"
ip -n "$E" route add default via 10.0.1.254 || die "default route on E"
ping_ok "$E" 192.168.242.2 || die "E -> F after its address was removed: no fall-over to 10.0.1.3"
[ "$(ip netns exec "$F" wg show "$IF" endpoints | awk '{ print $2 }')" = 10.0.1.3:51001 ] \
  || die "wireguard-go did not see wgturbo's new source: $(ip netns exec "$F" wg show "$IF" endpoints)"
ping_ok "$F" 192.168.242.1 || die "F -> E after the fall-over"
log "ok: netns suite (moved interfaces at MTU 1420/34736 v4+v6, port roaming, crypto-RP, NAT with keepalive, source fall-over)"
