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
seconds=${1:-60}
profile=${SOAK_PROFILE:-debug}
warmup=$((seconds / 6 > 5 ? seconds / 6 : 5))
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install redis-server" >&2; exit 1; }
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
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start_redis() {
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" \
    --appendonly yes --appendfsync everysec --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  until redis-cli -p "$port" PING 2>/dev/null | grep -q PONG; do sleep 0.05; done
}

# Starts an example server; prints its address once it listens.
start_server() {
  local name=$1 out
  out=$dir/$name.out
  REDIS_URL=redis://127.0.0.1:$port/ FAIL_MODE=open LISTEN_ADDR=127.0.0.1:0 RUST_LOG=warn \
    "$bin/server" >"$out" 2>"$dir/$name.log" &
  pids+=($!)
  echo $! >"$dir/$name.pid"
  for _ in $(seq 200); do
    if grep -q '^listening on ' "$out"; then
      sed -n 's/^listening on //p' "$out"
      return
    fi
    sleep 0.05
  done
  echo "$name did not start: $(cat "$dir/$name.log")" >&2
  exit 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

start_redis
a=$(start_server a)
b=$(start_server b)
pid_a=$(cat "$dir/a.pid")
pid_b=$(cat "$dir/b.pid")
echo "soak: ${seconds}s, servers $a and $b on Redis 127.0.0.1:$port ($profile build)"

# The example server's limit: 10 at once per key and endpoint, 10 back per 10 s.
"$bin/loadtest" --url "http://$a/soak" --url "http://$b/soak" --clients 32 \
  --duration "${seconds}s" --keys 100 --check-limit 10/10 \
  >"$dir/result.json" 2>"$dir/progress.log" &
load=$!
pids+=("$load")

for t in $(seq 1 "$seconds"); do
  sleep 1
  echo "$t $(rss_kib "$pid_a") $(rss_kib "$pid_b")" >>"$dir/rss"
  if ((t == seconds / 2)); then
    echo "soak: t=${t}s restarting Redis"
    redis-cli -p "$port" SHUTDOWN >/dev/null 2>&1 || true
    while [[ -e $dir/redis.pid ]] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; do sleep 0.05; done
    sleep 2
    start_redis
    echo "soak: t=$((t + 2))s Redis is back"
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
  grep -i 'over\|limit' "$dir/progress.log" | head -n 5 || true
  fail=1
fi
errors=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["errors"])' "$result")
if ((errors != 0)); then
  echo "FAIL: $errors errors (fail open prescribes none)"
  fail=1
fi
read -r base_a base_b < <(awk -v w="$warmup" '$1 == w {print $2, $3}' "$dir/rss")
read -r end_a end_b < <(tail -n 1 "$dir/rss" | awk '{print $2, $3}')
for s in "a $base_a $end_a" "b $base_b $end_b"; do
  read -r name base end <<<"$s"
  growth=$(python3 -c "print(f'{($end - $base) / $base * 100:.1f}')")
  echo "server $name: resident memory ${base} KiB after ${warmup}s warm-up, ${end} KiB at the end (${growth}%)"
  if python3 -c "import sys; sys.exit(0 if $end < $base * 1.10 else 1)"; then :; else
    echo "FAIL: server $name grew 10% or more"
    fail=1
  fi
done
if ((fail)); then exit 1; fi
echo "soak passed"
