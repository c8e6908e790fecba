#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and lints, then runs every
# test (pure unit tests, in-process boringtun interop, netns tunnels against wireguard-go and
# boringtun). Ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash netns-scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --release -- -D warnings
bash netns-scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
log=$(mktemp)
status=0
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{ s += $1 } END { print s + 0 }')
failed=$(grep -Eo '^test result: .*; ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{ s += $1 } END { print s + 0 }')
rm -f "$log"
echo "summary: $passed passed, $failed failed"
exit "$status"
