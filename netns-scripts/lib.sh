#!/usr/bin/env bash
# Shared helpers for the network-namespace tests, the demo and the benchmark.
# Everything a run creates carries RUN_ID in its name and is removed by `cleanup`
# (namespaces by name, processes by PID), also when the caller fails.

set -uo pipefail
# Never pipe into `grep -q` here: with pipefail an early exit of grep fails the writer (SIGPIPE).
umask 077

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Five digits keep every interface name (wgtRUNIDx, vaRUNIDn) within 15 characters.
new_run_id() {
  local id
  while :; do
    id=$(( (RANDOM * 32768 + RANDOM + $$) % 100000 ))
    ls /run/netns/wgt"$id"* >/dev/null 2>&1 || { echo "$id"; return; }
  done
}
RUN_ID=${RUN_ID:-$(new_run_id)}
WGTURBO=${WGTURBO:-$ROOT/target/release/wgturbo}
BORINGTUN=${BORINGTUN:-$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")}
WIREGUARD_GO=${WIREGUARD_GO:-$(command -v wireguard-go || true)}
WIREGUARD_GO_TRIXIE=${WIREGUARD_GO_TRIXIE:-$ROOT/netns-scripts/.cache/wireguard-go-trixie/usr/bin/wireguard-go}
GOTATUN=${GOTATUN:-$(command -v gotatun || echo "$HOME/.cargo/bin/gotatun")}
WORK=$(mktemp -d "/tmp/wgturbo-$RUN_ID.XXXX")
declare -a PIDS=()
declare -a NAMESPACES=()

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

cleanup() {
  local pid ns
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  for ns in "${NAMESPACES[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}

# make_ns VAR SUFFIX: creates namespace wgt<RUN_ID><SUFFIX> (loopback up) and stores its name
# in VAR. Not a command substitution: the name must reach NAMESPACES in this shell so that
# cleanup removes it.
make_ns() {
  local ns="wgt${RUN_ID}$2"
  NAMESPACES+=("$ns")
  ip netns add "$ns" || die "ip netns add $ns"
  ip -n "$ns" link set lo up
  printf -v "$1" '%s' "$ns"
}

# link NS_A NS_B SUFFIX V4_A V4_B V6_A V6_B: a veth pair with outer addresses.
link_ns() {
  local a=$1 b=$2 s=$3
  ip link add "va$RUN_ID$s" netns "$a" type veth peer name "vb$RUN_ID$s" netns "$b" || die "veth"
  ip -n "$a" addr add "$4/24" dev "va$RUN_ID$s"
  ip -n "$b" addr add "$5/24" dev "vb$RUN_ID$s"
  ip -n "$a" addr add "$6/64" dev "va$RUN_ID$s" nodad
  ip -n "$b" addr add "$7/64" dev "vb$RUN_ID$s" nodad
  ip -n "$a" link set "va$RUN_ID$s" up
  ip -n "$b" link set "vb$RUN_ID$s" up
}

# start_impl IMPL NS IFACE: start a userspace WireGuard in the foreground, record its PID,
# wait for its UAPI socket.
start_impl() {
  local impl=$1 ns=$2 iface=$3 logf="$WORK/$3.log"
  case "$impl" in
    wgturbo) ip netns exec "$ns" env LOG_LEVEL=${LOG_LEVEL:-info} "$WGTURBO" -f "$iface" >"$logf" 2>&1 & ;;
    wireguard-go) ip netns exec "$ns" env LOG_LEVEL=${LOG_LEVEL:-error} "$WIREGUARD_GO" -f "$iface" >"$logf" 2>&1 & ;;
    boringtun) ip netns exec "$ns" "$BORINGTUN" -f --disable-drop-privileges "$iface" >"$logf" 2>&1 & ;;
    wireguard-go-trixie) ip netns exec "$ns" env LOG_LEVEL=error "$WIREGUARD_GO_TRIXIE" -f "$iface" >"$logf" 2>&1 & ;;
    gotatun) ip netns exec "$ns" "$GOTATUN" -f --disable-drop-privileges -l "$logf" "$iface" >"$logf.out" 2>&1 & ;;
    *) die "unknown implementation $impl" ;;
  esac
  PIDS+=("$!")
  for _ in $(seq 1 100); do
    [ -S "/var/run/wireguard/$iface.sock" ] && return 0
    sleep 0.05
  done
  cat "$logf" >&2
  die "$impl did not open /var/run/wireguard/$iface.sock"
}

# configure NS IFACE KEYFILE PORT INNER4 INNER6 PEER_PUB PEER_ALLOWED ENDPOINT [extra wg args]
configure() {
  local ns=$1 iface=$2 key=$3 port=$4 in4=$5 in6=$6 ppub=$7 pallowed=$8 ep=$9
  shift 9
  ip netns exec "$ns" wg set "$iface" private-key "$key" listen-port "$port" \
    peer "$ppub" allowed-ips "$pallowed" ${ep:+endpoint "$ep"} "$@" || die "wg set on $iface"
  ip -n "$ns" addr add "$in4" dev "$iface"
  ip -n "$ns" addr add "$in6" dev "$iface" nodad
  ip -n "$ns" link set "$iface" up || die "link up $iface"
}

# setup_pair: namespaces A and B joined by a veth (192.0.2.1/2, 2001:db8::1/2), keys a and b,
# and interface names IA and IB for the two ends.
setup_pair() {
  make_ns A a
  make_ns B b
  link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
  genkey a
  genkey b
  IA="wgt${RUN_ID}a"
  IB="wgt${RUN_ID}b"
}

genkey() { wg genkey > "$WORK/$1.key"; wg pubkey < "$WORK/$1.key" > "$WORK/$1.pub"; }

# ping_ok NS ADDR: a few pings must get through within a bounded time.
ping_ok() {
  # shellcheck disable=SC2086 # $2 may carry ping options such as -I SRC.
  ip netns exec "$1" ping -c 3 -i 0.2 -W 2 -w 10 $2 >/dev/null 2>&1
}

# latest_handshake NS IFACE PEER_PUB: seconds since the epoch, 0 if none.
latest_handshake() {
  ip netns exec "$1" wg show "$2" latest-handshakes | awk -v p="$3" '$1 == p { print $2 }'
}

# iperf NS_SERVER NS_CLIENT ADDR SECONDS [extra args]: prints Gbit/s of the receiver.
iperf() {
  local srv=$1 cli=$2 addr=$3 secs=$4
  shift 4
  ip netns exec "$srv" timeout $((secs + 20)) iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
  local spid=$!
  PIDS+=("$spid")
  sleep 0.5
  local out
  out=$(ip netns exec "$cli" timeout $((secs + 15)) iperf3 -c "$addr" -t "$secs" -J "$@" 2>/dev/null) || { wait "$spid" 2>/dev/null; echo 0; return 1; }
  wait "$spid" 2>/dev/null
  python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]; s=d.get("sum_received") or d.get("sum"); print("%.3f" % (s["bits_per_second"]/1e9))' <<<"$out"
}

# iperf_start NS_SERVER NS_CLIENT ADDR SECONDS: a bounded TCP transfer to ADDR in the
# background, the client's JSON in $WORK/iperf.json; wait on $IPERF_CLIENT for its result.
iperf_start() {
  ip netns exec "$1" timeout $(($4 + 30)) iperf3 -s -1 -B "$3" >/dev/null 2>&1 &
  PIDS+=("$!")
  sleep 0.5
  ip netns exec "$2" timeout $(($4 + 25)) iperf3 -c "$3" -t "$4" -J >"$WORK/iperf.json" 2>&1 &
  IPERF_CLIENT=$!
  PIDS+=("$IPERF_CLIENT")
}

# metric_sum NS ADDR PREFIX: the sum of the samples whose series starts with PREFIX on the
# metrics page http://ADDR/metrics (WGTURBO_METRICS), fetched from namespace NS.
metric_sum() {
  ip netns exec "$1" timeout 10 python3 -c '
import sys, urllib.request
page = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print(sum(int(float(l.split()[-1])) for l in page.splitlines() if l.startswith(sys.argv[2])))' \
    "http://$2/metrics" "$3"
}

require_root() {
  if [ "$(id -u)" != 0 ]; then
    if [ "${CI:-}" = true ]; then die "netns tests need root"; fi
    echo "SKIP: netns tests need root" >&2
    exit 77
  fi
}
