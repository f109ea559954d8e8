#!/usr/bin/env bash
# Side-by-side throughput of polykv (nmdb and OpenCluster protocols), memcached and Redis under the
# same load.
#
#   scripts/bench-compare.sh [SECONDS_PER_RUN [ROUNDS]]     (defaults 3 and 3)
#   ONLY='SET' scripts/bench-compare.sh 3 3                  (only scenarios whose title matches)
#
# Installs memcached and redis-server from Debian if missing, starts all three on free loopback
# ports pinned to CPU 0, runs the load generator pinned to CPU 1, prints one ratio table per
# scenario (ratios relative to polykv), and stops every process it started. Scenarios: 100-byte
# values; 50 connections at depth 1 and 16 (GET, SET, 90/10, durable SET); 1 connection at depth
# 1 and 16 (GET, SET). polykv is measured in three ways: nmdb normal requests (every SET written
# through to the store), nmdb CACHE_ONLY requests (`polykv-cache`: in memory only, like memcached
# and Redis without persistence), and OpenCluster (`polykv-oc`). Every scenario runs ROUNDS rounds
# of all its targets in turn (A B C, A B C, ...) and reports each target's median round: on a
# shared machine a single run of one server can be off by tens of percent.
# Durable writes are compared with peers that make the same promise: `redis-aof` (appendonly,
# appendfsync everysec: in the OS buffers at the reply, like polykv's normal writes) and
# `redis-always` (appendfsync always: fsynced, like nmdb SYNC and OpenCluster full wait). The
# durable scenario also loads three floors (crates/polykv/examples/durable_floor.rs): servers that
# only decode, append, group-commit and answer — `floor-thread` syncing on a persister thread as
# polykv does, `floor-inline` syncing on the serving thread once per loop turn as Redis does,
# `floor-uring` with one O_DIRECT + RWF_DSYNC write per group through io_uring, completed on the
# serving thread's event loop (no second thread).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-3}"
ROUNDS="${2:-3}"

. scripts/lib/packages.sh
need_commands memcached:memcached redis-server:redis-server
cargo build --release -q -p polykv --bin polykv --example durable_floor
BIN="$PWD/target/release/polykv"
FLOOR="$PWD/target/release/examples/durable_floor"

. scripts/lib/bench.sh

NMDB_PORT=$(free_port); OC_PORT=$(free_port); ADMIN_PORT=$(free_port); MC_PORT=$(free_port); REDIS_PORT=$(free_port)
AOF_PORT=$(free_port); ALWAYS_PORT=$(free_port); FLOOR_PORT=$(free_port); FLOOR_INLINE_PORT=$(free_port); FLOOR_URING_PORT=$(free_port)
ONLY="${ONLY:-}"
taskset -c $SERVER_CPU "$BIN" serve --data-dir "$WORK/polykv" --nmdb-port "$NMDB_PORT" --nmdb-udp-enabled false --smalld-enabled false --minority-enabled false \
  --opencluster-port "$OC_PORT" --jsonkv-enabled false --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false --admin-port "$ADMIN_PORT" --log-level warn 2>"$WORK/polykv.log" & PIDS+=($!)
taskset -c $SERVER_CPU memcached -p "$MC_PORT" -U 0 -l 127.0.0.1 -t 1 -m 1024 -u root & PIDS+=($!)
taskset -c $SERVER_CPU redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --logfile "$WORK/redis.log" & PIDS+=($!)
mkdir -p "$WORK/aof" "$WORK/always"
taskset -c $SERVER_CPU redis-server --port "$AOF_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
  --dir "$WORK/aof" --logfile "$WORK/redis-aof.log" & PIDS+=($!)
taskset -c $SERVER_CPU redis-server --port "$ALWAYS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
  --dir "$WORK/always" --logfile "$WORK/redis-always.log" & PIDS+=($!)
# The durable floor: only decode, append, group fdatasync, answer (crates/polykv/examples/durable_floor.rs).
taskset -c $SERVER_CPU "$FLOOR" "127.0.0.1:$FLOOR_PORT" "$WORK/floor.log" thread & PIDS+=($!)
taskset -c $SERVER_CPU "$FLOOR" "127.0.0.1:$FLOOR_INLINE_PORT" "$WORK/floor-inline.log" inline & PIDS+=($!)
taskset -c $SERVER_CPU "$FLOOR" "127.0.0.1:$FLOOR_URING_PORT" "$WORK/floor-uring.log" uring & PIDS+=($!)
for port in "$NMDB_PORT" "$OC_PORT" "$MC_PORT" "$REDIS_PORT" "$AOF_PORT" "$ALWAYS_PORT" "$FLOOR_PORT" "$FLOOR_INLINE_PORT" "$FLOOR_URING_PORT"; do
  wait_port "$port" || true
done

echo "# polykv vs memcached vs Redis — $(date -u +%Y-%m-%d), $(nproc) cores, servers on CPU $SERVER_CPU, load on CPU $CLIENT_CPU"
echo "memcached $(memcached -V | cut -d' ' -f2), $(redis-server --version | cut -d' ' -f3), polykv $("$BIN" --version | cut -d' ' -f2)"
COMMON=(--keys 100000 --key-size 16 --value-size 100 --duration "$SECONDS_PER_RUN" --warmup 1 --rounds "$ROUNDS")
run() {
  local title=$1; shift
  [[ -z "$ONLY" || "$title" =~ $ONLY ]] || return 0
  echo
  echo "## $title"
  echo
  echo "\`polykv bench ${COMMON[*]} $*\`"
  echo
  taskset -c $CLIENT_CPU "$BIN" bench "${COMMON[@]}" "$@" 2>/dev/null
}
TARGETS=(--target "polykv=nmdb@127.0.0.1:$NMDB_PORT" --target "polykv-cache=nmdb-cache@127.0.0.1:$NMDB_PORT" --target "polykv-oc=opencluster@127.0.0.1:$OC_PORT" --target "memcached=memcached@127.0.0.1:$MC_PORT" --target "redis=redis@127.0.0.1:$REDIS_PORT" --target "redis-aof=redis@127.0.0.1:$AOF_PORT")
for depth in 1 16; do
  run "GET only, depth $depth" "${TARGETS[@]}" --connections 50 --depth $depth --get-ratio 1 --preload
  run "SET only, depth $depth" "${TARGETS[@]}" --connections 50 --depth $depth --get-ratio 0
  run "90% GET / 10% SET, depth $depth" "${TARGETS[@]}" --connections 50 --depth $depth --get-ratio 0.9
  run "polykv SET with SYNC / full wait (durable, group commit), depth $depth" --target "polykv-sync=nmdb@127.0.0.1:$NMDB_PORT" \
    --target "polykv-oc-sync=opencluster@127.0.0.1:$OC_PORT" --connections 50 --depth $depth --get-ratio 0 --sync
done
run "Durable SET, 64 connections, depth 1 (polykv SYNC / full wait vs Redis appendfsync always)" \
  --target "polykv-sync=nmdb@127.0.0.1:$NMDB_PORT" --target "polykv-oc-sync=opencluster@127.0.0.1:$OC_PORT" \
  --target "redis-always=redis@127.0.0.1:$ALWAYS_PORT" --target "floor-thread=nmdb@127.0.0.1:$FLOOR_PORT" \
  --target "floor-inline=nmdb@127.0.0.1:$FLOOR_INLINE_PORT" --target "floor-uring=nmdb@127.0.0.1:$FLOOR_URING_PORT" \
  --connections 64 --depth 1 --get-ratio 0 --sync
for depth in 1 16; do
  run "One connection: GET only, depth $depth" "${TARGETS[@]}" --connections 1 --depth $depth --get-ratio 1 --preload
  run "One connection: SET only, depth $depth" "${TARGETS[@]}" --connections 1 --depth $depth --get-ratio 0
done
