#!/usr/bin/env bash
# test-rekey.sh: two tunnels against wireguard-go run past REKEY_AFTER_TIME (120 s) with
# traffic: in one wgturbo initiates, in the other wireguard-go does. Each must rekey (a new
# handshake on both sides) without losing the tunnel. Takes about 140 s.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
make_ns A a; make_ns B b; make_ns C c; make_ns D d
link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
link_ns "$C" "$D" 1 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
genkey a; genkey b; genkey c; genkey d
IA="wgt${RUN_ID}a" IB="wgt${RUN_ID}b" IC="wgt${RUN_ID}c" ID="wgt${RUN_ID}d"
start_impl wgturbo "$A" "$IA"
start_impl wireguard-go "$B" "$IB"
start_impl wireguard-go "$C" "$IC"
start_impl wgturbo "$D" "$ID"
# A (wgturbo) and C (wireguard-go) initiate.
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 192.0.2.2:51821
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 ""
configure "$C" "$IC" "$WORK/c.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/d.pub")" 10.200.0.2/32 192.0.2.2:51821
configure "$D" "$ID" "$WORK/d.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/c.pub")" 10.200.0.1/32 ""
ping_ok "$A" 10.200.0.2 || die "first ping A"
ping_ok "$C" 10.200.0.2 || die "first ping C"
hs_a=$(latest_handshake "$A" "$IA" "$(cat "$WORK/b.pub")")
hs_d=$(latest_handshake "$D" "$ID" "$(cat "$WORK/c.pub")")
log "handshakes at $hs_a and $hs_d; pinging through REKEY_AFTER_TIME (about 140 s)"
ip netns exec "$A" ping -i 0.5 -W 1 -w 140 -q 10.200.0.2 >"$WORK/ping-a" 2>&1 &
pa=$!; PIDS+=("$pa")
ip netns exec "$C" ping -i 0.5 -W 1 -w 140 -q 10.200.0.2 >"$WORK/ping-c" 2>&1 &
pc=$!; PIDS+=("$pc")
wait "$pa"; wait "$pc"
loss() { grep -Eo '[0-9.]+% packet loss' "$1" | grep -Eo '^[0-9.]+'; }
for side in "A $A $IA b $hs_a ping-a" "D $D $ID c $hs_d ping-c"; do
  set -- $side
  now_hs=$(latest_handshake "$2" "$3" "$(cat "$WORK/$4.pub")")
  [ "$now_hs" -ge $(( $5 + 110 )) ] || die "$1: no rekey (handshake $5 -> $now_hs)"
  l=$(loss "$WORK/$6")
  awk -v l="$l" 'BEGIN { exit !(l <= 2) }' || die "$1: $l% ping loss across the rekey"
  log "$1: rekeyed ($5 -> $now_hs), $l% loss"
done
# The peers agree: wireguard-go saw the new handshakes too.
hs_b=$(latest_handshake "$B" "$IB" "$(cat "$WORK/a.pub")")
[ "$hs_b" -ge $(( hs_a + 110 )) ] || die "wireguard-go (B) did not see wgturbo's rekey"
log "ok: rekey after REKEY_AFTER_TIME in both roles against wireguard-go"
