#!/usr/bin/env bash
# Leases under the load test (issue 13's targets): two example servers (release builds) on one
# Redis this script starts on a loopback port, the load test sending to both with --redis-url,
# each case with the limit leased and not, in the same run:
#   hot:   one key, its limit (1,000,000 per second) far above the offered rate: Redis calls per
#          allowed decision, and no key over its limit (--check-limit);
#   over:  one key, demand above its limit (5,000 per second): what passed against what the
#          limit permits over the run (capacity + refill x elapsed);
#   cold:  one client walking 200,000 keys (the load test's clients all walk the same keys one
#          after another, so with many clients every key is hot for a moment): each key is
#          asked twice in a row and never again, calls per decision 1.0 either way.
#
#   bash benches/lease.sh [seconds]      (default 10 per case; ONLY=hot|over|cold for one case)
#
# Everything listens on loopback and is stopped at the end; each case's servers are stopped
# with SIGTERM (they give back what they hold on lease) before the next starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
seconds=${1:-10}
need redis-server redis-cli python3
SOAK_PROFILE=release build_examples
dir=$(mktemp -d)
trap cleanup EXIT
port=$(free_port)
start_redis "$port"
url="redis://127.0.0.1:$port/"

stop() {
  local pid
  pid=$(cat "$dir/$1.pid")
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

# case NAME CAPACITY PERIOD_S LEASE KEYS CLIENTS
case_() {
  local name=$1 capacity=$2 period=$3 lease=$4 keys=$5 clients=$6 a b status=0
  [[ -n ${ONLY:-} && $name != "$ONLY"-* ]] && return
  printf '[[default.limits]]\nname = "hot"\ncapacity = %s\nperiod = "%ss"\nlease = %s\n' \
    "$capacity" "$period" "$lease" >"$dir/$name.toml"
  a=$(start_server "$name-a" REDIS_URL="$url" RATE_LIMIT_CONFIG="$dir/$name.toml" STORE_TIMEOUT_MS=1000)
  b=$(start_server "$name-b" REDIS_URL="$url" RATE_LIMIT_CONFIG="$dir/$name.toml" STORE_TIMEOUT_MS=1000)
  redis-cli -p "$port" FLUSHALL >/dev/null
  result=$("$bin/loadtest" --url "http://$a/hot" --url "http://$b/hot" --clients "$clients" \
    --duration "${seconds}s" --keys "$keys" --check-limit "$capacity/$period" \
    --redis-url "$url" 2>"$dir/$name.progress") || status=$?
  stop "$name-a"
  stop "$name-b"
  python3 - "$name" "$lease" "$capacity" "$period" "$status" "$result" <<'PY'
import json, sys
name, lease, capacity, period, status, line = sys.argv[1:]
r = json.loads(line)
decided = r["allowed"] + r["limited"]
permitted = int(capacity) + int(capacity) * r["elapsed_s"] / int(period)
print(f"{name:<10} leases {'on ' if lease == 'true' else 'off'}  rps {r['rps']:>9.0f}  "
      f"allowed {r['allowed']:>8}  limited {r['limited']:>8}  redis_calls {r['redis_calls']:>8}  "
      f"calls/decision {r['redis_calls'] / max(decided, 1):.4f}  "
      f"permitted {permitted:>10.0f}  allowed/permitted {r['allowed'] / permitted:.4f}  "
      f"keys_over_limit {r['keys_over_limit']}  exit {status}")
PY
}

echo "leases: ${seconds}s per case, two servers on Redis 127.0.0.1:$port"
for lease in false true; do case_ "hot-$lease" 1000000 1 "$lease" 1 64; done
for lease in false true; do case_ "over-$lease" 5000 1 "$lease" 1 64; done
for lease in false true; do case_ "cold-$lease" 1000000 1 "$lease" 200000 1; done
