# Sourced by the benchmark scripts (after `cd` to the repository): free loopback ports, the CPUs
# the servers and the load generator are pinned to, and a work directory whose processes (their
# pids appended to PIDS) are stopped, and which is removed, when the script exits.

# Sets BIN to the polykv binary to measure: BIN from the environment when given (another build),
# else the release build of this checkout, made now.
release_bin() {
  if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p polykv --bin polykv
    BIN="$PWD/target/release/polykv"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for a listener on 127.0.0.1:PORT; fails if none comes.
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

SERVER_CPU=0
CLIENT_CPU=1
[ "$(nproc)" -ge 2 ] || CLIENT_CPU=0

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
