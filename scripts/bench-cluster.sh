#!/usr/bin/env bash
# Durable write throughput of a three-node polykv cluster beside one polykv node and beside a
# three-node etcd cluster, under the same load in the same run; then the failover measurement.
#
#   scripts/bench-cluster.sh [SECONDS_PER_RUN [ROUNDS [KILLS]]]     (defaults 10, 3 and 20)
#
# polykv: three processes on 127.0.0.1, .2 and .3 (nmdb only, on port 29010; cluster port 29090),
# the load sent to the leader; one process on 127.0.0.4 with the same settings. etcd: Debian's
# etcd-server (installed if missing), three processes on 127.0.0.1, .2 and .3 (client port 29379,
# peer port 29380), driven through its v3 JSON gateway (POST /v3/kv/put, HTTP/1.1 keep-alive) by
# the same load generator, sent to etcd's leader (ETCD_FOLLOWER=1: also to a follower); every etcd
# put is fsynced before its answer, and the gateway costs etcd some throughput over gRPC.
# PORT_BASE moves every port (for sessions that run it at once). Load: 64 connections, one request each in flight,
# 100-byte values, writes only (nmdb SYNC). Every target runs ROUNDS rounds in turn and reports
# its median round. Then scripts/failover-cluster.sh KILLS. Every process started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-3}"
KILLS="${3:-20}"

. scripts/lib/packages.sh
need_commands etcd:etcd-server
cargo build --release --locked -q -p polykv
BIN="$PWD/target/release/polykv"

. scripts/lib/bench.sh
. scripts/lib/cluster.sh

# PORT_BASE moves every port (polykv: BASE+10, +80, +90; etcd: BASE+79 client, BASE+81 peer).
BASE="${PORT_BASE:-}"
if [ -n "$BASE" ]; then
  NMDB=$((BASE + 10)); ADMIN=$((BASE + 80)); CPORT=$((BASE + 90)); ETCD_CLIENT=$((BASE + 79)); ETCD_PEER=$((BASE + 81))
else
  # Below Linux's ephemeral range (32768–60999): a port there can be taken by any outgoing
  # connection of the moment, and a listener then cannot bind it.
  NMDB=29010; ADMIN=29080; CPORT=29090; ETCD_CLIENT=29379; ETCD_PEER=29380
fi
start_polykv_cluster "$BIN" "$WORK" "$NMDB" "$ADMIN" "$CPORT" bench-cluster-secret
"$BIN" serve --bind 127.0.0.4 --data-dir "$WORK/single" "${NMDB_ONLY[@]}" > "$WORK/single.log" 2>&1 &
PIDS+=($!)
start_etcd_cluster "$WORK" "$ETCD_CLIENT" "$ETCD_PEER"

leader=$(wait_leader "$BIN" "127.0.0.1:$ADMIN")
[ -n "$leader" ] || { echo "the polykv cluster elected no leader" >&2; tail "$WORK"/polykv*.log >&2; exit 1; }
wait_listener 127.0.0.4 "$NMDB" || true
echo "polykv cluster leader: node $leader (127.0.0.$leader)"
# etcd's load goes to its leader as well (a follower forwards every put to the leader: one more
# hop that polykv's load does not take). Member 1 if no leader is found.
etcd_leader=$(etcd_leader "$ETCD_CLIENT")
echo "etcd leader: 127.0.0.$etcd_leader"
ETCD_TARGETS=(--target "etcd-3=etcd@127.0.0.$etcd_leader:$ETCD_CLIENT")
# ETCD_FOLLOWER=1: also the load sent to an etcd follower (what this script did before).
if [ -n "${ETCD_FOLLOWER:-}" ]; then
  ETCD_TARGETS+=(--target "etcd-3-follower=etcd@127.0.0.$(( etcd_leader % 3 + 1 )):$ETCD_CLIENT")
fi

"$BIN" bench --connections 64 --depth 1 --get-ratio 0 --sync --keys 100000 \
  --duration "$SECONDS_PER_RUN" --warmup 2 --rounds "$ROUNDS" --threads 1 \
  --target "polykv-3=nmdb@127.0.0.$leader:$NMDB" \
  --target "polykv-1=nmdb@127.0.0.4:$NMDB" \
  "${ETCD_TARGETS[@]}"

cleanup
trap - EXIT
if [ "$KILLS" -gt 0 ]; then scripts/failover-cluster.sh "$KILLS"; fi
exit 0
