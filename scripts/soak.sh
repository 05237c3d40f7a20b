#!/usr/bin/env bash
# Soak: two example servers sharing one Redis, under the load test, with a Redis restart in the
# middle. It passes when
#   - no API key was allowed more than its limit (capacity + refill x elapsed; the load test's
#     --check-limit), counting only the requests Redis decided;
#   - nothing failed but what the fail mode prescribes (fail open: requests pass unlimited
#     while Redis is away; any other error fails the soak);
#   - each server's resident memory grew less than 10% from the end of the warm-up to the end.
#
#   bash scripts/soak.sh [seconds]        (default 60; SOAK_PROFILE=release for optimized builds)
#
# Redis restarts the way an operator restarts it: SHUTDOWN (which writes its append-only file)
# and start again from it, so the buckets survive. (A Redis that restarts empty forgets every
# bucket: each key may then pass up to its capacity once more, which no limiter can prevent.)
# Everything listens on loopback ports of its own; everything is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
seconds=${1:-60}
warmup=$((seconds / 6 > 5 ? seconds / 6 : 5))
need redis-server redis-cli python3
build_examples
dir=$(mktemp -d)
trap cleanup EXIT
port=$(free_port)
persistent=(--appendonly yes --appendfsync everysec)
start_redis "$port" "${persistent[@]}"
a=$(start_server a REDIS_URL="redis://127.0.0.1:$port/")
b=$(start_server b REDIS_URL="redis://127.0.0.1:$port/")
echo "soak: ${seconds}s, servers $a and $b on Redis 127.0.0.1:$port"

# The example server's limit: 10 at once per key and endpoint, 10 back per 10 s.
start=$(date +%s.%N)
"$bin/loadtest" --url "http://$a/soak" --url "http://$b/soak" --clients 32 \
  --duration "${seconds}s" --keys 100 --check-limit 10/10 \
  >"$dir/result.json" 2>"$dir/progress.log" &
load=$!
pids+=("$load")
for t in $(seq 1 "$seconds"); do
  at "$t"
  echo "$t $(rss_kib "$(cat "$dir/a.pid")") $(rss_kib "$(cat "$dir/b.pid")")" >>"$dir/rss"
  if ((t == seconds / 2)); then
    echo "soak: t=${t}s restarting Redis"
    # Read before the shutdown: Redis removes its pid file as it exits.
    redis_pid=$(cat "$dir/redis.pid")
    redis-cli -p "$port" SHUTDOWN >/dev/null 2>&1 || true
    while kill -0 "$redis_pid" 2>/dev/null; do sleep 0.05; done
    sleep 2
    start_redis "$port" "${persistent[@]}"
    echo "soak: Redis is back"
  fi
done
status=0
wait "$load" || status=$?
tail -n 3 "$dir/progress.log"
result=$(tail -n 1 "$dir/result.json")
echo "result: $result"

fail=0
if ((status != 0)); then
  echo "FAIL: the load test exited $status (a key over its limit, or bad arguments)"
  grep -v '^t=' "$dir/progress.log" | head -n 5 || true
  fail=1
fi
errors=$(json_field "$result" errors)
((errors == 0)) || { echo "FAIL: $errors errors (fail open prescribes none)"; fail=1; }
for column in 2 3; do
  name=$([[ $column == 2 ]] && echo a || echo b)
  base=$(awk -v w="$warmup" -v c="$column" '$1 == w {print $c}' "$dir/rss")
  end=$(tail -n 1 "$dir/rss" | awk -v c="$column" '{print $c}')
  growth=$(awk -v a="$base" -v b="$end" 'BEGIN { printf "%.1f", (b - a) / a * 100 }')
  echo "server $name: resident memory $base KiB after ${warmup}s warm-up, $end KiB at the end ($growth%)"
  below "$end" "$base" 1.10 || { echo "FAIL: server $name grew 10% or more"; fail=1; }
done
((fail == 0)) || exit 1
echo "soak passed"
