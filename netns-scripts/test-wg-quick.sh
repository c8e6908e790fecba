#!/usr/bin/env bash
# test-wg-quick.sh: `WG_QUICK_USERSPACE_IMPLEMENTATION=wgturbo wg-quick up ./IFACE.conf` and
# `wg-quick down` work unchanged, with Address, MTU, routes and a wireguard-go peer.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
make_ns A a; make_ns B b
link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
genkey a; genkey b
IA="wgt${RUN_ID}q" IB="wgt${RUN_ID}b"
start_impl wireguard-go "$B" "$IB"
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128,10.77.0.0/16 ""
cat > "$WORK/$IA.conf" <<CONF
[Interface]
PrivateKey = $(cat "$WORK/a.key")
Address = 10.200.0.1/32, fd00:200::1/128
ListenPort = 51820
MTU = 1400

[Peer]
PublicKey = $(cat "$WORK/b.pub")
AllowedIPs = 10.200.0.2/32, fd00:200::2/128, 10.99.0.0/16
Endpoint = 192.0.2.2:51821
PersistentKeepalive = 15
CONF
ip netns exec "$A" env WG_QUICK_USERSPACE_IMPLEMENTATION="$WGTURBO" wg-quick up "$WORK/$IA.conf" 2>"$WORK/up.log" \
  || { cat "$WORK/up.log" >&2; die "wg-quick up"; }
pid=""
for p in /proc/[0-9]*; do
  [ "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" = "$WGTURBO --foreground $IA " ] && pid=${p#/proc/}
done
[ -n "$pid" ] || die "no wgturbo daemon after wg-quick up"
PIDS+=("$pid")
grep -q "10.99.0.0/16" <<<"$(ip -n "$A" route show dev "$IA")" || die "wg-quick did not route AllowedIPs"
[ "$(ip -n "$A" -j link show "$IA" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["mtu"])')" = 1400 ] || die "MTU"
ping_ok "$A" 10.200.0.2 || die "ping through a wg-quick tunnel"
ping_ok "$A" fd00:200::2 || die "ping6 through a wg-quick tunnel"
grep -q 15 <<<"$(ip netns exec "$A" wg show "$IA" persistent-keepalive)" || die "keepalive from the config"
ip netns exec "$A" env WG_QUICK_USERSPACE_IMPLEMENTATION="$WGTURBO" wg-quick down "$WORK/$IA.conf" 2>"$WORK/down.log" \
  || { cat "$WORK/down.log" >&2; die "wg-quick down"; }
for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && die "daemon still running after wg-quick down"
ip -n "$A" link show "$IA" >/dev/null 2>&1 && die "interface left after wg-quick down"
log "ok: wg-quick up/down through wgturbo"
