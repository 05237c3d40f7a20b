#!/usr/bin/env bash
# Redis CPU per decision, counted in instructions rather than timed: each script runs inside
# redis-server under valgrind's callgrind, which counts the instructions executed in
# evalShaCommand (the script, its redis.call()s and its reply; not the network). The count is
# the same from run to run whatever else the machine does, unlike a timing on a shared machine.
#
#   bash benches/redis_script_instructions.sh [calls]
#   ONLY='token_bucket|floor' bash benches/redis_script_instructions.sh   # the lines matching
#
# Scripts: each algorithm's as RedisStore sends it (`local read_only = false`, lua/<algorithm>.lua
# then lua/decide.lua),
# the mixed one, and two references: benches/lua/gcra_float.lua (in the style of
# go-redis/redis_rate) and benches/lua/floor.lua (TIME, GET, SET PX only).
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
scripts=$(mktemp -d)
trap 'rm -rf "$scripts"' EXIT
for a in token_bucket fixed_window sliding_window sliding_log; do
  { echo "local read_only = false"; cat "lua/$a.lua" lua/decide.lua; } >"$scripts/$a.lua"
done
{ echo "local read_only = false"; cat lua/token_bucket.lua lua/fixed_window.lua \
  lua/sliding_window.lua lua/sliding_log.lua lua/concurrency.lua lua/mixed.lua lua/decide.lua; } >"$scripts/mixed.lua"

measure() { # name, script file, then the EVALSHA arguments after the SHA
  local name=$1 file=$2
  shift 2
  if [[ -n ${ONLY:-} && ! $name =~ $ONLY ]]; then return; fi
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
  printf '%-34s %10.0f instructions/call\n' "$name" "$(echo "$total / $calls" | bc -l)"
  rm -rf "$dir"
}

s=$scripts
# Allowed: 100,000 keys, limits that never run out (most calls meet a new key or window).
# One key allowed: the same limits on one key (its bucket exists; windows of 1,000 s, a log
# of 1 s that entries keep leaving). Hot denied: one key, one unit an hour, every call after
# the first denied.
measure "token_bucket allowed" "$s/token_bucket.lua" 1 'k:__rand_int__' t 1 1000000000 1
measure "token_bucket hot denied" "$s/token_bucket.lua" 1 hot t 3600000000 3600000000 1
# One token-bucket limit alone, as RedisStore sends it since issue 15: its own script.
measure "token_bucket_one allowed" lua/token_bucket_one.lua 1 'k:__rand_int__' 1 1000000000
measure "token_bucket_one hot denied" lua/token_bucket_one.lua 1 hot 3600000000 3600000000
measure "token_bucket_one one key allowed" lua/token_bucket_one.lua 1 one 1 1000000000
measure "token_bucket_many 2 limits allowed" lua/token_bucket_many.lua 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' 1 1000000000 1 1000000000
measure "token_bucket_many 2 limits hot denied" lua/token_bucket_many.lua 2 '{hot}:a' '{hot}:b' 3600000000 3600000000 3600000000 3600000000
measure "token_bucket 2 limits allowed" "$s/token_bucket.lua" 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' t 1 1000000000 1 t 1 1000000000 1
measure "fixed_window allowed" "$s/fixed_window.lua" 1 'k:__rand_int__' f 1000000 1000000000 1
measure "fixed_window hot denied" "$s/fixed_window.lua" 1 hot f 3600000 1 1
measure "sliding_window allowed" "$s/sliding_window.lua" 1 'k:__rand_int__' s 1000000 1000000 1
measure "sliding_window hot denied" "$s/sliding_window.lua" 1 hot s 3600000 1 1
# One window alone, as RedisStore sends it since issue 15: its own script.
measure "fixed_window_one allowed" lua/fixed_window_one.lua 1 'k:__rand_int__' 1000000 1000000000 1
measure "fixed_window_one hot denied" lua/fixed_window_one.lua 1 hot 3600000 1 1
measure "fixed_window_one one key allowed" lua/fixed_window_one.lua 1 one 1000000 1000000000 1
measure "sliding_window_many 1 limit allowed" lua/sliding_window_many.lua 1 'k:__rand_int__' 1000000 1000000 1
measure "sliding_window_many 1 limit hot denied" lua/sliding_window_many.lua 1 hot 3600000 1 1
measure "sliding_window_many 1 limit one key allowed" lua/sliding_window_many.lua 1 one 1000000 1000000000 1
# Two limits of one window algorithm: through the driver, and their own script (issue 15).
measure "fixed_window 2 limits allowed" "$s/fixed_window.lua" 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' f 1000000 1000000000 1 f 1000000 1000000000 1
measure "fixed_window_many 2 limits allowed" lua/fixed_window_many.lua 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' 1000000 1000000000 1 1000000 1000000000 1
measure "fixed_window 2 limits hot denied" "$s/fixed_window.lua" 2 '{hot}:a' '{hot}:b' f 3600000 1 1 f 3600000 1 1
measure "fixed_window_many 2 limits hot denied" lua/fixed_window_many.lua 2 '{hot}:a' '{hot}:b' 3600000 1 1 3600000 1 1
measure "sliding_window 2 limits allowed" "$s/sliding_window.lua" 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' s 1000000 1000000 1 s 1000000 1000000 1
measure "sliding_window_many 2 limits allowed" lua/sliding_window_many.lua 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' 1000000 1000000 1 1000000 1000000 1
measure "sliding_window 2 limits hot denied" "$s/sliding_window.lua" 2 '{hot}:a' '{hot}:b' s 3600000 1 1 s 3600000 1 1
measure "sliding_window_many 2 limits hot denied" lua/sliding_window_many.lua 2 '{hot}:a' '{hot}:b' 3600000 1 1 3600000 1 1
measure "sliding_log allowed" "$s/sliding_log.lua" 1 'k:__rand_int__' l 1000000000 100 1
measure "sliding_log hot denied" "$s/sliding_log.lua" 1 hot l 3600000000 1 1
measure "token_bucket one key allowed" "$s/token_bucket.lua" 1 one t 1 1000000000 1
measure "fixed_window one key allowed" "$s/fixed_window.lua" 1 one f 1000000 1000000000 1
measure "sliding_window one key allowed" "$s/sliding_window.lua" 1 one s 1000000 1000000000 1
measure "sliding_log one key allowed" "$s/sliding_log.lua" 1 one l 1000000 100000 1
measure "mixed: token_bucket + fixed_window" "$s/mixed.lua" 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' t 1 1000000000 1 f 1000000 1000000000 1
# Stamped takes (Store::take: a direct take, a settling layer, a concurrency policy): the same
# scripts asked for the Redis time too, one more argument (issue 22).
measure "token_bucket allowed, stamped" "$s/token_bucket.lua" 1 'k:__rand_int__' t 1 1000000000 1 1
measure "fixed_window allowed, stamped" "$s/fixed_window.lua" 1 'k:__rand_int__' f 1000000 1000000000 1 1
measure "mixed: token_bucket + fixed_window, stamped" "$s/mixed.lua" 2 '{k:__rand_int__}:a' '{k:__rand_int__}:b' t 1 1000000000 1 f 1000000 1000000000 1 1
measure "gcra_float allowed" benches/lua/gcra_float.lua 1 'k:__rand_int__' 1000000000 1000000 1 1
measure "gcra_float hot denied" benches/lua/gcra_float.lua 1 hot 1 1 3600 1
measure "floor" benches/lua/floor.lua 1 'k:__rand_int__'
