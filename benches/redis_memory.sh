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
source scripts/lib.sh
need redis-server redis-cli redis-benchmark python3
dir=$(mktemp -d)
trap cleanup EXIT
port=$(free_port)
start_redis "$port" --appendonly no
cli() { redis-cli -p "$port" "$@"; }

key='tollgate:{alice:GET:/users/%7Bid%7D}:default'
printf '%-16s %8s %10s\n' algorithm capacity bytes
for capacity in 10 100 250; do
  for a in token_bucket fixed_window sliding_window sliding_log; do
    sha=$(cli SCRIPT LOAD "$(echo "local read_only = false"; cat "lua/$a.lua" lua/decide.lua)")
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
