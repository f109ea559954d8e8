#!/usr/bin/env bash
# A three-node polykv cluster on this machine: node N serves every protocol on its default port
# on 127.0.0.N (N = 1, 2, 3; the cluster port is 26090, the admin API 26080 on each address).
# Data and logs go to DIR/node1..3 (default ./polykv-cluster); the cluster secret is generated
# once into DIR/secret (mode 0600). Extra arguments after `start` go to every `polykv serve`.
#   scripts/cluster.sh start [DIR] [-- SERVE ARGS...]   start the three nodes, wait for a leader
#   scripts/cluster.sh status [DIR]                      polykv cluster status (via node 1)
#   scripts/cluster.sh stop [DIR]                        SIGTERM the three nodes, wait for them
# POLYKV_BIN picks the binary (default: target/release/polykv, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:-start}"; shift || true
dir="./polykv-cluster"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then dir="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
bin="${POLYKV_BIN:-target/release/polykv}"
# POLYKV_CLUSTER_PORT and POLYKV_ADMIN_PORT, when set, reach every node (polykv reads them too).
cport="${POLYKV_CLUSTER_PORT:-26090}"
admin="127.0.0.1:${POLYKV_ADMIN_PORT:-26080}"
peers="1=127.0.0.1:$cport,2=127.0.0.2:$cport,3=127.0.0.3:$cport"

case "$action" in
  start)
    [ -x "$bin" ] || cargo build --release --locked -p polykv
    mkdir -p "$dir"
    if [ ! -s "$dir/secret" ]; then
      (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/secret")
    fi
    secret="$(cat "$dir/secret")"
    for n in 1 2 3; do
      if [ -s "$dir/node$n.pid" ] && kill -0 "$(cat "$dir/node$n.pid")" 2>/dev/null; then
        echo "node $n is already running (pid $(cat "$dir/node$n.pid"))"; continue
      fi
      "$bin" serve --bind "127.0.0.$n" --data-dir "$dir/node$n" \
        --cluster-node-id "$n" --cluster-peers "$peers" --cluster-secret "$secret" "$@" \
        > "$dir/node$n.log" 2>&1 &
      echo $! > "$dir/node$n.pid"
      echo "node $n: pid $!, 127.0.0.$n, log $dir/node$n.log"
    done
    for _ in $(seq 1 150); do
      if "$bin" cluster status --admin "$admin" 2>/dev/null | grep -q "leader [0-9]"; then
        "$bin" cluster status --admin "$admin"
        exit 0
      fi
      sleep 0.2
    done
    echo "no leader after 30 s; see $dir/node*.log" >&2
    exit 1
    ;;
  status)
    "$bin" cluster status --admin "$admin"
    ;;
  stop)
    for n in 1 2 3; do
      [ -s "$dir/node$n.pid" ] || continue
      pid="$(cat "$dir/node$n.pid")"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      rm -f "$dir/node$n.pid"
      echo "node $n stopped"
    done
    ;;
  *)
    echo "usage: scripts/cluster.sh start|status|stop [DIR] [-- SERVE ARGS...]" >&2
    exit 2
    ;;
esac
