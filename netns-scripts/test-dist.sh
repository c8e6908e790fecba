#!/usr/bin/env bash
# test-dist.sh: the systemd files in dist/ pass `systemd-analyze verify` without a single
# warning: the wgturbo@.service unit (with ExecStart pointed at the built binary) and
# wg-quick@.service (from wireguard-tools) with our drop-in applied.
source "$(dirname "$0")/lib.sh"
command -v systemd-analyze >/dev/null || die "systemd-analyze is missing (apt-get install systemd)"
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
sed "s#/usr/bin/wgturbo#$WGTURBO#" "$ROOT/dist/wgturbo@.service" > "$units/wgturbo@.service"
wgq=$(ls /lib/systemd/system/wg-quick@.service /usr/lib/systemd/system/wg-quick@.service 2>/dev/null | head -1)
[ -n "$wgq" ] || die "wg-quick@.service not found (wireguard-tools)"
cp "$wgq" "$units/"
mkdir "$units/wg-quick@.service.d"
cp "$ROOT/dist/wg-quick@.service.d/wgturbo.conf" "$units/wg-quick@.service.d/"
out=$(SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify --man=no wgturbo@wg0.service wg-quick@wg0.service 2>&1) \
  || die "systemd-analyze verify failed: $out"
[ -z "$out" ] || die "systemd-analyze verify warned: $out"
# The check has teeth: a broken drop-in line is reported.
echo "Environment WG_QUICK_USERSPACE_IMPLEMENTATION" >> "$units/wg-quick@.service.d/wgturbo.conf"
out=$(SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify --man=no wg-quick@wg0.service 2>&1)
[ -n "$out" ] || die "a broken drop-in went unnoticed"
log "ok: dist/wgturbo@.service and the wg-quick@ drop-in pass systemd-analyze verify"
