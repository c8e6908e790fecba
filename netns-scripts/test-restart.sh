#!/usr/bin/env bash
# test-restart.sh: two abuse and failure cases against a wireguard-go peer.
# 1. The peer restarts mid-transfer (new process: all its sessions and indices are gone)
#    while a bounded TCP transfer from wgturbo runs: the transfer completes and the tunnel is
#    back after one new handshake (within the 15 s the protocol's timers take), not stuck on
#    the old keys.
# 2. An authenticated peer sends many small flows (each datagram a new 5-tuple, so the GRO
#    coalescer sees thousands of flows): wgturbo's RSS stays bounded, and the tunnel works.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
METRICS=127.0.0.1:9587
setup_pair
export WGTURBO_METRICS=$METRICS
start_impl wgturbo "$A" "$IA"
unset WGTURBO_METRICS
wgturbo_pid=${PIDS[-1]}
start_impl wireguard-go "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32,fd00:200::2/128 ""
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128 192.0.2.1:51820
ping_ok "$B" 10.200.0.1 || die "no tunnel"

completed() { metric_sum "$A" "$METRICS" wgturbo_handshakes_completed_total; }

# 1. Restart mid-transfer.
iperf_start "$B" "$A" 10.200.0.2 10
client=$IPERF_CLIENT
sleep 2
before=$(completed)
old=${PIDS[1]}
kill "$old"; wait "$old" 2>/dev/null
start_impl wireguard-go "$B" "$IB"
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128 192.0.2.1:51820
t0=$(date +%s%N)
resumed=""
for _ in $(seq 1 100); do
  if ip netns exec "$A" ping -c 1 -W 1 10.200.0.2 >/dev/null 2>&1; then resumed=yes; break; fi
done
[ -n "$resumed" ] || die "the tunnel did not come back after the peer restarted"
took=$(( ($(date +%s%N) - t0) / 1000000 ))
# The restarted peer drops our old-session packets unauthenticated and has nothing to send, so
# wgturbo's timers start the handshake: KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s) after its
# first unanswered packet, as the kernel's. Later than that is a stuck state.
[ "$took" -lt 25000 ] || die "the tunnel took $took ms to come back after the peer restarted"
wait "$client" || die "the transfer did not survive the peer's restart: $(head -c 300 "$WORK/iperf.json")"
new=$(( $(completed) - before ))
[ "$new" -ge 1 ] && [ "$new" -le 2 ] || die "$new handshakes completed across the restart (expected one, at most a retry)"
log "restart: tunnel back $took ms after the peer's restart, $new new handshake(s), the transfer completed"

# 2. Many small flows through the authenticated peer.
rss() { awk '/VmRSS/ { print $2 }' "/proc/$wgturbo_pid/status"; }
rss0=$(rss)
ip netns exec "$B" timeout 20 python3 - <<'PY'
import socket, time
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
for s in socks:
    s.bind(("10.200.0.2", 0))
    s.setblocking(False)
payload = bytes(200)
deadline = time.monotonic() + 6
port = 1024
sent = 0
while time.monotonic() < deadline:
    for s in socks:
        try:
            s.sendto(payload, ("10.200.0.1", port))
            sent += 1
        except BlockingIOError:
            pass
        port = port + 1 if port < 65000 else 1024
print(sent)
PY
rss1=$(rss)
grown=$(( (rss1 - rss0) / 1024 ))
[ "$grown" -lt 64 ] || die "wgturbo's RSS grew by $grown MiB under many small flows ($rss0 -> $rss1 KiB)"
kill -0 "$wgturbo_pid" || die "wgturbo died"
ping_ok "$B" 10.200.0.1 || die "the tunnel after many small flows"
log "ok: restart mid-transfer recovered with $new handshake(s) in $took ms; many small flows grew RSS by $grown MiB ($rss0 -> $rss1 KiB)"
