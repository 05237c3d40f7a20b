#!/usr/bin/env bash
# Redis memory per bucket, for each algorithm, as MEMORY USAGE reports it after the bucket's
# whole capacity was taken by requests of cost 1 (the most a bucket ever holds), at a few
# capacities.
#
#   bash benches/redis_memory.sh
#
# Starts its own redis-server on a loopback port (no persistence) and stops it at the end. The
# key is a typical one: tollgate:{alice:GET:/users/%7Bid%7D}:default (44 bytes) and the
# algorithm's suffix.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'kill "$(cat "$dir/redis.pid")"; rm -rf "$dir"' EXIT
cli() { redis-cli -p "$port" "$@"; }
until cli PING >/dev/null 2>&1; do sleep 0.05; done

key='tollgate:{alice:GET:/users/%7Bid%7D}:default'
printf '%-16s %8s %10s\n' algorithm capacity bytes
for capacity in 10 100 1000; do
  for a in token_bucket fixed_window sliding_window sliding_log; do
    sha=$(cli SCRIPT LOAD "$(cat "lua/$a.lua" lua/decide.lua)")
    case $a in
      # A token an hour, so none comes back during the run.
      token_bucket) k=$key args=(t 3600000000 "$((capacity * 3600000000))" 1) ;;
      fixed_window) k=$key:fw args=(f 3600000 "$capacity" 1) ;;
      sliding_window) k=$key:sw args=(s 3600000 "$capacity" 1) ;;
      sliding_log) k=$key:sl args=(l 3600000000 "$capacity" 1) ;;
    esac
    cli FLUSHALL >/dev/null
    redis-benchmark -p "$port" -n "$capacity" -c 1 -q EVALSHA "$sha" 1 "$k" "${args[@]}" >/dev/null
    printf '%-16s %8s %10s\n' "$a" "$capacity" "$(cli MEMORY USAGE "$k" SAMPLES 0)"
  done
done
