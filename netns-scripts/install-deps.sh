#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian machine (run as root).
# Idempotent: skips what is already there.
set -euo pipefail
need_apt=()
for pair in wg:wireguard-tools wireguard-go:wireguard-go iperf3:iperf3 ip:iproute2 ping:iputils-ping tcpdump:tcpdump \
  systemd-analyze:systemd tc:iproute2 python3:python3 nft:nftables; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# wg-quick needs resolvconf only for DNS=, which our configs do not use.
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v boringtun-cli >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/boringtun-cli" ]; then
  echo "install-deps: cargo install boringtun-cli"
  cargo install --locked boringtun-cli --version 0.7.1 >/dev/null 2>&1 || cargo install boringtun-cli
fi
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  echo "install-deps: cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
fi
echo "install-deps: ok"
