#!/usr/bin/env bash
# Engine crash test: SIGKILL a process doing concurrent Sync or Async writes (some while
# checkpoints run constantly), restart, verify.
# Usage: scripts/crash-engine.sh [CYCLES]   (default 30; about 1 s per cycle)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p polykv-engine --example crash_writer
export CRASH_WRITER="$PWD/target/release/examples/crash_writer"
export CRASH_CYCLES="${1:-30}"
cargo test --release -q -p polykv-engine --test crash -- --ignored --nocapture
