#!/usr/bin/env bash
# minority fan-out benchmark: 1 000 subscribers on one key (see crates/polykv/examples/minority_fanout.rs),
# then the same fan-out through Redis PUBLISH/SUBSCRIBE on the same cores, as the machine's baseline.
#   scripts/bench-minority.sh [SUBSCRIBERS] [ROUNDS] [SECONDS]
#   scripts/bench-minority.sh 10000 50 3                    (10 000 subscribers: the fd limit is raised below)
#   FANOUT_TRACE=/tmp/fanout scripts/bench-minority.sh       (per-round timings in /tmp/fanout.polykv and .redis:
#                                                            µs to the set's reply, the first and the last copy)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/packages.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p polykv --bin polykv --example minority_fanout
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d); PORT=$(free_port)
taskset -c 0 target/release/polykv serve --data-dir "$WORK/data" --minority-port "$PORT" --max-connections $(( ${1:-1000} + 100 )) --admin-port "$(free_port)" \
  --nmdb-enabled false --nmdb-udp-enabled false --smalld-enabled false --opencluster-enabled false \
  --jsonkv-enabled false --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false --log-level warn & PID=$!
REDIS_PID=""
trap 'kill $PID $REDIS_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
taskset -c 1 target/release/examples/minority_fanout "127.0.0.1:$PORT" "${1:-1000}" "${2:-200}" "${3:-5}"
kill $PID; wait $PID 2>/dev/null || true
need_commands redis-server:redis-server
REDIS_PORT=$(free_port)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --maxclients 20000 \
  --logfile "$WORK/redis.log" & REDIS_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break; sleep 0.1; done
taskset -c 1 target/release/examples/minority_fanout redis "127.0.0.1:$REDIS_PORT" "${1:-1000}" "${2:-200}"
