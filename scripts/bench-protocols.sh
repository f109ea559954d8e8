#!/usr/bin/env bash
# Every protocol's GET against one polykv (nmdb, OpenCluster, minority and jsonkv on one server
# process), under the same load: the #19 goal "each within 0.9x of nmdb GET at the same depth".
#
#   scripts/bench-protocols.sh [SECONDS_PER_RUN [ROUNDS [DEPTHS]]]   (defaults 3, 3, "16 1")
#   BIN=/path/to/polykv scripts/bench-protocols.sh                  (another build)
#
# The server is pinned to CPU 0, the load generator to CPU 1; 50 connections, 100 000 keys of
# 16 bytes, 100-byte values, every key preloaded. Each depth runs ROUNDS rounds of the four
# targets in turn and reports each one's median round, with the server's CPU time per request.
# A last pass measures the load generator's own CPU time per GET, protocol by protocol (one
# round, depth 16): if it comes near the time between two requests, the load generator, not the
# server, sets the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-3}"
ROUNDS="${2:-3}"
DEPTHS="${3:-16 1}"
. scripts/lib/bench.sh
release_bin

NMDB=$(free_port); OC=$(free_port); MIN=$(free_port); JKV=$(free_port); ADMIN=$(free_port)
taskset -c $SERVER_CPU "$BIN" serve --data-dir "$WORK/polykv" --admin-port "$ADMIN" --log-level warn \
  --nmdb-port "$NMDB" --nmdb-udp-enabled false --smalld-enabled false \
  --minority-port "$MIN" --opencluster-port "$OC" --jsonkv-port "$JKV" \
  --jsonkv-udp-enabled false --jsonkv-rpc-enabled false --jsonkv-agent-enabled false \
  2>"$WORK/polykv.log" & PIDS+=($!)
for port in "$NMDB" "$OC" "$MIN" "$JKV"; do
  wait_port "$port" || true
done

TARGETS=(--target "nmdb=nmdb@127.0.0.1:$NMDB" --target "opencluster=opencluster@127.0.0.1:$OC"
  --target "minority=minority@127.0.0.1:$MIN" --target "jsonkv=jsonkv@127.0.0.1:$JKV")
COMMON=(--keys 100000 --key-size 16 --value-size 100 --get-ratio 1 --preload --warmup 1)
echo "# Every protocol's GET on one polykv — $(date -u +%Y-%m-%d), server on CPU $SERVER_CPU, load on CPU $CLIENT_CPU"
for depth in $DEPTHS; do
  echo
  echo "## GET, depth $depth"
  echo
  echo "\`polykv bench ${COMMON[*]} --depth $depth --duration $SECONDS_PER_RUN --rounds $ROUNDS\`"
  echo
  taskset -c $CLIENT_CPU "$BIN" bench "${COMMON[@]}" --depth "$depth" --duration "$SECONDS_PER_RUN" \
    --rounds "$ROUNDS" "${TARGETS[@]}" 2>/dev/null
done

echo
echo "## The load generator's CPU per GET (depth 16, one round each)"
echo
echo "| protocol | ops/s | load generator µs/op |"
echo "|---|---|---|"
for target in "${TARGETS[@]}"; do
  [ "$target" = --target ] && continue
  name=${target%%=*}
  json="$WORK/$name.json"
  # user + system seconds of the load generator, from /usr/bin/time's format.
  /usr/bin/time -f "%U %S" -o "$WORK/$name.time" taskset -c $CLIENT_CPU "$BIN" bench \
    --keys 100000 --key-size 16 --value-size 100 --get-ratio 1 --warmup 0 --depth 16 \
    --duration "$SECONDS_PER_RUN" --json --target "$target" >"$json" 2>/dev/null
  python3 - "$json" "$WORK/$name.time" "$name" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
report = report[0] if isinstance(report, list) else report
user, system = map(float, open(sys.argv[2]).read().split()[-2:])
print(f"| {sys.argv[3]} | {report['ops_per_sec']/1000:.1f} k | {(user + system) * 1e6 / report['requests']:.2f} |")
EOF
done
