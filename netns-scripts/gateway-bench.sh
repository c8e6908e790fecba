#!/usr/bin/env bash
# gateway-bench.sh: what one gateway forwards, measured at one end. Three namespaces: load
# (wgturbo-load playing N WireGuard peers), gateway (the implementation under test, configured
# with the real wg(8)) and server (wgturbo-load's plain-UDP sink and source). Every
# implementation runs under the same load in one run.
#
# Rows: upload (peers -> sink) and download (source -> peers) at each size, with 1, 1,000 and
# 10,000 active peers; for wgturbo alone 100,000 configured peers with 10,000 active; one mixed
# row (both directions at once). Per-core rows confine the gateway to core 0 (one worker,
# GOMAXPROCS=1) and the load, sink and source to core 1; whole-box rows (1 peer) let all float.
#
# Environment (all optional):
#   SECONDS=5 ROUNDS=1        traffic seconds per row, rounds (rows alternate implementations)
#   IMPLS="wgturbo wgturbo-uring wireguard-go"   wgturbo is the default backend, wgturbo-syscalls
#                             and wgturbo-uring force one, wgturbo-pinned and wgturbo-unpinned set
#                             WGTURBO_PIN; wireguard-go is trixie's offloading build
#                             (WIREGUARD_GO=path picks another, e.g. the system one);
#                             wgturbo-base runs BASE=path/to/another/wgturbo, for an A/B of two builds
#   SIZES="64 512 1420 imix"  PEERS="1 1000 10000"  DIRECTIONS="upload download"
#   BIG=1 MIXED=1 WHOLE_BOX=1 set 0 to leave those rows out
#   RATE=0                    packets/s per sender (0: flat out)
#   OUT=FILE                  also write each row (each round) as one JSON object a line
#   TAG=name                  names the perf/ files (default: the date)
#   PERF_DIR=perf             where the rounds and the chart go
#   CHECK=1                   exit 1 if any row carried nothing, failed, or got a forged datagram
#   SYSCALLS=1                count the gateway's syscalls per row (perf stat -e raw_syscalls:sys_enter
#                             on its process, from the first packet to the last): gateway_syscalls and
#                             syscalls_per_packet in the JSON rows, a column in the table
#   PROFILE=DIR               per-core rows also record the gateway's core (perf record -C 0 -g)
#                             into DIR/IMPL-DIRECTION-SIZE-PEERS.data (netns-scripts/profile.sh)
# Prints a table of medians with ratios to wireguard-go, keeps every round in
# perf/gateway-TAG.jsonl and draws perf/gateway-TAG.svg.
set -uo pipefail
ROW_SECS=$SECONDS # bash counts SECONDS up from the value it was given, or from 0
[ "$ROW_SECS" -gt 0 ] 2>/dev/null || ROW_SECS=5
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-1}
IMPLS=${IMPLS:-"wgturbo wgturbo-uring wireguard-go"}
SIZES=${SIZES:-"64 512 1420 imix"}
PEER_COUNTS=${PEERS:-"1 1000 10000"}
DIRECTIONS=${DIRECTIONS:-"upload download"}
BIG=${BIG:-1}
MIXED=${MIXED:-1}
WHOLE_BOX=${WHOLE_BOX:-1}
RATE=${RATE:-0}
PROFILE_DIR=${PROFILE:-}
TAG=${TAG:-$(date +%F)}
PERF_DIR=${PERF_DIR:-perf}
bash netns-scripts/install-deps.sh >/dev/null
if [ -z "${WIREGUARD_GO:-}" ] && [[ " $IMPLS " == *" wireguard-go "* ]]; then
  bash netns-scripts/fetch-peers.sh >/dev/null || { echo "cannot fetch trixie's wireguard-go" >&2; exit 1; }
  WIREGUARD_GO=$PWD/netns-scripts/.cache/wireguard-go-trixie/usr/bin/wireguard-go
fi
export WIREGUARD_GO
if [ "${SYSCALLS:-0}" = 1 ] && ! command -v perf >/dev/null; then
  echo "SYSCALLS=1: perf not found (apt install linux-perf); the rows carry no syscall counts" >&2
fi
# Tests hand in the binaries they built (WGTURBO, LOAD); otherwise build them.
[ -n "${LOAD:-}" ] || cargo build --release --quiet --bins || exit 1
LOAD=${LOAD:-$PWD/target/release/wgturbo-load}
ROWS=$(mktemp)
trap 'rm -f "$ROWS"' EXIT
mkdir -p "$PERF_DIR"
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)"

# rps NS DEV CPUMASK: the CPUs that process what DEV receives.
rps() {
  ip netns exec "$1" sh -c "echo $3 > /sys/class/net/$2/queues/rx-0/rps_cpus" || echo "no RPS on $2" >&2
}

# group IMPL CONFIGURED PERCORE "ROW..." ROUND: one gateway set up once, then its rows, each
# "direction:size:active". Prints one JSON line per row.
group() {
  local impl=$1 configured=$2 percore=$3 rows=$4 round=$5
  (
    source netns-scripts/lib.sh
    trap cleanup EXIT
    make_ns L l; make_ns G g; make_ns S s
    link_ns "$L" "$G" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
    link_ns "$G" "$S" 1 198.51.100.1 198.51.100.2 2001:db8:1::1 2001:db8:1::2
    ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    ip -n "$S" route add 10.128.0.0/9 via 198.51.100.1
    local iface="wgt${RUN_ID}g" pin_gw=() pin_load=() env=()
    if [ "$percore" = true ]; then
      pin_gw=(taskset -c 0); pin_load=(taskset -c 1)
      # Receive processing (RPS) where a real network would do it: what arrives at the gateway
      # (the upload's UDP receive, the download's forwarding into the TUN) on the gateway's
      # core, what arrives at the load or the server on theirs. Without it the kernel does that
      # work on the sender's core, and the load would pay for the gateway's stack.
      rps "$G" "vb${RUN_ID}0" 1; rps "$G" "va${RUN_ID}1" 1
      rps "$L" "va${RUN_ID}0" 2; rps "$S" "vb${RUN_ID}1" 2
    fi
    case "$impl" in
      wgturbo*)
        [ "$percore" = true ] && env+=(WGTURBO_WORKERS=1)
        local daemon=$WGTURBO
        case "$impl" in
          wgturbo-uring) env+=(WGTURBO_IO=uring) ;;
          wgturbo-syscalls) env+=(WGTURBO_IO=syscalls) ;;
          wgturbo-pinned) env+=(WGTURBO_PIN=1) ;;
          wgturbo-unpinned) env+=(WGTURBO_PIN=0) ;;
          # An A/B of two builds in one run: BASE=path/to/another/wgturbo.
          wgturbo-base) daemon=${BASE:?wgturbo-base needs BASE=path of a wgturbo binary} ;;
        esac
        ip netns exec "$G" env LOG_LEVEL=info "${env[@]}" "${pin_gw[@]}" "$daemon" -f "$iface" >"$WORK/gw.log" 2>&1 & ;;
      wireguard-go)
        [ "$percore" = true ] && env+=(GOMAXPROCS=1)
        ip netns exec "$G" env LOG_LEVEL=error "${env[@]}" "${pin_gw[@]}" "$WIREGUARD_GO" -f "$iface" >"$WORK/gw.log" 2>&1 & ;;
      *) die "unknown implementation $impl" ;;
    esac
    local gw=$!
    PIDS+=("$gw")
    for _ in $(seq 1 100); do [ -S "/var/run/wireguard/$iface.sock" ] && break; sleep 0.05; done
    [ -S "/var/run/wireguard/$iface.sock" ] || { cat "$WORK/gw.log" >&2; die "$impl did not start"; }
    wg genkey >"$WORK/gw.key"
    { printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n' "$(cat "$WORK/gw.key")"
      "$LOAD" config --peers "$configured"; } >"$WORK/gw.conf" 2>/dev/null || die "wgturbo-load config"
    ip netns exec "$G" wg setconf "$iface" "$WORK/gw.conf" || die "wg setconf ($configured peers) on $impl"
    ip -n "$G" addr add 10.128.0.1/9 dev "$iface"
    ip -n "$G" link set "$iface" up
    local gwpub; gwpub=$(wg pubkey <"$WORK/gw.key")
    ticks() { awk '{ print $14 + $15 }' "/proc/$gw/stat" 2>/dev/null || echo 0; }
    local hz; hz=$(getconf CLK_TCK)
    local row direction size active
    for row in $rows; do
      IFS=: read -r direction size active <<<"$row"
      rm -f "$WORK/ready" "$WORK/load.json" "$WORK/sink.json" "$WORK/source.json"
      local load_args=(peers --gateway 192.0.2.2:51820 --gateway-key "$gwpub" --peers "$active"
        --size "$size" --seconds "$ROW_SECS" --rate "$RATE" --ready-file "$WORK/ready")
      local sink_pid="" source_pid=""
      if [ "$direction" != download ]; then
        ip netns exec "$S" timeout $((ROW_SECS + 60)) "${pin_load[@]}" "$LOAD" sink --port 9000 \
          --seconds "$((ROW_SECS + 60))" >"$WORK/sink.json" 2>>"$WORK/load.err" &
        sink_pid=$!; PIDS+=("$sink_pid")
        load_args+=(--upload 198.51.100.2:9000)
      fi
      [ "$direction" != upload ] && load_args+=(--download)
      ip netns exec "$L" timeout $((ROW_SECS + 300)) "${pin_load[@]}" "$LOAD" "${load_args[@]}" \
        >"$WORK/load.json" 2>>"$WORK/load.err" &
      local load_pid=$!; PIDS+=("$load_pid")
      for _ in $(seq 1 2400); do [ -e "$WORK/ready" ] || ! kill -0 "$load_pid" 2>/dev/null && break; sleep 0.1; done
      local before; before=$(ticks)
      if [ "$direction" != upload ]; then
        ip netns exec "$S" timeout $((ROW_SECS + 30)) "${pin_load[@]}" "$LOAD" source --port 9000 --peers "$active" \
          --size "$size" --seconds "$ROW_SECS" --rate "$RATE" >"$WORK/source.json" 2>>"$WORK/load.err" &
        source_pid=$!; PIDS+=("$source_pid")
      fi
      local stat_pid=""
      rm -f "$WORK/syscalls.csv"
      if [ "${SYSCALLS:-0}" = 1 ]; then
        perf stat -e raw_syscalls:sys_enter -p "$gw" -x, -o "$WORK/syscalls.csv" >/dev/null 2>&1 &
        stat_pid=$!
      fi
      local perf_pid=""
      if [ -n "${PROFILE:-}" ] && [ "$percore" = true ]; then
        # The gateway's core only, in the middle of the traffic.
        (sleep 1; exec perf record -q -C 0 -g -F 999 -o "$PROFILE_DIR/$impl-$direction-$size-$active.data" \
          -- sleep $((ROW_SECS > 3 ? ROW_SECS - 2 : 1))) >/dev/null 2>&1 &
        perf_pid=$!
      fi
      wait "$load_pid"
      [ -n "$perf_pid" ] && wait "$perf_pid"
      [ -n "$source_pid" ] && wait "$source_pid"
      [ -n "$sink_pid" ] && wait "$sink_pid"
      if [ -n "$stat_pid" ]; then kill -INT "$stat_pid" 2>/dev/null; wait "$stat_pid"; fi
      local after; after=$(ticks)
      python3 - "$impl" "$direction" "$size" "$active" "$configured" "$percore" "$round" "$ROW_SECS" \
        "$(( after - before ))" "$hz" "$WORK" "$COMMIT" "$CPU_MODEL" <<'PY'
import json, os, sys
impl, direction, size, active, configured, percore, rnd, secs, ticks, hz, work, commit, cpu = sys.argv[1:]
def read(name):
    try:
        return json.loads(open(os.path.join(work, name)).read().strip().splitlines()[-1])
    except Exception:
        return {}
load, sink, source = read("load.json"), read("sink.json"), read("source.json")
up_pkts, down_pkts = sink.get("packets", 0), load.get("received", 0)
up_mpps, down_mpps = sink.get("mpps", 0.0), load.get("recv_mpps", 0.0)
up_gbits, down_gbits = sink.get("gbits", 0.0), load.get("recv_gbits", 0.0)
sent = (load.get("sent", 0) if direction != "download" else 0) + (source.get("sent", 0) if direction != "upload" else 0)
got = (up_pkts if direction != "download" else 0) + (down_pkts if direction != "upload" else 0)
mpps = (up_mpps if direction != "download" else 0) + (down_mpps if direction != "upload" else 0)
gbits = (up_gbits if direction != "download" else 0) + (down_gbits if direction != "upload" else 0)
gw_cpu = int(ticks) / int(hz)
row = {
    "impl": impl, "direction": direction, "size": int(size) if size.isdigit() else size, "peers_active": int(active),
    "peers_configured": int(configured), "per_core": percore == "true", "round": int(rnd),
    "mpps": round(mpps, 4), "gbits": round(gbits, 3),
    "loss": round(1 - got / sent, 4) if sent else 1.0,
    "gateway_cpu_s": round(gw_cpu, 2),
    "load_cpu_s": round(load.get("cpu_s", 0) + sink.get("cpu_s", 0) + source.get("cpu_s", 0), 2),
    "gateway_cpu_s_per_mpkt": round(gw_cpu / (got / 1e6), 3) if got else 0,
    "gateway_cpu_s_per_gb": round(gw_cpu / (gbits * float(secs) / 8), 2) if gbits else 0,
    "sent": sent, "received": got, "handshakes_per_s": round(load.get("handshakes_per_s", 0)),
    "verified": load.get("verified", 0), "failed": load.get("failed", 0),
    "reordered": sink.get("reordered", 0), "seconds": float(secs), "commit": commit, "cpu": cpu,
}
if direction == "both":
    row.update(up_mpps=round(up_mpps, 4), down_mpps=round(down_mpps, 4))
try:
    # perf stat -x, writes "count,unit,event,...": the first field of the event's line.
    lines = [l for l in open(os.path.join(work, "syscalls.csv")) if "raw_syscalls" in l]
    calls = int(lines[0].split(",")[0])
    row.update(gateway_syscalls=calls, syscalls_per_packet=round(calls / got, 3) if got else 0)
except (OSError, IndexError, ValueError):
    pass
if not load:
    row["error"] = "the load failed"
print(json.dumps(row))
PY
      if [ ! -s "$WORK/load.json" ]; then tail -3 "$WORK/load.err" >&2; fi
    done
  )
}

# The plan: per-core rows at every peer count, whole-box rows at 1 peer, the big table and
# the mixed row; groups alternate implementations within a round.
plan() {
  local conf active rows d s
  for active in $PEER_COUNTS; do
    rows=""; for d in $DIRECTIONS; do for s in $SIZES; do rows+="$d:$s:$active "; done; done
    echo "all $active true $rows"
  done
  if [ "$MIXED" = 1 ]; then echo "all 1000 true both:imix:1000"; fi
  if [ "$BIG" = 1 ]; then
    rows=""; for d in $DIRECTIONS; do rows+="$d:64:10000 $d:imix:10000 "; done
    echo "wgturbo-only 100000 true $rows"
  fi
  if [ "$WHOLE_BOX" = 1 ]; then
    rows=""; for d in $DIRECTIONS; do for s in $SIZES; do rows+="$d:$s:1 "; done; done
    echo "all 1 false $rows"
  fi
}

start=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  while read -r who configured percore rows; do
    for impl in $IMPLS; do
      [ "$who" = wgturbo-only ] && [[ "$impl" != wgturbo* ]] && continue
      log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
      log "round $round: $impl, $configured peers configured, per core $percore"
      group "$impl" "$configured" "$percore" "$rows" "$round" | tee -a "$ROWS" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("  %-14s %-8s %-5s %6d peers  %7.3f Mpps %7.3f Gbit/s  loss %5.1f%%  gw %5.2f s CPU  load %5.2f s%s" % (
        r["impl"], r["direction"], r["size"], r["peers_active"], r["mpps"], r["gbits"], 100 * r["loss"],
        r["gateway_cpu_s"], r["load_cpu_s"], "  " + r["error"] if "error" in r else ""), file=sys.stderr)'
    done
  done < <(plan)
done

cp "$ROWS" "$PERF_DIR/gateway-$TAG.jsonl"
[ -n "${OUT:-}" ] && cp "$ROWS" "$OUT"
echo "machine: $(nproc) vCPU, $(uname -r), $CPU_MODEL"
echo "commit: $COMMIT"
echo "command: SECONDS=$ROW_SECS ROUNDS=$ROUNDS IMPLS=\"$IMPLS\" bash netns-scripts/gateway-bench.sh   ($(( $(date +%s) - start )) s)"
python3 - "$ROWS" "$PERF_DIR/gateway-$TAG.svg" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = defaultdict(list)
for r in rows:
    groups[(r["per_core"], r["direction"], r["size"], r["peers_active"], r["peers_configured"], r["impl"])].append(r)
med = {k: {f: statistics.median(x[f] for x in v) for f in ("mpps", "gbits", "loss", "gateway_cpu_s", "load_cpu_s", "gateway_cpu_s_per_mpkt")} for k, v in groups.items()}
calls = {k: statistics.median(x["syscalls_per_packet"] for x in v) for k, v in groups.items() if all("syscalls_per_packet" in x for x in v)}
print(f"{'scope':9} {'dir':9} {'size':5} {'peers':>13} {'impl':15} {'Mpps':>7} {'Gbit/s':>7} {'vs wg-go':>8} {'loss':>6} {'gw CPU s':>8} {'s/Mpkt':>7} {'load s':>7}" + (f" {'sys/pkt':>7}" if calls else ""))
for k in sorted(med, key=lambda k: (not k[0], k[1], str(k[2]), k[3], k[4], k[5])):
    per_core, d, size, active, conf, impl = k
    m = med[k]
    ref = med.get((per_core, d, size, active, conf, "wireguard-go"))
    # Mpps for small and mixed packets, Gbit/s for full ones (the bars' measures).
    measure = "gbits" if str(size) == "1420" else "mpps"
    ratio = f"{m[measure] / ref[measure]:.2f}x" if ref and ref[measure] > 0 else "-"
    peers = f"{active}/{conf}" if conf != active else str(active)
    print(f"{'per core' if per_core else 'whole box':9} {d:9} {size:5} {peers:>13} {impl:15} {m['mpps']:7.3f} {m['gbits']:7.3f} {ratio:>8} {100 * m['loss']:5.1f}% {m['gateway_cpu_s']:8.2f} {m['gateway_cpu_s_per_mpkt']:7.2f} {m['load_cpu_s']:7.2f}" + (f" {calls[k]:7.3f}" if k in calls else ""))
# The chart: per-core Mpps at 1 peer, by direction and size, a bar per implementation.
keys = sorted({(k[1], str(k[2])) for k in med if k[0] and k[3] == 1 and k[4] == 1})
impls = sorted({k[5] for k in med})
colors = {"wireguard-go": "#5bc0de", "wgturbo": "#d9534f", "wgturbo-uring": "#f0ad4e", "wgturbo-syscalls": "#8b0000",
          "wgturbo-pinned": "#5cb85c", "wgturbo-unpinned": "#337ab7"}
top = max([m["mpps"] for m in med.values()] + [0.001])
w, left, bar = 900, 170, 16
h = 60 + len(keys) * (len(impls) * (bar + 4) + 32)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
       '<text x="10" y="20" font-size="15">Gateway on one core, 1 peer: inner packets forwarded, Mpps (median)</text>']
y = 40
for d, size in keys:
    svg.append(f'<text x="10" y="{y + 12}" font-weight="bold">{d} {size}</text>')
    y += 18
    for impl in impls:
        m = med.get((True, d, int(size) if size.isdigit() else size, 1, 1, impl))
        if not m:
            continue
        bw = (w - left - 90) * m["mpps"] / top
        svg.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{impl}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar}" fill="{colors.get(impl, "#999")}"/>')
        svg.append(f'<text x="{left + bw + 4:.1f}" y="{y + 12}">{m["mpps"]:.3f}</text>')
        y += bar + 4
    y += 14
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg) + "\n")
print("chart:", sys.argv[2])
PY
if [ "${CHECK:-0}" = 1 ]; then
  python3 - "$ROWS" <<'PY' || exit 1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if "error" in r or r["mpps"] <= 0 or r["received"] <= 0 or r["failed"] > 0
       or (r["direction"] != "upload" and r["verified"] <= 0)]
for r in bad:
    print("CHECK failed:", json.dumps(r), file=sys.stderr)
if not rows:
    print("CHECK failed: no rows", file=sys.stderr)
sys.exit(1 if bad or not rows else 0)
PY
  echo "check: every row carried traffic, downloads verified authentic"
fi
