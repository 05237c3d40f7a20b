#!/usr/bin/env bash
# Instructions per request of the middleware benchmark's server (examples/bench_server.rs), per
# mode, counted by callgrind: the server runs under valgrind with wrk in front for a few
# seconds, and the instructions of the runtime's worker threads (every task they poll:
# connections, HTTP/2 streams) are divided by the requests the client completed. Instruction counts do not move with
# the machine's load, so a change of a few hundred instructions per request shows where the
# req/s of benches/middleware.sh is lost in noise.
#
#   bash benches/middleware_instructions.sh [seconds] [modes...]            # wrk, HTTP/1.1
#   CLIENT=h2load bash benches/middleware_instructions.sh [seconds] [modes...]  # HTTP/2
#
# Needs valgrind and wrk or h2load (apt-get install valgrind wrk nghttp2-client). Modes as in
# middleware.sh; default: none tollgate tollgate-bare governor governor-headers governor-endpoint.
# OUT=<dir> keeps each mode's callgrind output in <dir>/<mode>.out.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-4}
shift || true
modes=${*:-none tollgate tollgate-bare governor governor-headers governor-endpoint}
client=${CLIENT:-wrk}
case $client in
  wrk | h2load) ;;
  *) echo "CLIENT must be wrk or h2load" >&2; exit 2 ;;
esac
for tool in valgrind callgrind_annotate $client; do
  command -v $tool >/dev/null ||
    { echo "needs $tool: apt-get install valgrind wrk nghttp2-client" >&2; exit 1; }
done
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --example bench_server -q
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if [[ -n ${OUT:-} ]]; then
  dir=$OUT
  mkdir -p "$dir"
else
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
fi
for mode in $modes; do
  MODE=$mode LISTEN_ADDR=127.0.0.1:$port valgrind --tool=callgrind \
    --callgrind-out-file="$dir/$mode.out" "$target/release/examples/bench_server" \
    >/dev/null 2>"$dir/$mode.log" &
  pid=$!
  for _ in $(seq 600); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  if [[ $client == wrk ]]; then
    requests=$(wrk -t1 -c16 -d"${seconds}s" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
  else
    requests=$(h2load -t1 -c16 -m10 -D"$seconds" "http://127.0.0.1:$port/" |
      awk '/^requests:/ {print $8}')
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  serving=$(callgrind_annotate --inclusive=yes --threshold=100 "$dir/$mode.out" 2>/dev/null |
    awk '/multi_thread::worker::Context::run \[/ && !found {gsub(",", "", $1); print $1; found = 1}')
  echo "$mode $requests requests $((serving / requests)) instructions/request"
done
