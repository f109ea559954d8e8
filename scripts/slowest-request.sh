#!/usr/bin/env bash
# The slowest requests of a write load: ROUNDS runs, each against a fresh polykv (nmdb only, its
# own empty data directory, pinned to one core), SET at depth 1 from 50 connections, 100-byte
# values. Prints, per run, ops/s, p99, p99.9 and max latency (µs) and the server's CPU per
# request. Fresh servers, because the tail comes from what grows: the log's pages, the cache and
# memtable tables.
#
#   scripts/slowest-request.sh [ROUNDS] [KEYS] [SECONDS]      (defaults 3 100000 5)
#
# BIN=path runs another build; SERVER_ENV="VAR=value …" is passed to the server (for example
# POLYKV_LOG_MAP=0, POLYKV_ENGINE_LOG_SEGMENT_BYTES=8388608); extra bench flags go in BENCH_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
KEYS="${2:-100000}"
SECONDS_EACH="${3:-5}"
. scripts/lib/bench.sh
release_bin
echo "| run | ops/s | p99 µs | p99.9 µs | max µs | server CPU µs/op |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  P=$(free_port)
  DATA="$WORK/data$round"
  # shellcheck disable=SC2086 # SERVER_ENV holds several VAR=value words
  env ${SERVER_ENV:-} taskset -c "$SERVER_CPU" "$BIN" serve --data-dir "$DATA" --nmdb-port "$P" \
    --nmdb-udp-enabled false --admin-enabled false --minority-enabled false \
    --opencluster-enabled false --smalld-enabled false --jsonkv-enabled false \
    --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false \
    --log-level warn &
  PID=$!; PIDS+=("$PID"); wait_port "$P"
  # shellcheck disable=SC2086 # BENCH_ARGS holds several flags
  taskset -c "$CLIENT_CPU" "$BIN" bench --target "nmdb@127.0.0.1:$P" --keys "$KEYS" --key-size 16 \
    --value-size 100 --connections 50 --depth 1 --get-ratio 0 --duration "$SECONDS_EACH" \
    --warmup 1 --json ${BENCH_ARGS:-} 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)[0]
l = r["latency_us"]
print("| %s | %d | %.0f | %.0f | %.0f | %.2f |" % (sys.argv[1], r["ops_per_sec"], l["p99"], l["p999"], l["max"], r["server_cpu_us_per_op"]))
' "$round"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  rm -rf "$DATA"
done
