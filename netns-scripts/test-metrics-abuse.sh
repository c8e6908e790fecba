#!/usr/bin/env bash
# test-metrics-abuse.sh: the metrics endpoint under what any local user can do to it, with
# the daemon at systemd's default of 1,024 descriptors: 2,000 idle connections, an endless
# header line and a slowloris client at once, for 12 s. Meanwhile wg show answers within a
# second, the tunnel carries iperf3 from a real wireguard-go peer, the daemon's descriptors
# and memory stay bounded; once the abuse stops, a fresh scrape succeeds.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
METRICS=127.0.0.1:9586
setup_pair
export WGTURBO_METRICS=$METRICS
start_impl wgturbo "$A" "$IA"
unset WGTURBO_METRICS
DAEMON=${PIDS[-1]}
prlimit --pid "$DAEMON" --nofile=1024:1024 || die "prlimit"
start_impl wireguard-go "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 ""
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 192.0.2.1:51820
ping_ok "$B" 10.200.0.1 || die "no tunnel"

scrape() {
  ip netns exec "$A" timeout 10 python3 -c '
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "http://$METRICS/metrics" > "$WORK/page"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON/status"; }
fds() { ls "/proc/$DAEMON/fd" | wc -l; }
scrape || die "no scrape before the abuse"
rss0=$(rss_kib)
fds0=$(fds)

ip netns exec "$A" bash -c "ulimit -n 8192; exec timeout 40 python3 '$ROOT/netns-scripts/metrics-abuse.py' 127.0.0.1 9586 2000 12" \
  > "$WORK/abuse.json" 2>"$WORK/abuse.err" &
ABUSE=$!
PIDS+=("$ABUSE")
sleep 4
t0=$(date +%s%N)
ip netns exec "$A" timeout 5 wg show "$IA" >/dev/null || die "wg show failed during the abuse"
show_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$show_ms" -lt 1000 ] || die "wg show took ${show_ms} ms during the abuse"
gbps=$(iperf "$A" "$B" 10.200.0.1 3) || die "iperf3 through the tunnel failed during the abuse"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0.05 else 1)" "$gbps" || die "the tunnel carried only $gbps Gbit/s"
fds_mid=$(fds)
rss_mid=$(rss_kib)
wait "$ABUSE" || die "the abuse script failed: $(cat "$WORK/abuse.err")"
[ "$fds_mid" -lt $((fds0 + 64)) ] || die "descriptors grew from $fds0 to $fds_mid under the abuse"
[ "$rss_mid" -lt $((rss0 + 65536)) ] || die "RSS grew from $rss0 to $rss_mid KiB under the abuse"
python3 - "$WORK/abuse.json" <<'PY' || die "the abuse did not run as planned: $(cat "$WORK/abuse.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["idle_opened"] >= 1000, s
assert s["endless_cut"] >= 1 and s["slowloris_cut"] >= 1, s
PY
for _ in $(seq 1 20); do scrape && break; sleep 0.25; done
grep -q '^wgturbo_info' "$WORK/page" || die "no scrape after the abuse"
kill -0 "$DAEMON" || die "the daemon died"
log "ok: $(cat "$WORK/abuse.json"); wg show ${show_ms} ms, iperf3 $gbps Gbit/s, fds $fds0 -> $fds_mid, RSS $rss0 -> $rss_mid KiB; a fresh scrape after"
