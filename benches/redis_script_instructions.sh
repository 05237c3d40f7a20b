#!/usr/bin/env bash
# Redis CPU per decision, counted in instructions rather than timed: each script runs inside
# redis-server under valgrind's callgrind, which counts the instructions executed in
# evalShaCommand (the script, its redis.call()s and its reply; not the network). The count is
# the same from run to run whatever else the machine does, unlike a timing on a shared machine.
#
#   bash benches/redis_script_instructions.sh [calls]
#
# Scripts as in benches/redis_script.sh: lua/token_bucket.lua, benches/lua/gcra_float.lua (in
# the style of go-redis/redis_rate) and benches/lua/floor.lua (TIME, GET, SET PX only).
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }

measure() { # name, script file, then the EVALSHA arguments after the SHA
  local name=$1 file=$2
  shift 2
  local dir port pid sha
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect=evalShaCommand \
    --callgrind-out-file="$dir/callgrind.out" \
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    >"$dir/valgrind.log" 2>&1 &
  pid=$!
  until redis-cli -p "$port" PING >/dev/null 2>&1; do sleep 0.2; done
  sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat "$file")")
  redis-benchmark -p "$port" -n "$calls" -c 1 -P 16 -r 100000 -q EVALSHA "$sha" "$@" >/dev/null
  redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait "$pid" || true
  local total
  total=$(grep -E '^(summary|totals):' "$dir/callgrind.out" | head -1 | awk '{print $2}')
  printf '%-28s %10.0f instructions/call\n' "$name" "$(echo "$total / $calls" | bc -l)"
  rm -rf "$dir"
}

measure "token_bucket allowed" lua/token_bucket.lua 1 'k:__rand_int__' 1 1000000000
measure "gcra_float allowed" benches/lua/gcra_float.lua 1 'k:__rand_int__' 1000000000 1000000 1 1
measure "floor" benches/lua/floor.lua 1 'k:__rand_int__'
measure "token_bucket hot denied" lua/token_bucket.lua 1 hot 3600000000 3600000000
measure "gcra_float hot denied" benches/lua/gcra_float.lua 1 hot 1 1 3600 1
measure "token_bucket 2 limits allowed" lua/token_bucket.lua 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' 1 1000000000 1 1000000000
