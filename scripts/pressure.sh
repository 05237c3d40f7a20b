#!/usr/bin/env bash
# Pressure: the example server under the load test while its Redis hangs (SIGSTOP: connections
# stay open, nothing is answered). The server runs with MAX_IN_FLIGHT=16 and 64 clients, so the
# bound is reached. It passes when
#   - the calls to Redis in flight (the tollgate_store_in_flight gauge, scraped from /metrics
#     each second) never exceed 16, and stay at most 1 (the breaker's probe) while Redis hangs;
#   - the server's resident memory stays flat (less than 10% above what it was before the hang);
#   - requests keep being answered (fail open) without errors;
# and, once Redis resumes, Redis decides again under the same load.
#
#   bash scripts/pressure.sh [hang seconds]     (default 20; SOAK_PROFILE=release to optimize)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
hang=${1:-20}
warmup=5
after=10
total=$((warmup + hang + after))
need redis-server redis-cli curl python3
build_examples
dir=$(mktemp -d)
trap cleanup EXIT
port=$(free_port)
start_redis "$port" --appendonly no
bound=16
addr=$(start_server server REDIS_URL="redis://127.0.0.1:$port/" MAX_IN_FLIGHT=$bound)
server=$(cat "$dir/server.pid")
echo "pressure: server $addr, Redis 127.0.0.1:$port hung for ${hang}s after ${warmup}s"

start=$(date +%s.%N)
"$bin/loadtest" --url "http://$addr/pressure" --clients 64 --duration "${total}s" --keys 1000 \
  >"$dir/result.json" 2>"$dir/progress.log" &
load=$!
pids+=("$load")
in_flight() { curl -s "http://$addr/metrics" | awk '/^tollgate_store_in_flight / {print int($2)}'; }
allowed_now() { tail -n 1 "$dir/progress.log" | sed -n 's/.* allowed=\([0-9]*\).*/\1/p'; }

printf '%5s %8s %10s %s\n' t phase rss_kib in_flight
most=0 most_hung=0 peak=0
for t in $(seq 1 "$total"); do
  at "$t"
  phase=running
  if ((t == warmup)); then
    before=$(rss_kib "$server")
    kill -STOP "$(cat "$dir/redis.pid")"
  elif ((t == warmup + hang)); then
    kill -CONT "$(cat "$dir/redis.pid")"
    resumed_at=$(allowed_now)
    phase=resumed
  fi
  ((t > warmup && t < warmup + hang)) && phase=hung
  rss=$(rss_kib "$server")
  flight=$(in_flight)
  flight=${flight:-0}
  ((flight > most)) && most=$flight
  if [[ $phase == hung ]]; then
    ((flight > most_hung)) && most_hung=$flight
    ((rss > peak)) && peak=$rss
  fi
  printf '%5s %8s %10s %s\n' "$t" "$phase" "$rss" "$flight"
done
wait "$load" || true
result=$(tail -n 1 "$dir/result.json")
echo "result: $result"
fail=0
echo "resident memory: $before KiB before the hang, at most $peak KiB during it, $(rss_kib "$server") KiB at the end"
below "$peak" "$before" 1.10 || { echo "FAIL: memory grew 10% or more during the hang"; fail=1; }
echo "calls to Redis in flight: at most $most in all, at most $most_hung while Redis hung"
((most <= bound)) || { echo "FAIL: more than MAX_IN_FLIGHT=$bound calls in flight"; fail=1; }
((most_hung <= 1)) || { echo "FAIL: more than the breaker's one probe in flight while Redis hung"; fail=1; }
errors=$(json_field "$result" errors)
((errors == 0)) || { echo "FAIL: $errors errors"; fail=1; }
(($(json_field "$result" unlimited) > 0)) || { echo "FAIL: nothing was failed open during the hang"; fail=1; }
allowed=$(json_field "$result" allowed)
echo "decided by Redis: $resumed_at when it resumed, $allowed at the end"
((allowed > resumed_at)) || { echo "FAIL: Redis decided nothing after it resumed"; fail=1; }
((fail == 0)) || exit 1
echo "pressure passed"
