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
