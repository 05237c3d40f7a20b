#!/usr/bin/env bash
# The dearest request of each algorithm, inside Redis, as SLOWLOG measures it: what one hostile
# client can make a single call cost. For each script, ROUNDS rounds of its worst request on a
# fresh key (a sliding log: its whole capacity at once, just after as many entries expired, so
# the call removes and adds MAX_LOG_CAPACITY entries). Prints the slowest call of each and how
# many took more than 1,000 µs.
#
#   bash benches/redis_worst_case.sh [rounds]      (default 50)
#
# Starts its own redis-server on a loopback port (no persistence) and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need redis-server redis-cli python3
rounds=${1:-50}
dir=$(mktemp -d)
trap cleanup EXIT
port=$(free_port)
start_redis "$port" --appendonly no
cli() { redis-cli -p "$port" "$@"; }
load() { cli SCRIPT LOAD "$(echo "local read_only = false"; cat "$@" lua/decide.lua)"; }
max=250 # MAX_LOG_CAPACITY
key='tollgate:{alice:GET:/users/%7Bid%7D}'

# name, then how to call it: a function of the round that runs the worst request.
measure() {
  local name=$1 call=$2 slowest=0 over=0 us
  for ((r = 1; r <= rounds; r++)); do
    cli SLOWLOG RESET >/dev/null
    $call "$r"
    us=$(cli SLOWLOG GET 1 | sed -n 3p)
    ((us > slowest)) && slowest=$us
    ((us > 1000)) && over=$((over + 1))
  done
  printf '%-44s slowest %5s µs   over 1,000 µs: %s of %s\n' "$name" "$slowest" "$over" "$rounds"
}

cli CONFIG SET slowlog-log-slower-than 0 >/dev/null
tb=$(load lua/token_bucket.lua)
fw=$(load lua/fixed_window.lua)
sw=$(load lua/sliding_window.lua)
sl=$(load lua/sliding_log.lua)
mixed=$(load lua/token_bucket.lua lua/fixed_window.lua lua/sliding_window.lua \
  lua/sliding_log.lua lua/concurrency.lua lua/mixed.lua)
big=$((1 << 40))
worst_tb() { cli EVALSHA "$tb" 1 "$key:tb$1" t "$big" "$big" "$big" >/dev/null; }
worst_fw() { cli EVALSHA "$fw" 1 "$key:fw$1" f 3600000 "$big" "$big" >/dev/null; }
worst_sw() { cli EVALSHA "$sw" 1 "$key:sw$1" s 3600000 "$big" "$big" >/dev/null; }
# A 2 ms window: fill it, let it expire, then the same again (the second call is measured).
worst_sl() {
  cli EVALSHA "$sl" 1 "$key:sl$1" l 2000 "$max" "$max" >/dev/null
  sleep 0.005
  cli SLOWLOG RESET >/dev/null
  cli EVALSHA "$sl" 1 "$key:sl$1" l 2000 "$max" "$max" >/dev/null
}
# Eight limits, the most a policy has: a full sliding log and seven others.
worst_mixed() {
  local keys=() args=() i
  for i in 1 2 3 4 5 6 7; do keys+=("$key:m$1-$i"); args+=(t 1 "$big" "$max"); done
  keys+=("$key:m$1-sl"); args+=(l 2000 "$max" "$max")
  cli EVALSHA "$mixed" 8 "${keys[@]}" "${args[@]}" >/dev/null
  sleep 0.005
  cli SLOWLOG RESET >/dev/null
  cli EVALSHA "$mixed" 8 "${keys[@]}" "${args[@]}" >/dev/null
}
redis-server --version | head -1
measure "token_bucket, any cost, fresh key" worst_tb
measure "fixed_window, any cost, fresh key" worst_fw
measure "sliding_window, any cost, fresh key" worst_sw
measure "sliding_log, cost $max after $max expired" worst_sl
measure "8 limits with a full sliding_log (mixed)" worst_mixed
