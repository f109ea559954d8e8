#!/usr/bin/env bash
# Server crash test: mixed writes over nmdb (SYNC and normal), minority, smalld, OpenCluster
# (full wait and not) and jsonkv; SIGKILL the
# server at a random moment; restart it on the same data directory; check that every acknowledged
# write is there (with a value at least as new). Bounded: CYCLES cycles (default 20).
#   scripts/crash-server.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES="${1:-20}"
cargo build --release -q -p polykv --bin polykv --example crash_load
BIN="$PWD/target/release/polykv"; LOAD="$PWD/target/release/examples/crash_load"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d); ACKED="$WORK/acked.txt"; : > "$ACKED"
PID=""
trap '[ -n "$PID" ] && kill -9 $PID 2>/dev/null; rm -rf "$WORK"' EXIT
start() {
  NMDB=$(free_port); MINORITY=$(free_port); SMALLD=$(free_port); OC=$(free_port); JK=$(free_port); ADMIN=$(free_port)
  "$BIN" serve --data-dir "$WORK/data" --nmdb-port "$NMDB" --nmdb-udp-enabled false --minority-port "$MINORITY" \
    --smalld-port "$SMALLD" --smalld-secret-key 7 --smalld-request-log off --opencluster-port "$OC" \
    --jsonkv-port "$JK" --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false --admin-port "$ADMIN" --log-level error \
    2>>"$WORK/server.log" & PID=$!
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$SMALLD") 2>/dev/null && return; sleep 0.05; done
  echo "server did not start"; cat "$WORK/server.log"; exit 1
}
TOTAL=0
for cycle in $(seq "$CYCLES"); do
  start
  "$LOAD" write "127.0.0.1:$NMDB" "127.0.0.1:$MINORITY" "127.0.0.1:$SMALLD" 7 "127.0.0.1:$OC" "127.0.0.1:$JK" "$cycle" > "$WORK/cycle.txt" 2>/dev/null & LOADPID=$!
  sleep "0.$(( RANDOM % 9 + 1 ))"
  kill -9 $PID; wait $PID 2>/dev/null || true; PID=""
  wait $LOADPID 2>/dev/null || true
  TOTAL=$((TOTAL + $(wc -l < "$WORK/cycle.txt")))
  cat "$WORK/cycle.txt" >> "$ACKED"
  start
  if ! "$LOAD" verify "127.0.0.1:$NMDB" "127.0.0.1:$MINORITY" "127.0.0.1:$SMALLD" 7 "127.0.0.1:$OC" "127.0.0.1:$JK" < "$ACKED" > "$WORK/verify.txt" 2>&1; then
    cat "$WORK/verify.txt"; echo "crash-server: FAILED in cycle $cycle"; exit 1
  fi
  kill $PID; wait $PID 2>/dev/null || true; PID=""
done
echo "crash-server: $CYCLES SIGKILL cycles, $TOTAL acknowledged writes over nmdb (SYNC and normal), minority, smalld, OpenCluster and jsonkv, none lost"
