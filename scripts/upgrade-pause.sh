#!/usr/bin/env bash
# Hot upgrade pause and time as the number of open connections grows: for each COUNT, starts the
# release server, opens COUNT idle nmdb connections and 4 busy ones (crates/polykv/examples/
# upgrade_pause.rs), runs `polykv upgrade` (the same binary) and reports the upgrade's time, the
# longest wait a busy client saw, and the old process's own timings from its log (stopped_ms: from
# stopping the sessions to the commit; total_ms: from starting the new binary).
#
#   scripts/upgrade-pause.sh [COUNT...]      (default 100 1000 5000 10000)
#
# The fd limit is raised as far as the hard limit allows (10 000 connections need about 10 100 in
# each process). Every server it starts is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("$@"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(100 1000 5000 10000)
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p polykv --bin polykv --example upgrade_pause
BIN="${BIN:-$PWD/target/release/polykv}"   # BIN=... to measure another build
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for count in "${COUNTS[@]}"; do
  DATA="$WORK/data-$count"; LOG="$WORK/server-$count.log"
  PORT=$(free_port)
  "$BIN" serve --data-dir "$DATA" --nmdb-port "$PORT" --nmdb-udp-enabled false --admin-port "$(free_port)" \
    --max-connections 20000 --smalld-enabled false --minority-enabled false --opencluster-enabled false \
    --jsonkv-enabled false --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false \
    --log-level info 2>>"$LOG" &
  PIDS+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  target/release/examples/upgrade_pause "$BIN" "$DATA" "127.0.0.1:$PORT" "$count"
  grep -E "upgrade: " "$LOG" | sed -E "s/^[0-9-]+T([0-9:.]+)Z +INFO [a-z_:]+: /   \1 /"
  # The new process is not our child: stop it by the pid in the lock file.
  NEW=$(cat "$DATA/polykv.lock"); PIDS+=("$NEW")
  kill "$NEW" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$NEW" 2>/dev/null || break; sleep 0.1; done
done
