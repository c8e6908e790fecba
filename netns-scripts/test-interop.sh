#!/usr/bin/env bash
# test-interop.sh IMPL_A IMPL_B OUTER: A initiates to B over outer IPv4 (4) or IPv6 (6).
# Checks ping both ways on inner IPv4 and IPv6, a bounded iperf3 TCP and UDP run, and that
# wg(8) shows a handshake on each side that reports it truthfully.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
IMPL_A=$1 IMPL_B=$2 OUTER=${3:-4}
setup_pair
start_impl "$IMPL_A" "$A" "$IA"
start_impl "$IMPL_B" "$B" "$IB"
if [ "$OUTER" = 6 ]; then EP="[2001:db8::2]:51821"; else EP="192.0.2.2:51821"; fi
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32,fd00:200::2/128 "$EP"
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32,fd00:200::1/128 ""

ping_ok "$A" 10.200.0.2 || die "$IMPL_A -> $IMPL_B ping IPv4"
ping_ok "$B" 10.200.0.1 || die "$IMPL_B -> $IMPL_A ping IPv4"
ping_ok "$A" fd00:200::2 || die "$IMPL_A -> $IMPL_B ping IPv6"
ping_ok "$B" fd00:200::1 || die "$IMPL_B -> $IMPL_A ping IPv6"

tcp=$(iperf "$B" "$A" 10.200.0.2 2) || die "iperf3 TCP over the tunnel"
udp=$(iperf "$A" "$B" fd00:200::1 2 -u -b 200M) || die "iperf3 UDP over the tunnel"
above() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$1" "$2" 2>/dev/null; }
above "$tcp" 0.01 || die "TCP throughput '$tcp' Gbit/s"
above "$udp" 0.01 || die "UDP throughput '$udp' Gbit/s"

now=$(date +%s)
for side in "A $A $IA $IMPL_A b" "B $B $IB $IMPL_B a"; do
  set -- $side
  # boringtun 0.7.1 reports an age instead of a time; judge it by traffic only.
  [ "$4" = boringtun ] && continue
  hs=$(latest_handshake "$2" "$3" "$(cat "$WORK/$5.pub")")
  [ -n "$hs" ] && [ "$hs" -gt $((now - 60)) ] && [ "$hs" -le $((now + 1)) ] || die "$4 ($1) latest handshake '$hs' not recent"
  rx=$(ip netns exec "$2" wg show "$3" transfer | awk '{ print $2 }')
  [ "${rx:-0}" -gt 100000 ] || die "$4 ($1) transfer counter '$rx' too small"
done
# The responder learned the initiator's endpoint from its handshake (roaming rule).
if [ "$IMPL_B" != boringtun ]; then
  ep=$(ip netns exec "$B" wg show "$IB" endpoints | awk '{ print $2 }')
  case "$ep" in 192.0.2.1:51820|"[2001:db8::1]:51820") ;; *) die "responder endpoint '$ep'" ;; esac
fi
# The backend asked for (WGTURBO_IO, or EXPECT_BACKEND where a fallback is the point) is the
# one the start-up line names.
case "${EXPECT_BACKEND:-${WGTURBO_IO:-}}" in uring) want="on io_uring" ;; syscalls) want="on syscalls" ;; *) want="" ;; esac
# So are the worker placement and crypto hand-off asked for (WGTURBO_PIN, WGTURBO_PARALLEL_CRYPTO),
# and EXPECT_STARTUP, any other text the line must hold (how io_uring reads, say).
case "${WGTURBO_PIN:-}" in 1) want_pin="worker(s), pinned," ;; 0) want_pin="worker(s), unpinned," ;; *) want_pin="" ;; esac
case "${WGTURBO_PARALLEL_CRYPTO:-}" in always) want_crypto="; parallel crypto;" ;; 0) want_crypto="; crypto per worker;" ;; *) want_crypto="" ;; esac
for side in "$IMPL_A $IA" "$IMPL_B $IB"; do
  set -- $side
  [ "$1" = wgturbo ] || continue
  for w in "$want" "$want_pin" "$want_crypto" "${EXPECT_STARTUP:-}"; do
    [ -n "$w" ] || continue
    grep -F -- "$w" "$WORK/$2.log" >/dev/null || { cat "$WORK/$2.log" >&2; die "wgturbo on $2: no '$w' in its start-up line"; }
  done
done
log "ok: $IMPL_A -> $IMPL_B outer IPv$OUTER: TCP $tcp Gbit/s, UDP $udp Gbit/s"
