#!/usr/bin/env bash
# Fetches the benchmark's comparison peers into netns-scripts/.cache without installing them
# system-wide: Debian trixie's wireguard-go (0.0.20231211+, with TUN TSO/GRO and UDP GSO/GRO)
# extracted with dpkg -x, and gotatun-cli / boringtun-cli through cargo install.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=$PWD/.cache
mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial"
if [ ! -x "$CACHE/wireguard-go-trixie/usr/bin/wireguard-go" ]; then
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / { print $2; exit }' /etc/apt/sources.list)
  echo "deb [trusted=yes] $mirror trixie main" > "$CACHE/apt/sources.list"
  opts=(-o Dir::Etc::SourceList="$CACHE/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o Dir::State::Lists="$CACHE/apt/lists" -o Dir::Cache::Archives="$CACHE/apt/archives"
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  (cd "$CACHE" && apt-get "${opts[@]}" download wireguard-go)
  dpkg -x "$CACHE"/wireguard-go_*.deb "$CACHE/wireguard-go-trixie"
fi
command -v gotatun >/dev/null || [ -x "$HOME/.cargo/bin/gotatun" ] || cargo install --locked gotatun-cli || cargo install gotatun-cli
command -v boringtun-cli >/dev/null || [ -x "$HOME/.cargo/bin/boringtun-cli" ] || cargo install boringtun-cli --version 0.7.1
"$CACHE/wireguard-go-trixie/usr/bin/wireguard-go" --version | head -1
