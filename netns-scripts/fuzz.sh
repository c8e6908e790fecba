#!/usr/bin/env bash
# fuzz.sh [SECONDS]: runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each
# (default 20) with a fixed seed, so a CI run is bounded and repeatable. Any crash fails.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-20}
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${SECS}s"
  log=$(mktemp)
  rc=0
  cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$SECS" -seed=1 >"$log" 2>&1 || rc=$?
  grep -E "^Done|SUMMARY|panicked|crash-" "$log" || true
  if [ "$rc" != 0 ]; then tail -40 "$log"; rm -f "$log"; echo "fuzz: $target FAILED"; exit 1; fi
  rm -f "$log"
done
