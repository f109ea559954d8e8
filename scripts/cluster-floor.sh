#!/usr/bin/env bash
# The replication floor beside the real thing: durable writes of three do-nothing nodes
# (crates/polykv/examples/cluster_floor.rs: decode, group, write with O_DIRECT + RWF_DSYNC on the
# leader and on both followers at once, answer once a majority has it), three polykv nodes, one
# polykv node and three etcd nodes, under the same load in the same run, in turn.
#
#   scripts/cluster-floor.sh [SECONDS [ROUNDS]]        (defaults 10 and 3)
#
# Load (as scripts/bench-cluster.sh): `polykv bench`, 64 connections, one nmdb SYNC SET each in
# flight (etcd: a put through its v3 JSON gateway), 100-byte values, sent to the leader. Each
# target, each round: a 2 s unmeasured warm-up, then SECONDS measured; "CPU" is the user+sys time
# of all of the target's server processes over the measured run, per write. The table gives each
# target's median round (by writes/s) and the median of its rounds' ratios to etcd's in the same
# round. FLOOR_SHAPES lists the floors as GROUPS:WRITES[:LEADER_US:FOLLOWER_US] (groups in flight
# per follower : each node's own durable writes in flight : CPU the leader and each follower
# burn per write on top, `--busy-us-per-write`), default "1:1 1:2 4:4".
# First the device alone: 1 and 3 writers of O_DIRECT + RWF_DSYNC 4 KiB writes, 3 s each.
# PORT_BASE moves every port (default 29600; polykv BASE+10, +80, +90; etcd +79, +81; floors
# +20.. and +40..). Every process started is stopped; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-3}"
FLOOR_SHAPES="${FLOOR_SHAPES:-1:1 1:2 4:4}"

. scripts/lib/packages.sh
need_commands etcd:etcd-server
cargo build --release --locked -q -p polykv --bin polykv --example cluster_floor
BIN="$PWD/target/release/polykv"
FLOOR="$PWD/target/release/examples/cluster_floor"

. scripts/lib/bench.sh
. scripts/lib/cluster.sh

BASE="${PORT_BASE:-29600}"
NMDB=$((BASE + 10)); ADMIN=$((BASE + 80)); CPORT=$((BASE + 90)); ETCD_CLIENT=$((BASE + 79)); ETCD_PEER=$((BASE + 81))

echo "== the device alone: O_DIRECT + RWF_DSYNC writes of 4 KiB, one at a time per writer"
"$FLOOR" disk "$WORK/disk" 1 3
"$FLOOR" disk "$WORK/disk" 3 3
rm -f "$WORK"/disk.*

# TARGETS: label, address of the leader (or the one node), and the pids of its servers.
LABELS=(); ADDRS=(); TARGET_PIDS=(); FLOOR_LEADERS=()
i=0
for shape in $FLOOR_SHAPES; do
  IFS=: read -r groups writes leader_us follower_us <<< "$shape"
  leader_us=${leader_us:-0}; follower_us=${follower_us:-0}
  client=$((BASE + 20 + i)); link=$((BASE + 40 + i)); first=${#PIDS[@]}
  mkdir -p "$WORK/floor$i"
  for n in 2 3; do
    "$FLOOR" follower "127.0.0.$n:$link" "$WORK/floor$i/f$n" --writes-in-flight "$writes" \
      --busy-us-per-write "$follower_us" \
      2> "$WORK/floor$i/f$n.log" &
    PIDS+=($!)
  done
  "$FLOOR" leader "127.0.0.1:$client" "$WORK/floor$i/leader" "127.0.0.2:$link" "127.0.0.3:$link" \
    --groups-in-flight "$groups" --writes-in-flight "$writes" --busy-us-per-write "$leader_us" \
    2> "$WORK/floor$i/leader.log" &
  PIDS+=($!); FLOOR_LEADERS+=($!)
  LABELS+=("floor-$shape"); ADDRS+=("127.0.0.1:$client"); TARGET_PIDS+=("${PIDS[*]:$first:3}")
  i=$((i + 1))
done

start_polykv_cluster "$BIN" "$WORK" "$NMDB" "$ADMIN" "$CPORT" cluster-floor-secret
# Its address is known once it has elected a leader.
polykv3=${#LABELS[@]}
LABELS+=("polykv-3"); ADDRS+=(""); TARGET_PIDS+=("${PIDS[*]: -3}")
"$BIN" serve --bind 127.0.0.4 --data-dir "$WORK/single" "${NMDB_ONLY[@]}" > "$WORK/single.log" 2>&1 &
PIDS+=($!)
LABELS+=("polykv-1"); ADDRS+=("127.0.0.4:$NMDB"); TARGET_PIDS+=("$!")
start_etcd_cluster "$WORK" "$ETCD_CLIENT" "$ETCD_PEER"
LABELS+=("etcd-3"); TARGET_PIDS+=("${PIDS[*]: -3}")

for addr in "${ADDRS[@]}"; do
  [ -z "$addr" ] || wait_listener "${addr%:*}" "${addr##*:}" \
    || { echo "nothing listens on $addr" >&2; tail "$WORK"/floor*/*.log "$WORK"/single.log >&2; exit 1; }
done
leader=$(wait_leader "$BIN" "127.0.0.1:$ADMIN")
[ -n "$leader" ] || { echo "the polykv cluster elected no leader" >&2; tail "$WORK"/polykv*.log >&2; exit 1; }
ADDRS[$polykv3]="127.0.0.$leader:$NMDB"
etcd=$(etcd_leader "$ETCD_CLIENT")
ADDRS+=("127.0.0.$etcd:$ETCD_CLIENT")
echo "polykv cluster leader: 127.0.0.$leader; etcd leader: 127.0.0.$etcd"

HZ=$(getconf CLK_TCK)
LOAD=(--connections 64 --depth 1 --get-ratio 0 --sync --keys 100000 --value-size 100 --threads 1)
: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for t in "${!LABELS[@]}"; do
    label=${LABELS[$t]}; addr=${ADDRS[$t]}; proto=nmdb
    [ "$label" != etcd-3 ] || proto=etcd
    read -r -a pids <<< "${TARGET_PIDS[$t]}"
    "$BIN" bench "${LOAD[@]}" --duration 2 --warmup 0 --target "warm=$proto@$addr" > /dev/null 2>&1
    before=(); for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
    TIMEFORMAT='%U %S'
    { time "$BIN" bench "${LOAD[@]}" --duration "$SECONDS_PER_RUN" --warmup 0 --json \
      --target "$label=$proto@$addr" > "$WORK/run.json" 2>/dev/null; } 2> "$WORK/loadgen.time"
    after=(); for p in "${pids[@]}"; do after+=("$(cpu_ticks "$p")"); done
    python3 - "$WORK/run.json" "$label" "$round" "$HZ" "$(cat "$WORK/loadgen.time")" \
      "${before[*]}" "${after[*]}" >> "$WORK/results" <<'PY'
import json, sys
path, label, round_, hz, loadgen = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
before, after = map(int, sys.argv[6].split()), map(int, sys.argv[7].split())
d = json.load(open(path)); d = d[0] if isinstance(d, list) else d
writes = max(d["requests"], 1)
nodes = [(a - b) / hz / writes * 1e6 for a, b in zip(after, before)]
gen = sum(map(float, loadgen.split())) / writes * 1e6
each = "+".join(f"{n:.1f}" for n in nodes)
print(f"{label}\t{round_}\t{d['ops_per_sec']:.0f}\t{d['latency_us']['p50']:.0f}\t{d['latency_us']['p99']:.0f}\t{sum(nodes):.1f}\t{d['errors']}\t{each}\t{gen:.1f}")
PY
    tail -n 1 "$WORK/results" | awk -F'\t' '{printf "round %s %-10s %7s writes/s, p50 %5s us, p99 %6s us, CPU us/write: servers %5s (%s), load generator %s; %s errors\n", $2, $1, $3, $4, $5, $6, $8, $9, $7}'
  done
done

echo
python3 - "$WORK/results" <<'PY'
import sys
rows, etcd_by_round = {}, {}
for line in open(sys.argv[1]):
    label, round_, ops, p50, p99, cpu, errors, each, gen = line.rstrip("\n").split("\t")
    rows.setdefault(label, []).append((float(ops), float(p50), float(p99), float(cpu), int(errors), each, gen, round_))
    if label == "etcd-3":
        etcd_by_round[round_] = float(ops)
median = lambda xs: sorted(xs)[(len(xs) - 1) // 2]
print("| target | rounds (writes/s) | median writes/s | p50 µs | p99 µs | server CPU µs/write (each node) | load generator CPU µs/write | × etcd-3 (median of the rounds' ratios) |")
print("|---|---|---|---|---|---|---|---|")
for label, r in rows.items():
    rounds = " / ".join(f"{x[0]:,.0f}".replace(",", " ") for x in r)
    ops, p50, p99, cpu, _, each, gen, _ = median(r)
    ratios = [x[0] / etcd_by_round[x[7]] for x in r if etcd_by_round.get(x[7])]
    ratio = f"{median(ratios):.1f}×" if ratios else "–"
    print(f"| {label} | {rounds} | {ops:,.0f} | {p50:,.0f} | {p99:,.0f} | {cpu:.1f} ({each}) | {gen} | {ratio} |".replace(",", " "))
errors = sum(x[4] for r in rows.values() for x in r)
if errors:
    print(f"\n{errors} requests answered with errors")
PY
# The floors' own counts, printed as they stop (leaders first: a follower's end stops its
# leader with an error instead).
for p in "${FLOOR_LEADERS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${FLOOR_LEADERS[@]}"; do wait "$p" 2>/dev/null || true; done
echo
cat "$WORK"/floor*/leader.log "$WORK"/floor*/f*.log
