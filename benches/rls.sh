#!/usr/bin/env bash
# tollgate-rls under load (issue 25's targets): two tollgate-rls instances (release builds) on
# one Redis this script starts on loopback, driven by benches/rls_load.rs (64 gRPC clients,
# half to each instance), each case with TOLLGATE_LEASES off and on, in the same run:
#   hot:   one descriptor, 100,000 a MINUTE, asked by every client: decisions per second,
#          Redis commands per decision (INFO commandstats) and the most admitted in any minute
#          window across both instances (must never pass 100,000);
#   cold:  a user among a million per request (each asked about once): calls per decision
#          as without leases.
# Leases off is envoyproxy/ratelimit's own counting (INCRBY + EXPIRE pipelined per decision):
# the peer's Redis cost, measured here; the peer's Go binary itself is not available offline.
#
#   bash benches/rls.sh [seconds] [clients]      (default 10 s per case, 64 clients)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
seconds=${1:-10}
clients=${2:-64}
need redis-server redis-cli python3
cargo build -q --release --features rls --bin tollgate-rls
cargo bench -q --features rls --bench rls_load --no-run 2>/dev/null
load() { cargo bench -q --features rls --bench rls_load -- "$@"; }
bin=$(target_dir)/release
dir=$(mktemp -d)
trap cleanup EXIT
port=$(free_port)
start_redis "$port"
url="redis://127.0.0.1:$port/"
mkdir -p "$dir/runtime/config"
cat >"$dir/runtime/config/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: hot
    rate_limit: { unit: minute, requests_per_unit: 100000 }
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 10 }
YAML

# start NAME LEASES: a tollgate-rls instance; sets `grpc` to its gRPC address.
start() {
  local out=$dir/$1.out
  env -i PATH="$PATH" HOST=127.0.0.1 PORT=0 GRPC_HOST=127.0.0.1 GRPC_PORT=0 DEBUG_HOST=127.0.0.1 \
    DEBUG_PORT=0 RUNTIME_ROOT="$dir/runtime" RUNTIME_WATCH_ROOT=false REDIS_SOCKET_TYPE=tcp \
    REDIS_URL="127.0.0.1:$port" TOLLGATE_LEASES="$2" LOG_LEVEL=warn \
    "$bin/tollgate-rls" >"$out" 2>"$dir/$1.log" &
  pids+=($!)
  echo $! >"$dir/$1.pid"
  for _ in $(seq 200); do
    grpc=$(sed -n "s/^Listening for gRPC on '\(.*\)'$/\1/p" "$out")
    [[ -n $grpc ]] && return
    sleep 0.05
  done
  echo "$1 did not start: $(cat "$dir/$1.log")" >&2
  return 1
}

stop() {
  local pid
  pid=$(cat "$dir/$1.pid")
  kill -TERM "$pid" 2>/dev/null || true
  # It gives back its leases and exits; after 30 s it is killed.
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  echo "$1 did not exit within 30 s of SIGTERM: killed" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

echo "tollgate-rls: ${seconds}s per case, $clients clients, two instances on Redis 127.0.0.1:$port"
status=0
for descriptor in hot cold; do
  for leases in false true; do
    start a "$leases"; a=$grpc
    start b "$leases"; b=$grpc
    result=$(load --grpc "$a" --grpc "$b" --redis "$url" --clients "$clients" \
      --seconds "$seconds" --descriptor "$descriptor")
    stop a
    stop b
    python3 - "$descriptor" "$leases" "$result" <<'PY' || status=1
import json, sys
name, leases, line = sys.argv[1:]
r = json.loads(line)
print(f"{name:<5} leases {'on ' if leases == 'true' else 'off'}  decisions/s {r['decisions_per_s']:>8}  "
      f"decisions {r['decisions']:>8}  admitted {r['admitted']:>8}  errors {r['errors']}  "
      f"redis commands/decision {r['commands_per_decision']:.4f}  "
      f"most admitted in a minute window {r['most_admitted_in_a_window']} (windows {r['windows']})")
if name == "hot" and r["most_admitted_in_a_window"] > 100000:
    print("  OVER THE LIMIT", file=sys.stderr)
    sys.exit(1)
PY
  done
done
exit $status
