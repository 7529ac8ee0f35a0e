#!/usr/bin/env bash
# Runs each libFuzzer target (fuzz/fuzz_targets/) for a bounded time and prints what it
# did. Not part of the test command: run it by hand, e.g. before a release.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 600 s, every target)
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets this
# machine's stable toolchain accept them. Seeds are committed under fuzz/seeds/<target>;
# the growing corpus (fuzz/corpus/) and crash inputs (fuzz/artifacts/) are not. A crash
# is fixed in the code and its input kept under fuzz/regressions/<target>/, replayed by a
# unit test next to the code it broke (so `cargo test` guards it without a fuzzer).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(address send_mime template dsn)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

summary=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp "/tmp/mailgate-fuzz-$target.XXXXXX")
  echo "fuzz.sh: $target for ${seconds}s (log: $log)"
  status=0
  cargo fuzz run --release "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
  if [ "$status" -eq 0 ]; then verdict="no crash"; else verdict="FAILED (exit $status), see $log and fuzz/artifacts/$target"; fi
  summary+=("$target: ${seconds}s, $runs runs, $speed exec/s, coverage $cov edges, corpus $corpus: $verdict")
  [ "$status" -eq 0 ] || { printf '%s\n' "${summary[@]}"; exit "$status"; }
done
printf '%s\n' "${summary[@]}"
