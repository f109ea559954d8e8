# Sourced by the cluster benchmark scripts.

# Prints the id of the cluster's leader as the admin API at ADMIN (host:port) sees it, waiting up
# to 60 s for one to be elected; prints nothing if none is.
wait_leader() {
  local bin=$1 admin=$2 leader=""
  for _ in $(seq 1 300); do
    leader=$("$bin" cluster status --json --admin "$admin" 2>/dev/null \
      | python3 -c 'import json,sys; l=json.load(sys.stdin)["leader"]; print(l if l else "")' 2>/dev/null || true)
    [ -n "$leader" ] && break
    sleep 0.2
  done
  echo "$leader"
}

# polykv serve flags for a node that serves nmdb only: polykv_nmdb_only NMDB_PORT ADMIN_PORT sets
# the array NMDB_ONLY.
polykv_nmdb_only() {
  NMDB_ONLY=(--nmdb-port "$1" --nmdb-udp-enabled false --admin-port "$2" --minority-enabled false
    --opencluster-enabled false --smalld-enabled false --jsonkv-enabled false --jsonkv-udp-enabled false
    --jsonkv-rpc-enabled false --jsonkv-agent-enabled false --log-level warn)
}

# Starts three polykv nodes (nmdb only) on 127.0.0.1, .2 and .3, data and logs under DIR, their
# pids appended to PIDS: start_polykv_cluster BIN DIR NMDB_PORT ADMIN_PORT CLUSTER_PORT SECRET.
start_polykv_cluster() {
  local bin=$1 dir=$2 nmdb=$3 admin=$4 cport=$5 secret=$6 n
  polykv_nmdb_only "$nmdb" "$admin"
  local peers="1=127.0.0.1:$cport,2=127.0.0.2:$cport,3=127.0.0.3:$cport"
  for n in 1 2 3; do
    "$bin" serve --bind "127.0.0.$n" --data-dir "$dir/polykv$n" "${NMDB_ONLY[@]}" --cluster-port "$cport" \
      --cluster-node-id "$n" --cluster-peers "$peers" --cluster-secret "$secret" \
      > "$dir/polykv$n.log" 2>&1 &
    PIDS+=($!)
  done
}

# Starts three etcd members (Debian's etcd-server) on 127.0.0.1, .2 and .3, data and logs under
# DIR, their pids appended to PIDS: start_etcd_cluster DIR CLIENT_PORT PEER_PORT. Every put is
# fsynced before its answer (etcd's default).
start_etcd_cluster() {
  local dir=$1 client=$2 peer=$3 n
  local members="n1=http://127.0.0.1:$peer,n2=http://127.0.0.2:$peer,n3=http://127.0.0.3:$peer"
  for n in 1 2 3; do
    etcd --name "n$n" --data-dir "$dir/etcd$n" \
      --listen-client-urls "http://127.0.0.$n:$client" --advertise-client-urls "http://127.0.0.$n:$client" \
      --listen-peer-urls "http://127.0.0.$n:$peer" --initial-advertise-peer-urls "http://127.0.0.$n:$peer" \
      --initial-cluster "$members" --initial-cluster-state new --initial-cluster-token bench \
      > "$dir/etcd$n.log" 2>&1 &
    PIDS+=($!)
  done
}

# Waits up to 60 s for the etcd cluster at CLIENT_PORT to answer a range, then prints the member
# (1, 2 or 3: 127.0.0.N) that is its leader, 1 if none is found within 10 s more.
etcd_leader() {
  local client=$1 n
  for _ in $(seq 1 300); do
    curl -sf -X POST -d '{"key":"AA=="}' "http://127.0.0.1:$client/v3/kv/range" >/dev/null 2>&1 && break
    sleep 0.2
  done
  for _ in $(seq 1 50); do
    for n in 1 2 3; do
      curl -sf -X POST -d '{}' "http://127.0.0.$n:$client/v3/maintenance/status" 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["leader"] == d["header"]["member_id"] else 1)' \
        2>/dev/null && { echo "$n"; return 0; }
    done
    sleep 0.2
  done
  echo 1
}

# Waits up to 60 s for a listener on HOST:PORT; fails if none comes.
wait_listener() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# User + system CPU ticks a process has used so far.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
