#!/usr/bin/env bash
# A/B of two polykv builds under the same load: both servers pinned to CPU 0, one load generator
# pinned to CPU 1 loading them in turn (A B, A B, ...), each build's rounds and median printed.
# Run it twice with the builds swapped: on a shared machine the first-loaded server can be
# ahead, and a 2 % difference needs about 8 rounds per order to show.
#
#   scripts/bench-ab.sh BIN_A BIN_B [DEPTH [GET_RATIO [SECONDS [ROUNDS [PROTOCOL]]]]]
#       defaults: depth 1, GET ratio 0.9, 3 s per run, 5 rounds, nmdb
#       PROTOCOL: nmdb, nmdb-cache, opencluster or jsonkv
#   SERVE_ARGS="--engine-log-mapped true" scripts/bench-ab.sh …   (extra `serve` flags, both)
#
# 50 connections, 100 000 keys of 16 bytes, 100-byte values, preloaded when GETs are asked for.
# Stops both servers (by pid) and removes their data when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
A=$1 B=$2 DEPTH=${3:-1} GET_RATIO=${4:-0.9} SECONDS_PER_RUN=${5:-3} ROUNDS=${6:-5} PROTOCOL=${7:-nmdb}
. scripts/lib/bench.sh
read -r -a EXTRA <<<"${SERVE_ARGS:-}"
start() {
  local bin=$1 name=$2 nmdb oc jsonkv admin
  nmdb=$(free_port); oc=$(free_port); jsonkv=$(free_port); admin=$(free_port)
  taskset -c "$SERVER_CPU" "$bin" serve --data-dir "$WORK/$name" --nmdb-port "$nmdb" --nmdb-udp-enabled false \
    --smalld-enabled false --minority-enabled false --opencluster-port "$oc" --jsonkv-port "$jsonkv" \
    --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false \
    --admin-port "$admin" --log-level warn "${EXTRA[@]}" 2>"$WORK/$name.log" & PIDS+=($!)
  case $PROTOCOL in
    nmdb|nmdb-cache) PORT=$nmdb ;;
    opencluster) PORT=$oc ;;
    jsonkv) PORT=$jsonkv ;;
    *) echo "unknown protocol $PROTOCOL" >&2; exit 2 ;;
  esac
  wait_port "$PORT"
}
start "$A" a; PORT_A=$PORT
start "$B" b; PORT_B=$PORT
PRELOAD=()
[ "$GET_RATIO" != 0 ] && PRELOAD=(--preload)
echo "a = $A, b = $B: $PROTOCOL, depth $DEPTH, GET ratio $GET_RATIO, $ROUNDS rounds of $SECONDS_PER_RUN s"
taskset -c "$CLIENT_CPU" "$A" bench --target "a=$PROTOCOL@127.0.0.1:$PORT_A" --target "b=$PROTOCOL@127.0.0.1:$PORT_B" \
  --connections 50 --depth "$DEPTH" --get-ratio "$GET_RATIO" --keys 100000 --key-size 16 --value-size 100 \
  --duration "$SECONDS_PER_RUN" --warmup 1 --rounds "$ROUNDS" "${PRELOAD[@]}" 2>/dev/null
