#!/usr/bin/env bash
# test-uring-fallback.sh: with io_uring refused by the kernel (sysctl io_uring_disabled=2),
# wgturbo asked for io_uring says why it cannot have it, runs the syscall backend, and the
# tunnel to wireguard-go works. The sysctl is restored on any exit.
source "$(dirname "$0")/lib.sh"
require_root
sysctl=/proc/sys/kernel/io_uring_disabled
[ -w "$sysctl" ] || die "this kernel has no $sysctl to refuse io_uring with"
old=$(cat "$sysctl")
restore() { echo "$old" > "$sysctl"; cleanup; }
trap restore EXIT
echo 2 > "$sysctl"
setup_pair
start_impl wgturbo "$A" "$IA"
start_impl wireguard-go "$B" "$IB"
configure "$A" "$IA" "$WORK/a.key" 51820 10.200.0.1/24 fd00:200::1/64 "$(cat "$WORK/b.pub")" 10.200.0.2/32 192.0.2.2:51821
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$(cat "$WORK/a.pub")" 10.200.0.1/32 ""
ping_ok "$A" 10.200.0.2 || die "ping through the syscall fallback"
grep -F "io_uring unavailable" "$WORK/$IA.log" >/dev/null || { cat "$WORK/$IA.log" >&2; die "no word of the fallback"; }
grep -F "on syscalls" "$WORK/$IA.log" >/dev/null || die "start-up line does not name the syscall backend"
log "ok: io_uring refused, syscall backend in use and the tunnel works"
