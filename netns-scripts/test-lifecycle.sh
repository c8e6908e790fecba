#!/usr/bin/env bash
# test-lifecycle.sh: the daemon as a user runs it. Background start returns once ready;
# `ip link del`, removing the UAPI socket, SIGTERM and SIGINT each end it cleanly; start-up
# errors (socket in use, no root, no usable /dev/net/tun) give one error line and exit 1.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
make_ns A a

# pid_of IFACE: the daemon serving IFACE (by its unique command line, then tracked by PID).
pid_of() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" = "$WGTURBO --foreground $1 " ] && { echo "${p#/proc/}"; return; }
  done
}
gone_within() { # PID SECONDS
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}

# Background start: returns 0 once the interface and socket exist.
I1="wgt${RUN_ID}l1"
ip netns exec "$A" "$WGTURBO" "$I1" || die "background start failed"
[ -S "/var/run/wireguard/$I1.sock" ] || die "no UAPI socket after start returned"
ip -n "$A" link show "$I1" >/dev/null || die "no interface after start returned"
pid=$(pid_of "$I1"); [ -n "$pid" ] || die "daemon not found"
PIDS+=("$pid")
# The UAPI socket is the owner's only (bound under umask 077).
mode=$(stat -c %a "/var/run/wireguard/$I1.sock")
[ "$mode" = 600 ] || die "UAPI socket mode $mode"
# A second daemon for the same interface refuses with one line, and touches nothing of the
# running one: no queue attached, MTU not reset.
ip -n "$A" link set "$I1" mtu 1380
queues() { ip netns exec "$A" ls "/sys/class/net/$I1/queues" | grep -c '^tx-'; }
q_before=$(queues)
err=$(ip netns exec "$A" "$WGTURBO" "$I1" 2>&1) && die "second daemon on $I1 started"
[ "$(wc -l <<<"$err")" = 1 ] || die "expected one error line, got: $err"
grep -q "in use" <<<"$err" || die "unclear error: $err"
mtu=$(ip -n "$A" -o link show "$I1" | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
[ "$mtu" = 1380 ] || die "the second daemon reset the MTU to $mtu"
[ "$(queues)" = "$q_before" ] || die "the second daemon attached TUN queues ($q_before -> $(queues))"
ip -n "$A" link del "$I1"
gone_within "$pid" 3 || die "daemon survived ip link del"
[ -e "/var/run/wireguard/$I1.sock" ] && die "socket left behind after link del"

for how in TERM INT socket; do
  I="wgt${RUN_ID}${how:0:1}"
  ip netns exec "$A" "$WGTURBO" "$I" || die "start $I"
  pid=$(pid_of "$I"); PIDS+=("$pid")
  case $how in
    socket) rm -f "/var/run/wireguard/$I.sock" ;;
    *) kill -s "$how" "$pid" ;;
  esac
  gone_within "$pid" 3 || die "daemon survived $how"
  ip -n "$A" link show "$I" >/dev/null 2>&1 && die "interface left behind after $how"
  [ -e "/var/run/wireguard/$I.sock" ] && die "socket left behind after $how"
done

# No root: a clear message and exit 1.
err=$(ip netns exec "$A" setpriv --reuid=65534 --regid=65534 --clear-groups "$WGTURBO" "wgt${RUN_ID}n" 2>&1); rc=$?
[ "$rc" = 1 ] || die "non-root start exited $rc"
grep -qi "root" <<<"$err" || die "non-root error does not say why: $err"
# No usable /dev/net/tun.
err=$(ip netns exec "$A" unshare -m sh -c "mount --bind /dev/null /dev/net/tun && exec '$WGTURBO' -f wgt${RUN_ID}t" 2>&1); rc=$?
[ "$rc" = 1 ] || die "start without /dev/net/tun exited $rc"
grep -q "TUN" <<<"$err" || die "missing-TUN error unclear: $err"
[ "$(wc -l <<<"$err")" = 1 ] || die "expected one line, got: $err"
# A bad interface name.
err=$("$WGTURBO" -f "this-name-is-far-too-long" 2>&1) && die "accepted a 25-character name"
grep -q "invalid interface name" <<<"$err" || die "bad name error unclear: $err"
# Two daemons, one port: the second is refused with EADDRINUSE (as wireguard-go answers) and
# keeps its own port; the first keeps the port and every datagram on it.
IX="wgt${RUN_ID}x" IY="wgt${RUN_ID}y"
for I in "$IX" "$IY"; do
  ip netns exec "$A" "$WGTURBO" "$I" || die "start $I"
  PIDS+=("$(pid_of "$I")")
done
ip netns exec "$A" wg set "$IX" listen-port 51900 || die "first daemon cannot take port 51900"
y_port=$(ip netns exec "$A" wg show "$IY" listen-port)
err=$(ip netns exec "$A" wg set "$IY" listen-port 51900 2>&1) && die "a second daemon shared port 51900"
grep -qi "in use" <<<"$err" || die "unclear error for a port in use: $err"
[ "$(ip netns exec "$A" wg show "$IX" listen-port)" = 51900 ] || die "the first daemon lost its port"
[ "$(ip netns exec "$A" wg show "$IY" listen-port)" = "$y_port" ] || die "the second daemon lost its own port"
ip -n "$A" link del "$IX"; ip -n "$A" link del "$IY"
# Delete and recreate at once, 100 times, as wireguard-go's netns.sh does before its NAT
# section: the deleted interface ends its daemon within milliseconds (woken by the TUN, not a
# tick), and the new daemon waits for that one to go, so its socket and port are free.
IR="wgt${RUN_ID}r"
ip netns exec "$A" "$WGTURBO" "$IR" || die "start $IR"
ip netns exec "$A" wg set "$IR" listen-port 51901 || die "listen-port on $IR"
t0=$(date +%s%N)
for n in $(seq 1 100); do
  ip -n "$A" link del "$IR"
  err=$(ip netns exec "$A" "$WGTURBO" "$IR" 2>&1) || die "round $n: restart right after ip link del failed: $err"
  ip netns exec "$A" wg set "$IR" listen-port 51901 || die "round $n: the old daemon still held the port"
done
restart_ms=$(( ($(date +%s%N) - t0) / 100000000 ))
pid=$(pid_of "$IR"); PIDS+=("$pid")
ip -n "$A" link del "$IR"
gone_within "$pid" 2 || die "the last daemon survived ip link del"
log "ok: background start, link del, SIGTERM, SIGINT, socket removal, start-up errors, a port in use, 100 restarts right after a delete (${restart_ms} ms each)"
