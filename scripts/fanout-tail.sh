#!/usr/bin/env bash
# Where a minority fan-out round's time goes: the server's pass (its request read to its last
# push written, from the system calls' timestamps) against the client's latency (to the last
# copy read), round by round; then the same for Redis PUBLISH. Needs perf and root (tracepoints).
#   scripts/fanout-tail.sh [SUBSCRIBERS] [ROUNDS]                (defaults 1000, 200)
#   BIN=/path/to/polykv EXAMPLE=/path/to/minority_fanout scripts/fanout-tail.sh
# A subscriber whose push its own session sent (it was awake) or finished (a partial write) has
# one system call more or less and is left out of the server columns ("N subscriber sockets seen").
# Tracing every system call slows the server a little: compare the two targets, not these
# figures with bench-minority.sh's. (The example joins its subscribers 1 000 at a time: a
# 10 000-connection burst overflowed the accept queue, traced or not.)
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS="${1:-1000}"
ROUNDS="${2:-200}"
if [ -z "${BIN:-}" ] || [ -z "${EXAMPLE:-}" ]; then
  cargo build --release -q -p polykv --bin polykv --example minority_fanout
  BIN="$PWD/target/release/polykv"; EXAMPLE="$PWD/target/release/examples/minority_fanout"
fi
. scripts/lib/packages.sh
need_commands redis-server:redis-server perf:linux-perf
. scripts/lib/bench.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Runs the example against a server traced by perf; $1 the target's name, $2 the server's pid,
# $3 the send and $4 the receive system call, the rest the example's arguments.
traced() {
  local name=$1 pid=$2 send=$3 recv=$4; shift 4
  perf record -q -k CLOCK_MONOTONIC -e "syscalls:sys_enter_$send" -e "syscalls:sys_enter_$recv" \
    -p "$pid" -o "$WORK/$name.perf" 2>/dev/null & local perf=$!
  sleep 0.5
  FANOUT_TRACE="$WORK/trace" taskset -c $CLIENT_CPU "$EXAMPLE" "$@" 2>&1 | grep -v "^sustained"
  kill -INT "$perf"; wait "$perf" || true
  perf script -i "$WORK/$name.perf" -F time,event,trace 2>/dev/null | python3 -c '
import sys
for line in sys.stdin:
    p = line.split()
    print(p[0].rstrip(":"), "S" if sys.argv[1] in p[1] else "R", int(p[3].rstrip(","), 16))' "$send" >"$WORK/$name.events"
  python3 scripts/lib/fanout_tail.py "$WORK/$name.events" "$WORK/trace.$name" "$ROUNDS"
}

PORT=$(free_port)
taskset -c $SERVER_CPU "$BIN" serve --data-dir "$WORK/data" --minority-port "$PORT" \
  --max-connections $((SUBSCRIBERS + 100)) --admin-port "$(free_port)" --log-level warn \
  --nmdb-enabled false --nmdb-udp-enabled false --smalld-enabled false --opencluster-enabled false \
  --jsonkv-enabled false --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false &
POLYKV=$!; PIDS+=($POLYKV)
wait_port "$PORT"
echo "## polykv minority set"
traced polykv "$POLYKV" sendto recvfrom "127.0.0.1:$PORT" "$SUBSCRIBERS" "$ROUNDS" 1
kill "$POLYKV"; wait "$POLYKV" 2>/dev/null || true

REDIS_PORT=$(free_port)
taskset -c $SERVER_CPU redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --maxclients $((SUBSCRIBERS + 1000)) --logfile "$WORK/redis.log" --dir "$WORK" &
REDIS=$!; PIDS+=($REDIS)
wait_port "$REDIS_PORT"
echo; echo "## Redis PUBLISH"
traced redis "$REDIS" write read redis "127.0.0.1:$REDIS_PORT" "$SUBSCRIBERS" "$ROUNDS"
