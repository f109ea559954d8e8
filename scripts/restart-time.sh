#!/usr/bin/env bash
# Restart time after a SIGKILL under write load: loads ITEMS 100-byte items over nmdb, starts a
# SET load, kills the server in the middle of it, restarts it on the same data directory and
# reports how long until a GET is answered, and what the restart replayed.
#
#   scripts/restart-time.sh [ITEMS]      (default 10000000; about 1 minute per million items)
#
# The server runs on CPU 0 and the load on CPU 1, as in bench-compare.sh. Every process it
# starts is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ITEMS="${1:-10000000}"
cargo build --release -q -p polykv
BIN="$PWD/target/release/polykv"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); ADMIN=$(free_port)
serve() {
  taskset -c 0 "$BIN" serve --data-dir "$WORK/data" --nmdb-port "$PORT" --admin-port "$ADMIN" \
    --nmdb-udp-enabled false --smalld-enabled false --minority-enabled false --opencluster-enabled false \
    --jsonkv-enabled false --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false \
    --log-level info 2>>"$WORK/server.log" &
  SERVER=$!
  PIDS+=("$SERVER")
}
wait_for_get() {
  for _ in $(seq 6000); do
    if "$BIN" get --addr "127.0.0.1:$PORT" --timeout 1 restart-probe >/dev/null 2>&1; then return 0; fi
    sleep 0.005
  done
  echo "server did not answer" >&2
  return 1
}
serve
for _ in $(seq 1000); do
  "$BIN" set --addr "127.0.0.1:$PORT" --timeout 1 restart-probe ok >/dev/null 2>&1 && break
  sleep 0.01
done
echo "loading $ITEMS items of 100 bytes..."
started=$(date +%s.%N)
taskset -c 1 "$BIN" bench --target "nmdb@127.0.0.1:$PORT" --keys "$ITEMS" --key-size 16 --value-size 100 \
  --connections 50 --depth 16 --get-ratio 1 --preload --duration 1 --warmup 0 >/dev/null 2>&1
echo "loaded in $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s"
taskset -c 1 "$BIN" bench --target "nmdb@127.0.0.1:$PORT" --keys "$ITEMS" --key-size 16 --value-size 100 \
  --connections 50 --depth 16 --get-ratio 0 --duration 30 --warmup 0 >/dev/null 2>&1 &
LOAD=$!
PIDS+=("$LOAD")
sleep 5
kill -9 "$SERVER"
wait "$SERVER" 2>/dev/null || true
kill "$LOAD" 2>/dev/null || true
echo "data directory after the kill: $(du -sh "$WORK/data" | cut -f1) (log: $(du -sh "$WORK/data/store/log" | cut -f1))"
started=$(date +%s.%N)
serve
wait_for_get
echo "restart after SIGKILL under write load: first GET answered $(python3 -c "print(round($(date +%s.%N) - $started, 2))") s after start"
grep -E "replayed the log" "$WORK/server.log" | tail -1 || true
