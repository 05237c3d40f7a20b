#!/usr/bin/env bash
# The test command (README, "The two commands"): the whole suite, on a fresh Debian or Ubuntu
# machine that has only Rust. The tests start their own redis-server processes and drive
# headless Chromium; what is missing is installed with apt-get when this runs as root, and
# otherwise named with the command that installs it. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ||
  missing+=(chromium)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "the tests need: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install ${missing[*]}  (macOS: brew install redis chromium)" >&2
    exit 1
  fi
fi
# Every feature: the Envoy service (`rls`) is not a default one.
exec cargo test --all-features "$@"
