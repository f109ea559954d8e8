#!/usr/bin/env bash
# The three-process leader-kill test (crates/polykv/tests/cluster.rs) RUNS times in a row (default
# 10) at pipeline depth DEPTH (default: the built-in one), stopping at the first failure. The
# test restarts the killed leader while writers still write to it, so it also covers a leader
# that restarts having lost entries its followers hold (see vendor/README.md). About 10 s a run.
#   scripts/loop-cluster-kill.sh [RUNS] [DEPTH]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
if [ -n "${2:-}" ]; then export POLYKV_CLUSTER_PIPELINE="$2"; fi
cargo test --locked -p polykv --test cluster --no-run 2>/dev/null
for i in $(seq 1 "$runs"); do
  if out=$(cargo test --locked -p polykv --test cluster -- --nocapture 2>&1); then
    echo "run $i: $(grep -oE '[0-9]+ writes acknowledged.*' <<<"$out" || echo ok)"
  else
    echo "run $i FAILED"
    grep -E "panicked|lost|assert" <<<"$out" | head -20
    exit 1
  fi
done
echo "$runs runs passed"
