#!/usr/bin/env bash
# Property tests as a developer's tool: fresh random seeds and many cases, in a loop.
#   bash scripts/explore.sh [rounds] [cases]     (defaults: 5 rounds of 10000 cases)
# CI and `cargo test` use a fixed seed (src/testing.rs). A failure prints its seed; proptest
# writes the shrunk case to proptest-regressions/, which is checked in and replayed first on
# every later run. Fix the code (or the test), keep the regression file, commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
cases=${2:-10000}
cargo test --lib --no-run --quiet
for ((i = 1; i <= rounds; i++)); do
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  echo "round $i/$rounds: PROPTEST_RNG_SEED=$seed PROPTEST_CASES=$cases"
  if ! out=$(PROPTEST_RNG_SEED=$seed PROPTEST_CASES=$cases cargo test --lib --quiet props 2>&1); then
    echo "$out"
    echo "FAILED with PROPTEST_RNG_SEED=$seed; see proptest-regressions/" >&2
    exit 1
  fi
  grep '^test result' <<<"$out"
done
