#!/usr/bin/env bash
# bench.sh [SECONDS] [ROUNDS]: iperf3 through a tunnel between two namespaces on this machine,
# for wgturbo (both I/O backends) and each peer implementation (the same one on both ends), all
# in one run. Scenarios: TCP one stream and four streams, UDP (-b 0 -l 1360) one and four
# streams. Reports Gbit/s received, UDP loss, TCP retransmits, the two daemons' CPU seconds per
# GB received, and each throughput's ratio to the offloading wireguard-go (trixie). Rounds
# alternate implementations so drift on a shared machine spreads evenly; medians are reported.
# Draws perf/bench-latest.svg. Bare veth is measured too, as the ceiling.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
bash netns-scripts/install-deps.sh >/dev/null
bash netns-scripts/fetch-peers.sh >/dev/null || { echo "cannot fetch the comparison peers" >&2; exit 1; }
cargo build --release --quiet
IMPLS=${IMPLS:-"veth wgturbo wgturbo-syscalls wgturbo-nooffload wireguard-go-trixie gotatun wireguard-go boringtun"}
SCENARIOS=${SCENARIOS:-"tcp1 tcp4 udp1 udp4"}
REF=wireguard-go-trixie
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# one_run IMPL SCENARIO -> "Gbit/s loss% retransmits cpu_s_per_GB"
one_run() {
  local impl=$1 scen=$2
  (
    source netns-scripts/lib.sh
    trap cleanup EXIT
    make_ns A a; make_ns B b
    link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
    case "$scen" in
      tcp1) args=() ;; tcp4) args=(-P 4) ;;
      udp1) args=(-u -b 0 -l 1360) ;; udp4) args=(-u -b 0 -l 1360 -P 4) ;;
    esac
    addr=192.0.2.2
    if [ "$impl" != veth ]; then
      genkey a; genkey b
      IA="wgt${RUN_ID}a" IB="wgt${RUN_ID}b"
      real=$impl
      case "$impl" in
        wgturbo-nooffload) export WGTURBO_NO_OFFLOAD=1; real=wgturbo ;;
        wgturbo-syscalls) export WGTURBO_IO=syscalls; real=wgturbo ;;
        wgturbo-uring) export WGTURBO_IO=uring; real=wgturbo ;;
        wgturbo-serial-crypto) export WGTURBO_PARALLEL_CRYPTO=0; real=wgturbo ;;
        wgturbo-pinned) export WGTURBO_PIN=1; real=wgturbo ;;
        wgturbo-always-parallel) export WGTURBO_PARALLEL_CRYPTO=always; real=wgturbo ;;
        # An A/B of two builds in one run: BASE=path/to/another/wgturbo.
        wgturbo-base) WGTURBO=${BASE:?wgturbo-base needs BASE=path of a wgturbo binary}; real=wgturbo ;;
      esac
      start_impl "$real" "$A" "$IA" && start_impl "$real" "$B" "$IB"
      configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 192.0.2.2:51821 >/dev/null
      configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 "" >/dev/null
      ping_ok "$A" 10.200.0.2 || { echo "0 0 0 0"; exit; }
      addr=10.200.0.2
    fi
    ticks() { local t=0 p; for p in "${PIDS[@]}"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$t"; }
    daemons=("${PIDS[@]}")
    before=$(PIDS=("${daemons[@]}"); ticks)
    ip netns exec "$B" timeout $((SECS + 20)) iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
    PIDS+=("$!"); sleep 0.5
    ip netns exec "$A" timeout $((SECS + 15)) iperf3 -c "$addr" -t "$SECS" -J "${args[@]}" > "$WORK/iperf.json" 2>/dev/null
    after=$(PIDS=("${daemons[@]}"); ticks)
    python3 - "$before" "$after" "$(getconf CLK_TCK)" "$WORK/iperf.json" <<'PY'
import json, sys
before, after, hz = (int(x) for x in sys.argv[1:4])
try:
    end = json.load(open(sys.argv[4]))["end"]
except Exception:
    print("0 0 0 0"); sys.exit()
rcv = end.get("sum_received") or end.get("sum") or {}
snt = end.get("sum_sent") or end.get("sum") or {}
gbps = rcv.get("bits_per_second", 0) / 1e9
gb = rcv.get("bytes", 0) / 1e9
# UDP: the receiver's loss is in "sum" (the sender's own summary counts nothing lost).
loss = (end.get("sum") or {}).get("lost_percent", 0) or 0
retr = snt.get("retransmits", 0) or 0
cpu = (after - before) / hz / gb if gb > 0 and after > before else 0
print("%.3f %.1f %d %.2f" % (gbps, loss, retr, cpu))
PY
  ) 2>/dev/null | tail -1
}

for round in $(seq 1 "$ROUNDS"); do
  for scen in $SCENARIOS; do
    for impl in $IMPLS; do
      r=$(one_run "$impl" "$scen"); r=${r:-"0 0 0 0"}
      echo "$r" >> "$OUT/$impl.$scen"
      printf 'round %d  %-5s %-22s %s\n' "$round" "$scen" "$impl" "$r" >&2
    done
  done
done

echo "machine: $(nproc) vCPU, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
echo "command: bash netns-scripts/bench.sh $SECS $ROUNDS   (iperf3 ${SECS}s per run, median of $ROUNDS; tcpN = N TCP streams, udpN = N UDP streams -b 0 -l 1360)"
python3 - "$OUT" "$REF" "$IMPLS" "$SCENARIOS" <<'PY'
import os, statistics, sys
out, ref, impls, scens = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
def med(impl, scen, col):
    try:
        rows = [l.split() for l in open(os.path.join(out, f"{impl}.{scen}"))]
        return statistics.median(float(r[col]) for r in rows)
    except (OSError, ValueError, IndexError):
        return 0.0
print(f"{'implementation':22} {'scenario':8} {'Gbit/s':>8} {'vs ' + ref:>26} {'loss%':>6} {'retr':>6} {'CPU s/GB':>9}")
bars = []
for scen in scens:
    r = med(ref, scen, 0)
    for impl in impls:
        g = med(impl, scen, 0)
        ratio = f"{g / r:.2f}x" if r > 0 else "n/a"
        print(f"{impl:22} {scen:8} {g:8.3f} {ratio:>26} {med(impl, scen, 1):6.1f} {med(impl, scen, 2):6.0f} {med(impl, scen, 3):9.2f}")
        bars.append((scen, impl, g))
# An SVG bar chart, one group per scenario.
w, h, left, top = 900, 60 + 22 * len(bars) + 20 * len(scens), 250, 40
top_g = max([b[2] for b in bars] + [0.001])
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
       f'<text x="10" y="20" font-size="15">iperf3 through each tunnel, Gbit/s received (median)</text>']
y, last = top, None
for scen, impl, g in bars:
    if scen != last:
        svg.append(f'<text x="10" y="{y + 12}" font-weight="bold">{scen}</text>'); y += 20; last = scen
    bw = (w - left - 80) * g / top_g
    color = "#d9534f" if impl.startswith("wgturbo") else ("#5bc0de" if impl == ref else "#999")
    svg.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{impl}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="16" fill="{color}"/>')
    svg.append(f'<text x="{left + bw + 5:.1f}" y="{y + 13}">{g:.2f}</text>')
    y += 22
svg.append("</svg>")
os.makedirs("perf", exist_ok=True)
open("perf/bench-latest.svg", "w").write("\n".join(svg) + "\n")
print("chart: perf/bench-latest.svg")
PY
