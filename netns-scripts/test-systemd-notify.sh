#!/usr/bin/env bash
# test-systemd-notify.sh: the daemon speaks systemd's notify protocol to a stand-in notify
# socket: READY=1 with STATUS= (the start-up line) once up, WATCHDOG=1 twice per WATCHDOG_USEC
# while its workers go round, STOPPING=1 when its interface is deleted.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
make_ns A a
I="wgt${RUN_ID}n"
SOCK="$WORK/notify.sock"
python3 "$ROOT/netns-scripts/notify-listen.py" "$SOCK" 8 > "$WORK/notes" &
LISTENER=$!
PIDS+=("$LISTENER")
for _ in $(seq 1 50); do [ -S "$SOCK" ] && break; sleep 0.05; done
ip netns exec "$A" env NOTIFY_SOCKET="$SOCK" WATCHDOG_USEC=400000 "$WGTURBO" -f "$I" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
PIDS+=("$DAEMON")
for _ in $(seq 1 100); do [ -S "/var/run/wireguard/$I.sock" ] && break; sleep 0.05; done
sleep 2
ip -n "$A" link del "$I"
for _ in $(seq 1 30); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
kill -0 "$DAEMON" 2>/dev/null && die "the daemon did not stop"
sleep 0.3
kill "$LISTENER" 2>/dev/null
notes=$(cat "$WORK/notes")
head -1 <<<"$notes" | grep -q "READY=1" || die "the first message is not READY=1: $notes"
head -1 <<<"$notes" | grep -q "STATUS=interface $I up: .* worker(s)" || die "no STATUS with the start-up line: $notes"
pings=$(grep -c "WATCHDOG=1" <<<"$notes")
[ "$pings" -ge 6 ] && [ "$pings" -le 16 ] || die "$pings watchdog pings in about 2 s (every 200 ms expected): $notes"
tail -1 <<<"$notes" | grep -q "STOPPING=1" || die "the last message is not STOPPING=1: $notes"
# Without NOTIFY_SOCKET nothing is sent and nothing breaks (every other test runs that way).
log "ok: READY=1 with the start-up line, $pings watchdog pings in 2 s, STOPPING=1 on ip link del"
