#!/usr/bin/env bash
# Resident memory after loading ITEMS 100-byte items (16-byte keys) into polykv (nmdb, default
# settings), memcached 1.6 (-m 1024) and Redis 7 (no persistence), one after the other, each
# through the load generator's preload. Prints each server's VmRSS once the load is done.
#
#   scripts/memory-compare.sh [ITEMS]      (default 1000000)
#
# Installs memcached and redis-server from Debian if missing; stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ITEMS="${1:-1000000}"
. scripts/lib/packages.sh
need_commands memcached:memcached redis-server:redis-server
cargo build --release -q -p polykv
BIN="$PWD/target/release/polykv"
. scripts/lib/bench.sh
measure() {
  local name=$1 pid=$2 target=$3
  taskset -c 1 "$BIN" bench --target "$target" --keys "$ITEMS" --key-size 16 --value-size 100 \
    --connections 50 --depth 16 --get-ratio 1 --preload --duration 1 --warmup 0 >/dev/null 2>&1
  sleep 3
  echo "| $name | $(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$pid/status") MiB |"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}
echo "| server ($ITEMS items of 100 bytes) | resident |"
echo "|---|---|"
P=$(free_port); A=$(free_port)
taskset -c 0 "$BIN" serve --data-dir "$WORK/polykv" --nmdb-port "$P" --admin-port "$A" --nmdb-udp-enabled false \
  --smalld-enabled false --minority-enabled false --opencluster-enabled false --jsonkv-enabled false \
  --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false --log-level warn &
PID=$!; PIDS+=("$PID"); wait_port "$P"
measure "polykv $("$BIN" --version | cut -d' ' -f2)" "$PID" "nmdb@127.0.0.1:$P"
P=$(free_port)
taskset -c 0 memcached -p "$P" -U 0 -l 127.0.0.1 -t 1 -m 1024 -u root & PID=$!; PIDS+=("$PID"); wait_port "$P"
measure "memcached $(memcached -V | cut -d' ' -f2)" "$PID" "memcached@127.0.0.1:$P"
P=$(free_port)
taskset -c 0 redis-server --port "$P" --bind 127.0.0.1 --save "" --appendonly no --logfile "$WORK/redis.log" &
PID=$!; PIDS+=("$PID"); wait_port "$P"
measure "redis $(redis-server --version | cut -d' ' -f3)" "$PID" "redis@127.0.0.1:$P"
