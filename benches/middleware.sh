#!/usr/bin/env bash
# Middleware overhead: requests per second of one axum route without a limiter, with this
# crate's layer (in-memory store; with and without its RateLimit fields) and with
# tower_governor's (without and with its x-ratelimit fields, and with them keyed per client IP
# and endpoint as this crate's layer keys), under wrk (HTTP/1.1) or h2load
# (HTTP/2, cleartext) on loopback, in turn, ROUNDS times; prints every round and the medians.
#
#   bash benches/middleware.sh [rounds] [seconds]            # wrk -t1 -c64
#   CLIENT=h2load bash benches/middleware.sh [rounds] [seconds]  # h2load -c64 -m10
#
# Needs curl, and wrk or h2load (apt-get install curl wrk nghttp2-client). Servers: examples/bench_server.rs,
# built with --release.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
seconds=${2:-5}
client=${CLIENT:-wrk}
case $client in
  wrk) command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; } ;;
  h2load) command -v h2load >/dev/null || { echo "needs h2load: apt-get install nghttp2-client" >&2; exit 1; } ;;
  *) echo "CLIENT must be wrk or h2load" >&2; exit 2 ;;
esac
command -v curl >/dev/null || { echo "needs curl: apt-get install curl" >&2; exit 1; }
cargo build --release --example bench_server -q
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
modes="none tollgate tollgate-bare governor governor-headers governor-endpoint"
declare -A results
for round in $(seq "$rounds"); do
  for mode in $modes; do
    MODE=$mode LISTEN_ADDR=127.0.0.1:$port "$target/release/examples/bench_server" >/dev/null &
    pid=$!
    for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null || { echo "$mode did not listen within 10 s" >&2; kill "$pid"; exit 1; }
    # Each mode sends the fields it claims to (the peer's `use_headers` once silently did not).
    fields=$(curl -s -D - -o /dev/null "http://127.0.0.1:$port/" | tr -d '\r' | cut -d: -f1 | grep -i ratelimit | sort | paste -sd' ' || true)
    case $mode in
      tollgate) expected="ratelimit ratelimit-policy" ;;
      governor-headers | governor-endpoint) expected="x-ratelimit-limit x-ratelimit-remaining" ;;
      *) expected="" ;;
    esac
    if [[ $fields != "$expected" ]]; then
      echo "$mode answered with fields [$fields], expected [$expected]" >&2
      kill "$pid"; exit 1
    fi
    if [[ $client == wrk ]]; then
      rps=$(wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    else
      rps=$(h2load -t1 -c64 -m10 -D"$seconds" "http://127.0.0.1:$port/" |
        awk '/^finished in/ {print $4}')
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "round $round $mode $rps"
    results[$mode]+="$rps "
  done
done
for mode in $modes; do
  median=$(echo "${results[$mode]}" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "median $mode $median"
done
