#!/usr/bin/env bash
# scale.sh [PEERS] [PREFIX_PEERS] [PREFIXES_EACH] [IDLE_SECONDS]: gateway-scale configuration, wgturbo against
# wireguard-go (bookworm) in the same run, each in a namespace of its own. A benchmark, not a
# test. Defaults: 100,000 peers with one /32 each; then 1,000 peers x 1,000 prefixes (1M).
# Prints, per implementation: `wg setconf` time, `wg show dump` time, RSS per peer, adding and
# removing one peer on the full device, the daemon's CPU while the full device idles for
# IDLE_SECONDS (default 60), one metrics scrape of the full device (wgturbo's
# /metrics; '-' for others), and, on a fresh daemon, the 1M-prefix setconf, dump and RSS per
# prefix. wireguard-go
# refuses more than 65,536 peers; its row then says so.
set -uo pipefail
cd "$(dirname "$0")/.."
PEERS=${1:-100000}
PREFIX_PEERS=${2:-1000}
PREFIXES_EACH=${3:-1000}
IDLE=${4:-60}
IMPLS=${IMPLS:-"wgturbo wireguard-go"}
bash netns-scripts/install-deps.sh >/dev/null
cargo build --release --quiet
source netns-scripts/lib.sh
trap cleanup EXIT

# conf FILE PEERS PREFIXES_EACH: a wg(8) config with random public keys and unique /32s.
conf() {
  python3 - "$1" "$2" "$3" "$(wg genkey)" <<'PY'
import base64, ipaddress, os, sys
path, peers, each, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
base = int(ipaddress.IPv4Address("11.0.0.0"))
with open(path, "w") as f:
    f.write(f"[Interface]\nPrivateKey = {key}\nListenPort = 0\n")
    n = 0
    for p in range(peers):
        nets = []
        for _ in range(each):
            nets.append(f"{ipaddress.IPv4Address(base + n)}/32")
            n += 1
        f.write(f"\n[Peer]\nPublicKey = {base64.b64encode(os.urandom(32)).decode()}\nAllowedIPs = {', '.join(nets)}\n")
PY
}

now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

conf "$WORK/peers.conf" "$PEERS" 1
conf "$WORK/prefixes.conf" "$PREFIX_PEERS" "$PREFIXES_EACH"
extra=$(wg genkey | wg pubkey)

METRICS=127.0.0.1:9586
# scrape NS: seconds for one GET /metrics (timed inside python, without its start-up) and the size.
scrape() {
  ip netns exec "$1" timeout 60 python3 -c '
import sys, time, urllib.request
t = time.time(); n = len(urllib.request.urlopen(sys.argv[1], timeout=50).read())
print("%.3f/%dMB" % (time.time() - t, n >> 20))' "http://$METRICS/metrics" 2>/dev/null || echo failed
}
printf '%-14s %10s %8s %8s %8s %10s %10s %12s %13s %10s %10s\n' implementation "setconf_s" "dump_s" "B/peer" "add_ms" "remove_ms" "idle_cpu_%" "scrape_s" "setconf_1M_s" "dump_1M_s" "B/prefix"
for impl in $IMPLS; do
  make_ns N "n$impl"
  iface="wgs${RUN_ID}${impl:0:1}"
  WGTURBO_METRICS=$METRICS start_impl "$impl" "$N" "$iface"
  pid=${PIDS[-1]}
  sleep 0.3
  rss0=$(rss_kib "$pid")
  t=$(now)
  if ip netns exec "$N" wg setconf "$iface" "$WORK/peers.conf" 2>"$WORK/err"; then
    setconf=$(since "$t")
    t=$(now); n=$(ip netns exec "$N" wg show "$iface" dump | wc -l); dump=$(since "$t")
    rss1=$(rss_kib "$pid")
    per_peer=$(( (rss1 - rss0) * 1024 / (n > 1 ? n - 1 : 1) ))
    t=$(now); ip netns exec "$N" wg set "$iface" peer "$extra" allowed-ips 10.255.0.1/32; add=$(since "$t")
    t=$(now); ip netns exec "$N" wg set "$iface" peer "$extra" remove; remove=$(since "$t")
    add_ms=$(python3 -c "print('%.1f' % (float('$add') * 1000))")
    remove_ms=$(python3 -c "print('%.1f' % (float('$remove') * 1000))")
    c0=$(ticks "$pid"); sleep "$IDLE"; c1=$(ticks "$pid")
    idle_cpu=$(python3 -c "print('%.2f' % (($c1 - $c0) / $(getconf CLK_TCK) / $IDLE * 100))")
    scrape_s=-
    [ "$impl" = wgturbo ] && scrape_s=$(scrape "$N")
  else
    setconf="refused"; dump="-"; per_peer="-"; add_ms="-"; remove_ms="-"; idle_cpu="-"; scrape_s="-"
    n=$(head -c 80 "$WORK/err" | tr '\n' ' ')
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  # The prefixes on a fresh daemon, so its RSS growth is theirs.
  start_impl "$impl" "$N" "$iface"
  pid=${PIDS[-1]}
  sleep 0.3
  rss0=$(rss_kib "$pid")
  t=$(now)
  if ip netns exec "$N" wg setconf "$iface" "$WORK/prefixes.conf" 2>/dev/null; then
    setconf_1m=$(since "$t")
    t=$(now); ip netns exec "$N" wg show "$iface" dump >/dev/null; dump_1m=$(since "$t")
    per_prefix=$(( ($(rss_kib "$pid") - rss0) * 1024 / (PREFIX_PEERS * PREFIXES_EACH) ))
  else
    setconf_1m="refused"; dump_1m="-"; per_prefix="-"
  fi
  printf '%-14s %10s %8s %8s %8s %10s %10s %12s %13s %10s %10s\n' "$impl" "$setconf" "$dump" "$per_peer" "$add_ms" "$remove_ms" "$idle_cpu" "$scrape_s" "$setconf_1m" "$dump_1m" "$per_prefix"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
done
echo "peers: $PEERS with one /32 each (idle for ${IDLE} s); then $PREFIX_PEERS peers x $PREFIXES_EACH /32s; machine: $(nproc) vCPU, $(uname -r); commit $(git rev-parse --short HEAD)"
