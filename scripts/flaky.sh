#!/usr/bin/env bash
# Runs the test binaries over and over to show the suite does not fail at random.
#   bash scripts/flaky.sh [unit_runs] [integration_runs]     (defaults: 200 and 20)
# Builds once, then runs the built binaries themselves (so editing the sources meanwhile does
# not change what is tested) and stops at the first failure, printing its output. The property
# tests run with their fixed seed, as in CI (src/testing.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
unit_runs=${1:-200}
it_runs=${2:-20}
# Each test binary the suite builds, by its target name: the unit tests are `tollgate`'s lib.
executables=$(cargo test --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = "unit" if "lib" in m["target"]["kind"] else m["target"]["name"]
        print(kind, m["executable"])
')
[[ -n $executables ]] || { echo "cargo test --no-run built nothing" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() { # name runs executable
  local name=$1 runs=$2 exe=$3 started=$SECONDS
  for ((i = 1; i <= runs; i++)); do
    if ! "$exe" >"$log" 2>&1; then
      cat "$log"
      echo "FAILED: $name, run $i of $runs ($exe)" >&2
      exit 1
    fi
  done
  echo "$name: $runs runs, 0 failures, $((SECONDS - started)) s"
}
while read -r name exe; do
  case $name in
    unit) run unit "$unit_runs" "$exe" ;;
    *) run "$name" "$it_runs" "$exe" ;;
  esac
done <<<"$executables"
