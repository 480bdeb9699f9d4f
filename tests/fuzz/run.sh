#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECS seconds each (default 30), starting from the checked-in
# corpus; exits non-zero on the first finding (its input is left in tests/fuzz/artifacts/).
# cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. No
# sanitizer: the crate forbids unsafe code, so a finding is a panic, which libFuzzer catches.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
secs="${FUZZ_SECS:-30}"
dir=(--fuzz-dir tests/fuzz)
cargo fuzz build "${dir[@]}" -s none -O
for target in $(cargo fuzz list "${dir[@]}"); do
  work="$(mktemp -d)"
  # New inputs go to a scratch directory; the checked-in corpus is only read.
  if ! cargo fuzz run "${dir[@]}" -s none -O "$target" "$work" "tests/fuzz/corpus/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$work.log" 2>&1; then
    grep -A4 "panicked" "$work.log" || tail -n 40 "$work.log"
    echo "fuzz target $target found a failing input (see tests/fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$' || true)"
  echo "fuzz $target: ${runs:-?} inputs in ${secs} s, nothing found"
  rm -rf "$work" "$work.log"
done
