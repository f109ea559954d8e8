#!/usr/bin/env bash
# Durable write throughput of a three-node cluster and the CPU it costs per write, for one or
# more builds of polykv in alternating rounds (A B A B ...), so builds compare in one run.
#
#   scripts/cluster-cpu.sh [SECONDS [ROUNDS [BINARY...]]]     (defaults 8, 3, target/release/polykv)
#   SYNC= scripts/cluster-cpu.sh ...                           (Async writes: no fsync anywhere)
#
# Each round starts three fresh nodes (nmdb only) on 127.0.0.1, .2 and .3, warms up 2 s, then
# runs 64 connections, depth 1, writes only (nmdb SYNC unless SYNC is set empty) against the
# leader for SECONDS. CPU per write = user+sys ticks of each node over the run / writes; the
# load generator's own CPU is printed apart. Every process started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/cluster.sh
SECONDS_PER_RUN="${1:-8}"
ROUNDS="${2:-3}"
shift $(( $# < 2 ? $# : 2 ))
BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
  cargo build --release --locked -q -p polykv
  BINS=("$PWD/target/release/polykv")
fi
SYNC_FLAG="${SYNC---sync}"
BASE="${PORT_BASE:-29500}"   # every port moves with it (kept below the ephemeral range)
NMDB=$((BASE + 10)); ADMIN=$((BASE + 80)); CPORT=$((BASE + 90))
ONLY=(--nmdb-port "$NMDB" --nmdb-udp-enabled false --admin-port "$ADMIN" --minority-enabled false
  --opencluster-enabled false --smalld-enabled false --jsonkv-enabled false --jsonkv-udp-enabled false
  --jsonkv-rpc-enabled false --jsonkv-agent-enabled false --log-level warn)
PEERS="1=127.0.0.1:$CPORT,2=127.0.0.2:$CPORT,3=127.0.0.3:$CPORT"
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
ROUND_PIDS=(); ROUND_DIR=""
stop_round() {
  for p in "${ROUND_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${ROUND_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ROUND_PIDS=()
  if [ -n "$ROUND_DIR" ]; then rm -rf "$ROUND_DIR"; fi
  ROUND_DIR=""
}
trap stop_round EXIT
HZ=$(getconf CLK_TCK)

one_round() {
  local bin=$1 work leader="" n
  work=$(mktemp -d); ROUND_DIR=$work
  for n in 1 2 3; do
    "$bin" serve --bind "127.0.0.$n" --data-dir "$work/p$n" "${ONLY[@]}" --cluster-port "$CPORT" \
      --cluster-node-id "$n" --cluster-peers "$PEERS" --cluster-secret cluster-cpu-secret \
      > "$work/p$n.log" 2>&1 &
    ROUND_PIDS+=($!)
  done
  leader=$(wait_leader "$bin" "127.0.0.1:$ADMIN")
  [ -n "$leader" ] || { echo "no leader elected" >&2; tail "$work"/p*.log >&2; exit 1; }
  "$bin" bench --connections 64 --depth 1 --get-ratio 0 $SYNC_FLAG --keys 100000 --duration 2 \
    --warmup 0 --threads 1 --target "warm=nmdb@127.0.0.$leader:$NMDB" > /dev/null 2>&1
  local before=() after=() i
  for i in 0 1 2; do before+=("$(ticks "${ROUND_PIDS[$i]}")"); done
  "$bin" bench --connections 64 --depth 1 --get-ratio 0 $SYNC_FLAG --keys 100000 \
    --duration "$SECONDS_PER_RUN" --warmup 0 --threads 1 --json \
    --target "c3=nmdb@127.0.0.$leader:$NMDB" > "$work/bench.json" &
  local bench=$! bench_ticks=0
  while kill -0 "$bench" 2>/dev/null; do bench_ticks=$(ticks "$bench" 2>/dev/null || echo "$bench_ticks"); sleep 0.2; done
  wait "$bench"
  for i in 0 1 2; do after+=("$(ticks "${ROUND_PIDS[$i]}")"); done
  python3 - "$work/bench.json" "$(basename "$bin")" "$leader" "$HZ" "$bench_ticks" \
    "${before[@]}" "${after[@]}" <<'PY'
import json, sys
result, name, leader, hz, bench = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
before, after = list(map(int, sys.argv[6:9])), list(map(int, sys.argv[9:12]))
d = json.load(open(result)); d = d[0] if isinstance(d, list) else d
writes = d["requests"]
per = [(a - b) / hz / writes * 1e6 for a, b in zip(after, before)]
nodes = " ".join(f"n{i+1}{'*' if i + 1 == leader else ''} {p:.1f}" for i, p in enumerate(per))
print(f"{name}: {d['ops_per_sec']:.0f} writes/s, p50 {d['latency_us']['p50']:.0f} us; CPU us/write: "
      f"nodes {sum(per):.1f} ({nodes}; * leader), load generator {bench / hz / writes * 1e6:.1f}")
PY
  stop_round
}

for r in $(seq 1 "$ROUNDS"); do
  for bin in "${BINS[@]}"; do
    printf 'round %s ' "$r"
    one_round "$bin"
  done
done
