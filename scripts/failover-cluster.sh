#!/usr/bin/env bash
# Failover of a three-process cluster (127.0.0.1, .2, .3, free ports): 12 clients write nmdb
# SYNC while the leader is SIGKILLed KILLS times (default 20) and restarted each time. Prints,
# per kill, the time until a write sent after the kill was acknowledged, then p50/p99 and how
# many acknowledged writes any node lost (the test fails unless 0). Bounded: about 5 s a kill.
#   scripts/failover-cluster.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
POLYKV_FAILOVER_KILLS="${1:-20}" cargo test --release --locked -p polykv --test cluster_failover \
  -- --ignored --nocapture 2>&1 | grep -E "^kill|^failover|test result|panicked|lost"
