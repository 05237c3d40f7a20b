#!/usr/bin/env bash
# Redis-side cost of one decision: the token-bucket script (lua/token_bucket.lua and
# lua/decide.lua, as RedisStore sends it) beside two reference scripts run the
# same way in the same run: benches/lua/gcra_float.lua (a GCRA script in the style of
# go-redis/redis_rate: float arithmetic, SET EX, string replies) and benches/lua/floor.lua
# (only TIME, GET and SET PX: the floor for any Lua limiter).
#
#   bash benches/redis_script.sh [requests] [rounds]
#
# Starts its own redis-server on a loopback port (no persistence) and stops it at the end.
# For each script it prints decisions per second from redis-benchmark (50 clients, -P 16) and
# the server's own microseconds per call (INFO commandstats), which does not depend on the
# client's speed.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-400000}
rounds=${2:-3}
source scripts/lib.sh
need redis-server redis-cli redis-benchmark python3
dir=$(mktemp -d)
trap cleanup EXIT
port=$(free_port)
start_redis "$port" --appendonly no
cli() { redis-cli -p "$port" "$@"; }

tb=$(cli SCRIPT LOAD "$(echo "local read_only = false"; cat lua/token_bucket.lua lua/decide.lua)")
floor=$(cli SCRIPT LOAD "$(cat benches/lua/floor.lua)")
gcra=$(cli SCRIPT LOAD "$(cat benches/lua/gcra_float.lua)")

run() { # name, then the EVALSHA arguments
  local name=$1
  shift
  cli FLUSHALL >/dev/null
  cli CONFIG RESETSTAT >/dev/null
  local rps
  rps=$(redis-benchmark -p "$port" -n "$requests" -c 50 -P 16 -r 100000 -q --csv EVALSHA "$@" |
    tail -1 | cut -d, -f2 | tr -d '"')
  local usec
  usec=$(cli INFO commandstats | grep '^cmdstat_evalsha:' | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')
  printf '%-28s %12s decisions/s %8s usec/call\n' "$name" "$rps" "$usec"
}

for round in $(seq "$rounds"); do
  echo "round $round"
  # Every decision allowed (the costly path): 100,000 keys, a bucket that never empties.
  run "token_bucket allowed" "$tb" 1 'k:__rand_int__' t 1 1000000000 1
  run "gcra_float allowed" "$gcra" 1 'k:__rand_int__' 1000000000 1000000 1 1
  run "floor" "$floor" 1 'k:__rand_int__'
  # One hot key, every decision after the first denied: one token per hour.
  run "token_bucket hot denied" "$tb" 1 hot t 3600000000 3600000000 1
  run "gcra_float hot denied" "$gcra" 1 hot 1 1 3600 1
done
