#!/usr/bin/env bash
# Pressure: the example server under the load test while its Redis hangs (SIGSTOP: connections
# stay open, nothing is answered). It passes when, all through the hang,
#   - the calls to Redis in flight stay bounded (the tollgate_store_in_flight gauge, scraped
#     from /metrics each second, never exceeds max_in_flight, 1,024 by default; in practice the
#     breaker keeps it to one probe);
#   - the server's resident memory stays flat (less than 10% above what it was before the hang);
#   - requests keep being answered (fail open) without errors;
# and Redis decides again after it resumes.
#
#   bash scripts/pressure.sh [hang seconds]     (default 20; SOAK_PROFILE=release to optimize)
set -euo pipefail
cd "$(dirname "$0")/.."
hang=${1:-20}
profile=${SOAK_PROFILE:-debug}
warmup=5
total=$((warmup + hang + 5))
for tool in redis-server redis-cli curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server curl)" >&2; exit 1; }
done
if [[ $profile == release ]]; then
  cargo build -q --release --example server --example loadtest
else
  cargo build -q --example server --example loadtest
fi
bin=target/$profile/examples
dir=$(mktemp -d)
pids=()
cleanup() {
  [[ -e $dir/redis.pid ]] && kill -CONT "$(cat "$dir/redis.pid")" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
until redis-cli -p "$port" PING 2>/dev/null | grep -q PONG; do sleep 0.05; done
redis_pid=$(cat "$dir/redis.pid")

REDIS_URL=redis://127.0.0.1:$port/ FAIL_MODE=open LISTEN_ADDR=127.0.0.1:0 RUST_LOG=warn \
  "$bin/server" >"$dir/server.out" 2>"$dir/server.log" &
server=$!
pids+=("$server")
for _ in $(seq 200); do grep -q '^listening on ' "$dir/server.out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$dir/server.out")
[[ -n $addr ]] || { echo "the server did not start: $(cat "$dir/server.log")" >&2; exit 1; }
echo "pressure: server $addr, Redis 127.0.0.1:$port hung for ${hang}s after ${warmup}s ($profile build)"

"$bin/loadtest" --url "http://$addr/pressure" --clients 64 --duration "${total}s" --keys 1000 \
  >"$dir/result.json" 2>"$dir/progress.log" &
load=$!
pids+=("$load")

in_flight() {
  curl -s "http://$addr/metrics" | awk '/^tollgate_store_in_flight / {print $2}'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server/status"; }

printf '%5s %8s %10s %s\n' t phase rss_kib in_flight
most=0
for t in $(seq 1 "$total"); do
  sleep 1
  phase=running
  if ((t == warmup)); then
    before=$(rss_kib)
    kill -STOP "$redis_pid"
  fi
  ((t > warmup && t <= warmup + hang)) && phase=hung
  if ((t == warmup + hang)); then
    kill -CONT "$redis_pid"
    phase=resumed
  fi
  rss=$(rss_kib)
  flight=$(in_flight)
  flight=${flight:-0}
  most=$(python3 -c "print(max($most, int(float('$flight'))))")
  if ((t > warmup && t <= warmup + hang)); then
    peak=$(python3 -c "print(max(${peak:-0}, $rss))")
    most_hung=$(python3 -c "print(max(${most_hung:-0}, int(float('$flight'))))")
  fi
  printf '%5s %8s %10s %s\n' "$t" "$phase" "$rss" "$flight"
done
wait "$load" || true
result=$(tail -n 1 "$dir/result.json")
echo "result: $result"
after=$(rss_kib)
fail=0
echo "resident memory: ${before} KiB before the hang, at most ${peak} KiB during it, ${after} KiB at the end"
python3 -c "import sys; sys.exit(0 if $peak < $before * 1.10 else 1)" ||
  { echo "FAIL: memory grew 10% or more during the hang"; fail=1; }
echo "calls to Redis in flight: at most $most in all, at most ${most_hung:-0} while Redis hung"
((most <= 1024)) || { echo "FAIL: more than max_in_flight calls in flight"; fail=1; }
python3 - "$result" <<'PY' || fail=1
import json, sys
r = json.loads(sys.argv[1])
if r["errors"]:
    sys.exit(f"FAIL: {r['errors']} errors")
if not r["unlimited"]:
    sys.exit("FAIL: no request was failed open during the hang")
if not r["allowed"]:
    sys.exit("FAIL: Redis decided nothing")
PY
# Redis decides again.
grep -q 'ratelimit: "default";r=' <(curl -si -H 'X-API-Key: after-the-hang' "http://$addr/pressure") ||
  { echo "FAIL: Redis does not decide after the hang"; fail=1; }
((fail == 0)) && echo "pressure passed"
exit "$fail"
