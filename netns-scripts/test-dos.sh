#!/usr/bin/env bash
# test-dos.sh: a flood of initiations with valid mac1 puts wgturbo "under load": it answers
# with cookie replies instead of doing DH, and a real peer (wireguard-go), which must then
# prove its address with mac2, still gets its handshake through during the flood.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
setup_pair
start_impl wgturbo "$A" "$IA"
start_impl wireguard-go "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 ""
ip netns exec "$B" timeout 40 python3 "$ROOT/netns-scripts/flood.py" 192.0.2.1 51820 "$(cat "$WORK/a.pub")" 16 >"$WORK/flood" &
flood=$!; PIDS+=("$flood")
sleep 2
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 192.0.2.1:51820
start=$(date +%s)
ip netns exec "$B" ping -c 1 -W 1 -w 13 10.200.0.1 >/dev/null 2>&1 || die "peer could not handshake during the flood"
took=$(( $(date +%s) - start ))
# wg show stays responsive under the flood (it is answered by the control thread, which the
# flood never reaches).
t0=$(date +%s%N)
ip netns exec "$A" timeout 5 wg show "$IA" >/dev/null || die "wg show failed during the flood"
show_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$show_ms" -lt 1000 ] || die "wg show took ${show_ms} ms during the flood"
kill -0 "$flood" 2>/dev/null || die "the flood ended before the peer got through; the test proves nothing"
wait "$flood"
cat "$WORK/flood" >&2
cookies=$(grep -Eo 'cookies=[0-9]+' "$WORK/flood" | cut -d= -f2)
[ "${cookies:-0}" -gt 0 ] || die "no cookie replies under load"
kill -0 "${PIDS[0]}" || die "wgturbo died under the flood"
ping_ok "$B" 10.200.0.1 || die "tunnel after the flood"
log "ok: under load wgturbo sent $cookies cookie replies; wireguard-go got through with mac2 in ${took}s; wg show took ${show_ms} ms"
