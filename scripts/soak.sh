#!/usr/bin/env bash
# Soak: hours of load compressed into a bounded run, with connection churn, checking that the
# server's memory and file descriptors stay flat.
#   scripts/soak.sh [SECONDS]      (default 600)
# Every 4 s a new `polykv bench` run opens 20 fresh nmdb connections (GET/SET mix over 50 000
# keys, a new seed each time) and another 10 fresh OpenCluster, 10 minority and 10 jsonkv connections, while
# smalld clients connect, write, read and disconnect in a loop. RSS and open descriptors of the server are sampled every 10 s. The run fails if the server
# dies, if RSS after the first minute grows by more than the cache budget plus the written data
# that may wait for a checkpoint (engine.max_backlog_bytes, 64 MiB here) and 64 MiB of slack, or
# if descriptors are not back to their level after the first minute once the load stops.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-600}"
cargo build --release -q -p polykv
BIN="$PWD/target/release/polykv"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
NMDB=$(free_port); SMALLD=$(free_port); MINORITY=$(free_port); OC=$(free_port); JK=$(free_port); ADMIN=$(free_port)
CACHE=$((64 << 20)); CHECKPOINT=$((16 << 20)); BACKLOG=$((64 << 20))
"$BIN" serve --data-dir "$WORK/data" --nmdb-port "$NMDB" --nmdb-udp-port "$NMDB" --smalld-port "$SMALLD" \
  --minority-port "$MINORITY" --opencluster-port "$OC" \
  --jsonkv-port "$JK" --jsonkv-udp-port "$(free_port)" --jsonkv-rpc-port "$(free_port)" --jsonkv-agent-port "$(free_port)" --admin-port "$ADMIN" --smalld-secret-key 7 --smalld-request-log off \
  --engine-cache-bytes "$CACHE" --engine-checkpoint-bytes "$CHECKPOINT" --engine-max-backlog-bytes "$BACKLOG" --log-level warn 2>"$WORK/server.log" & PID=$!
LOAD=()
cleanup() { kill "${LOAD[@]}" 2>/dev/null || true; kill $PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NMDB") 2>/dev/null && break; sleep 0.1; done

END=$((SECONDS + DURATION))
( while [ $SECONDS -lt $END ]; do
    "$BIN" bench --target "nmdb@127.0.0.1:$NMDB" --connections 20 --keys 50000 --get-ratio 0.7 \
      --duration 4 --warmup 0 --seed "$RANDOM" --json >/dev/null 2>&1 || true
  done ) & LOAD+=($!)
( while [ $SECONDS -lt $END ]; do
    "$BIN" bench --target "opencluster@127.0.0.1:$OC" --target "minority@127.0.0.1:$MINORITY" \
      --target "jsonkv@127.0.0.1:$JK" --connections 10 \
      --keys 50000 --get-ratio 0.7 --duration 2 --warmup 0 --seed "$RANDOM" --json >/dev/null 2>&1 || true
  done ) & LOAD+=($!)
( i=0; while [ $SECONDS -lt $END ]; do
    i=$((i + 1))
    "$BIN" set "s$((i % 500))" "value $i" --proto smalld --addr "127.0.0.1:$SMALLD" --secret-key 7 >/dev/null 2>&1 || true
    "$BIN" get "s$((i % 500))" --proto smalld --addr "127.0.0.1:$SMALLD" --secret-key 7 >/dev/null 2>&1 || true
  done ) & LOAD+=($!)

sample() { echo "$(( $(awk '/VmRSS/ {print $2}' /proc/$PID/status) / 1024 )) $(ls /proc/$PID/fd | wc -l)"; }
echo "seconds rss_mib fds"
START=$SECONDS
FIRST_RSS=""; BASE_FDS=""; MAX_RSS=0
while [ $SECONDS -lt $END ]; do
  sleep 10
  read -r RSS FDS <<<"$(sample)"
  echo "$((SECONDS - START)) $RSS $FDS"
  if [ -z "$FIRST_RSS" ] && [ $((SECONDS - START)) -ge 60 ]; then FIRST_RSS=$RSS; BASE_FDS=$FDS; fi
  if [ "$RSS" -gt "$MAX_RSS" ]; then MAX_RSS=$RSS; fi
done
kill "${LOAD[@]}" 2>/dev/null || true; wait "${LOAD[@]}" 2>/dev/null || true
sleep 2
read -r END_RSS END_FDS <<<"$(sample)"
STATS=$(curl -s "127.0.0.1:$ADMIN/api/stats" || true)
echo "after the first minute: rss ${FIRST_RSS:-n/a} MiB, fds ${BASE_FDS:-n/a}; max rss $MAX_RSS MiB; after the load: rss $END_RSS MiB, fds $END_FDS"
echo "engine: $STATS"
FAIL=0
if [ -n "$FIRST_RSS" ] && [ $((MAX_RSS - FIRST_RSS)) -gt $(( (CACHE >> 20) + (BACKLOG >> 20) + 64 )) ]; then echo "FAIL: memory grew"; FAIL=1; fi
# Table files come and go with compaction; connections must all be gone.
if [ -n "$BASE_FDS" ] && [ "$END_FDS" -gt $((BASE_FDS + 8)) ]; then echo "FAIL: descriptors leaked"; FAIL=1; fi
kill -0 $PID || { echo "FAIL: server died"; FAIL=1; }
[ $FAIL = 0 ] && echo "soak: passed"
exit $FAIL
