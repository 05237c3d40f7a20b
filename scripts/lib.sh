# What the scripts that start their own Redis share (scripts/soak.sh, scripts/pressure.sh,
# benches/redis_script.sh, benches/redis_memory.sh). Source it; it expects `dir` (a temporary
# directory) and fills `pids` with what `cleanup` stops.

pids=()

# need TOOL…: exits, saying how to install them, when a tool is missing.
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null ||
      { echo "needs $tool: apt-get install redis-server curl python3" >&2; exit 1; }
  done
}

# Builds the example server and the load test (SOAK_PROFILE=release to optimize) and sets
# `bin` to where they are.
build_examples() {
  local profile=${SOAK_PROFILE:-debug}
  if [[ $profile == release ]]; then
    cargo build -q --release --example server --example loadtest
  else
    cargo build -q --example server --example loadtest
  fi
  bin=$(target_dir)/$profile/examples
}

# The target directory cargo builds into (CARGO_TARGET_DIR, a config file, or ./target).
target_dir() {
  cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_redis PORT [redis-server options…]: a daemonized redis-server on loopback, in `dir`.
start_redis() {
  local port=$1
  shift
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@"
  until redis-cli -p "$port" PING 2>/dev/null | grep -q PONG; do sleep 0.05; done
}

# start_server NAME [VAR=value…]: the example server with that environment (on a free port,
# fail open, warnings only, unless set); prints its address once it listens, and writes its
# pid to `dir`/NAME.pid.
start_server() {
  local name=$1 out=$dir/$1.out
  shift
  env LISTEN_ADDR=127.0.0.1:0 FAIL_MODE=open RUST_LOG=warn "$@" \
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
  return 1
}

# Resident memory of process PID, in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# at SECONDS: sleeps until SECONDS after `start` (set `start=$(date +%s.%N)` first), so that
# work done each second does not make the schedule drift.
at() {
  local left
  left=$(awk -v s="$start" -v t="$1" -v now="$(date +%s.%N)" 'BEGIN { d = s + t - now; print (d > 0 ? d : 0) }')
  sleep "$left"
}

# The value of FIELD in the load test's JSON line TEXT.
json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# Whether A < B × FACTOR (numbers).
below() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { exit !(a < b * f) }'; }

cleanup() {
  [[ -e $dir/redis.pid ]] && kill -CONT "$(cat "$dir/redis.pid")" 2>/dev/null
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -n ${port:-} ]] && redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1
  wait 2>/dev/null || true
  rm -rf "$dir"
}
