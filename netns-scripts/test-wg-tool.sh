#!/usr/bin/env bash
# test-wg-tool.sh: the real wg(8) drives wgturbo through its UAPI socket: every `wg set`
# option, showconf, setconf, addconf, syncconf, bad requests answered with errno and no
# change, a port in use, and a flood of malformed datagrams. The peer is wireguard-go.
source "$(dirname "$0")/lib.sh"
require_root
trap cleanup EXIT
make_ns A a; make_ns B b
link_ns "$A" "$B" 0 192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2
genkey a; genkey b; genkey c
wg genpsk > "$WORK/psk"
IA="wgt${RUN_ID}a" IB="wgt${RUN_ID}b"
SOCK="/var/run/wireguard/$IA.sock"
start_impl wgturbo "$A" "$IA"
start_impl wireguard-go "$B" "$IB"
PA=$(cat "$WORK/a.pub") PB=$(cat "$WORK/b.pub") PC=$(cat "$WORK/c.pub")
wgA() { ip netns exec "$A" wg "$@"; }

# Every `wg set` option at once.
wgA set "$IA" private-key "$WORK/a.key" listen-port 51820 fwmark 0x42 \
  peer "$PB" preshared-key "$WORK/psk" endpoint 192.0.2.2:51821 persistent-keepalive 25 allowed-ips 10.200.0.2/32,fd00:200::2/128 \
  peer "$PC" allowed-ips 10.200.0.3/32 endpoint "[2001:db8::3]:1234" || die "wg set"
conf=$(wgA showconf "$IA")
expect() { grep -qxF "$1" <<<"$conf" || die "showconf lacks '$1':"$'\n'"$conf"; }
expect "PrivateKey = $(cat "$WORK/a.key")"
expect "ListenPort = 51820"
expect "FwMark = 0x42"
expect "PublicKey = $PB"
expect "PresharedKey = $(cat "$WORK/psk")"
expect "Endpoint = 192.0.2.2:51821"
expect "PersistentKeepalive = 25"
expect "AllowedIPs = 10.200.0.2/32, fd00:200::2/128"
expect "Endpoint = [2001:db8::3]:1234"
[ "$(wgA show "$IA" public-key)" = "$PA" ] || die "public key"
wgA set "$IA" peer "$PC" remove || die "peer remove"
grep -q "$PC" <<<"$(wgA show "$IA" peers)" && die "removed peer still listed"
wgA set "$IA" fwmark off peer "$PB" persistent-keepalive off || die "wg set off"
grep -q "FwMark\|PersistentKeepalive" <<<"$(wgA showconf "$IA")" && die "fwmark/keepalive not turned off"

# Bad requests: errno as wireguard-go sends it, and nothing changes.
before=$(wgA showconf "$IA")
for req in 'set=1\nlisten_port=notaport\n\n' 'set=1\npublic_key=zz\n\n' \
           "set=1\\npublic_key=$(wg pubkey <"$WORK/c.key" | base64 -d | od -An -tx1 | tr -d ' \n')\\nallowed_ip=10.0.0.0/99\\n\\n" \
           'set=1\nlisten_port=51900\nbogus_key=1\n\n'; do
  reply=$(python3 "$ROOT/netns-scripts/uapi.py" "$SOCK" "$req")
  [ "$reply" = "errno=-22" ] || die "bad set '$req' answered '$reply'"
done
reply=$(python3 "$ROOT/netns-scripts/uapi.py" "$SOCK" 'frob=1\n\n')
[ "$reply" = "errno=-71" ] || die "unknown operation answered '$reply'"
[ "$(wgA showconf "$IA")" = "$before" ] || die "a refused set changed the device"

# A port in use: the set fails with EADDRINUSE and the old port stays.
ip netns exec "$A" python3 -c 'import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("0.0.0.0",51999)); time.sleep(20)' &
PIDS+=("$!")
sleep 0.5
out=$(wgA set "$IA" listen-port 51999 2>&1) && die "listen-port on a busy port succeeded"
grep -qi "in use" <<<"$out" || log "note: wg said '$out'"
[ "$(wgA show "$IA" listen-port)" = 51820 ] || die "failed port change moved the port"

# setconf replaces everything (the PSK goes: B has none, so only now can they talk).
cat > "$WORK/a.conf" <<CONF
[Interface]
PrivateKey = $(cat "$WORK/a.key")
ListenPort = 51820

[Peer]
PublicKey = $PB
AllowedIPs = 10.200.0.2/32, fd00:200::2/128
Endpoint = 192.0.2.2:51821
CONF
configure "$B" "$IB" "$WORK/b.key" 51821 10.200.0.2/24 fd00:200::2/64 "$PA" 10.200.0.1/32,fd00:200::1/128 ""
ip -n "$A" addr add 10.200.0.1/24 dev "$IA"; ip -n "$A" addr add fd00:200::1/64 dev "$IA" nodad; ip -n "$A" link set "$IA" up
ip netns exec "$A" ping -c 1 -W 1 10.200.0.2 >/dev/null 2>&1 && die "ping worked with mismatched preshared keys"
wgA setconf "$IA" "$WORK/a.conf" || die "setconf"
grep -q PresharedKey <<<"$(wgA showconf "$IA")" && die "setconf kept the old preshared key"
ping_ok "$A" 10.200.0.2 || die "ping after setconf"

# addconf adds, syncconf removes what the file lacks and keeps the live session.
printf '[Peer]\nPublicKey = %s\nAllowedIPs = 10.200.0.3/32\n' "$PC" > "$WORK/c.conf"
wgA addconf "$IA" "$WORK/c.conf" || die "addconf"
[ "$(wgA show "$IA" peers | wc -l)" = 2 ] || die "addconf did not add"
hs=$(latest_handshake "$A" "$IA" "$PB")
wgA syncconf "$IA" "$WORK/a.conf" || die "syncconf"
[ "$(wgA show "$IA" peers)" = "$PB" ] || die "syncconf left $(wgA show "$IA" peers)"
[ "$(latest_handshake "$A" "$IA" "$PB")" = "$hs" ] || die "syncconf reset the live session"
ping_ok "$A" fd00:200::2 || die "ping after syncconf"

# Malformed and forged datagrams: counted and dropped, nothing breaks.
ip netns exec "$B" timeout 30 python3 "$ROOT/netns-scripts/garbage.py" 192.0.2.1 51820 5000 || die "garbage sender"
ip netns exec "$B" timeout 30 python3 "$ROOT/netns-scripts/garbage.py" 2001:db8::1 51820 2000 || die "garbage sender v6"
kill -0 "${PIDS[0]}" || die "wgturbo died under malformed input"
ping_ok "$A" 10.200.0.2 || die "tunnel broken after malformed input"
[ "$(latest_handshake "$A" "$IA" "$PB")" -gt $(( $(date +%s) - 60 )) ] || die "handshake time"
rx=$(wgA show "$IA" transfer | awk '{ print $2 }')
[ "$rx" -gt 0 ] || die "rx counter"
log "ok: wg set/showconf/setconf/addconf/syncconf, errno replies, busy port, 7000 bad datagrams"
