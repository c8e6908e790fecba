#!/usr/bin/env bash
# test-metrics.sh: Prometheus metrics of a wgturbo gateway (namespace A, WGTURBO_METRICS on its
# loopback) while a real wireguard-go peer (B) pushes iperf3 through it. The counters grow with
# the traffic; the drop reasons count exactly what the test sent: packets with spoofed inner
# sources (authenticated, then dropped) and garbage datagrams (each counted once, as a drop or
# a refused handshake message). No private or preshared key is ever on the page.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
PEER=${1:-wireguard-go}
METRICS=127.0.0.1:9586
setup_pair
ip netns exec "$A" wg genpsk > "$WORK/psk"
export WGTURBO_METRICS=$METRICS
start_impl wgturbo "$A" "$IA"
unset WGTURBO_METRICS
start_impl "$PEER" "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32,fd00:200::2/128 "" preshared-key "$WORK/psk"
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 0.0.0.0/0,::/0 192.0.2.1:51820 preshared-key "$WORK/psk"
grep -q "metrics at http://$METRICS/metrics" "$WORK/$IA.log" || die "the start-up line does not name the metrics address: $(cat "$WORK/$IA.log")"
ping_ok "$B" 10.200.0.1 || die "no tunnel"

scrape() {
  ip netns exec "$A" timeout 10 python3 -c '
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "http://$METRICS/metrics" > "$WORK/page" \
    || die "scrape failed"
}
# value SERIES: the sample of SERIES (name and labels exactly as printed) on the last page.
value() {
  awk -v s="$1" 'index($0, s " ") == 1 { print $2; found = 1 } END { if (!found) print "missing" }' "$WORK/page"
}
num() { local v; v=$(value "$1"); [ "$v" != missing ] || die "no sample $1 on the page"; printf '%.0f' "$v"; }
# inbound: datagrams all workers received (which worker gets a flow is the kernel's choice).
inbound() { awk -v d="$IA" 'index($0, "wgturbo_worker_packets_total{device=\"" d "\",direction=\"inbound\"") == 1 { n += $2 } END { printf "%.0f", n }' "$WORK/page"; }

B_PUB=$(cat "$WORK/b.pub")
PEER_LABELS="{device=\"$IA\",public_key=\"$B_PUB\"}"
scrape
rx0=$(num "wireguard_peer_receive_bytes_total$PEER_LABELS")
in0=$(inbound)
[ "$(num "wgturbo_handshakes_completed_total{device=\"$IA\",role=\"responder\"}")" -ge 1 ] || die "no completed handshake counted"
[ "$(num "wireguard_device_info{device=\"$IA\",public_key=\"$(cat "$WORK/a.pub")\"}")" = 1 ] || die "wireguard_device_info"
grep -q "^wireguard_peer_info{allowed_ips=\"10.200.0.2/32,fd00:200::2/128\",device=\"$IA\",endpoint=\"192.0.2.2:51821\",public_key=\"$B_PUB\"} 1" "$WORK/page" \
  || die "wireguard_peer_info: $(grep wireguard_peer_info "$WORK/page")"
# The default backend is io_uring (this kernel takes it; the fallback has a test of its own).
grep -q "^wgturbo_info{backend=\"io_uring\",device=\"$IA\"" "$WORK/page" || die "wgturbo_info: $(grep wgturbo_info "$WORK/page")"

# Scrapes during a bounded iperf3 run: the peer's bytes grow while traffic flows.
iperf "$A" "$B" 10.200.0.1 4 > "$WORK/gbps" &
IPERF=$!
sleep 2.5
t0=$(date +%s.%N); scrape; t1=$(date +%s.%N)
rx1=$(num "wireguard_peer_receive_bytes_total$PEER_LABELS")
wait "$IPERF" || die "iperf3 through the tunnel failed"
scrape
rx2=$(num "wireguard_peer_receive_bytes_total$PEER_LABELS")
in2=$(inbound)
[ "$rx1" -gt $((rx0 + 10000000)) ] || die "receive bytes did not grow during traffic ($rx0 -> $rx1)"
[ "$rx2" -gt "$rx1" ] || die "receive bytes did not grow ($rx1 -> $rx2)"
[ "$in2" -gt "$in0" ] || die "worker packets did not grow ($in0 -> $in2)"
# io_uring's buffer rings running dry are counted per worker and direction; with rings of two
# buffers (WGTURBO_URING_BUFFERS=2, tests/netns.rs) the traffic above must have run them dry.
dry=$(awk -v d="$IA" 'index($0, "wgturbo_worker_reads_ran_dry_total{device=\"" d "\"") == 1 { n += $2; k++ } END { printf "%.0f %d", n, k }' "$WORK/page")
[ "${dry#* }" -ge 2 ] || die "no wgturbo_worker_reads_ran_dry_total samples: $(grep ran_dry "$WORK/page")"
if [ "${WGTURBO_URING_BUFFERS:-}" = 2 ]; then
  [ "${dry% *}" -gt 0 ] || die "rings of two buffers never ran dry under iperf3: $(grep ran_dry "$WORK/page")"
fi
wg_rx=$(ip netns exec "$A" wg show "$IA" transfer | awk '{ print $2 }')
[ "$wg_rx" -ge "$rx2" ] || die "wg show says $wg_rx received, the metrics $rx2"

# Spoofed inner sources: each is authenticated, then dropped as not allowed from B.
drop() { num "wgturbo_packets_dropped_total{device=\"$IA\",reason=\"$1\"}"; }
spoofed0=$(drop source_not_allowed)
ip -n "$B" addr add 10.200.0.99/24 dev "$IB"
ip netns exec "$B" ping -c 5 -i 0.2 -W 1 -I 10.200.0.99 10.200.0.1 >/dev/null 2>&1 && die "a spoofed source got an answer"
scrape
spoofed=$(( $(drop source_not_allowed) - spoofed0 ))
[ "$spoofed" = 5 ] || die "5 spoofed packets sent, $spoofed counted as source_not_allowed"

# Garbage: each datagram is counted once, as a dropped packet or a refused handshake message.
counted() {
  local n=0 r
  for r in malformed unknown_index decrypt_failed handshake_queue_full; do n=$((n + $(drop $r))); done
  for r in invalid_mac1 invalid; do
    n=$((n + $(num "wgturbo_handshake_messages_rejected_total{device=\"$IA\",reason=\"$r\"}")))
  done
  echo "$n"
}
garbage0=$(counted)
ip netns exec "$B" python3 "$ROOT/netns-scripts/garbage.py" 192.0.2.1 51820 400
for _ in $(seq 1 50); do
  scrape
  [ $(( $(counted) - garbage0 )) -ge 400 ] && break
  sleep 0.1
done
garbage=$(( $(counted) - garbage0 ))
[ "$garbage" = 400 ] || die "400 garbage datagrams sent, $garbage counted"
ping_ok "$B" 10.200.0.1 || die "the tunnel did not survive the garbage"

# Nothing secret on the page, in either encoding.
for f in a.key psk; do
  key=$(cat "$WORK/$f")
  hex=$(python3 -c 'import base64,sys; print(base64.b64decode(sys.argv[1]).hex())' "$key")
  grep -qF -e "$key" -e "$hex" "$WORK/page" && die "$f is on the metrics page"
done
grep -v '^#' "$WORK/page" | grep -Ev '^(wireguard|wgturbo)_' && die "a sample outside wireguard_/wgturbo_"
log "ok: metrics scraped in $(python3 -c "print(round(($t1 - $t0) * 1000))") ms during $(cat "$WORK/gbps") Gbit/s; rx $rx0 -> $rx2 bytes; 5 spoofed and 400 garbage datagrams counted exactly"
