#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with cargo-fuzz, on stable
# (`--sanitizer none`). New crashes are saved under fuzz/artifacts/TARGET/; copy them into the
# codec's tests as regression cases.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"; shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(nmdb_server nmdb_client minority_server minority_client smalld_server smalld_client opencluster_server opencluster_client jsonkv_server jsonkv_client engine_commands)
cd fuzz
for target in "${TARGETS[@]}"; do
  echo "== $target (${SECONDS_PER_TARGET}s)"
  mkdir -p "corpus/$target"
  cargo fuzz run --sanitizer none "$target" "corpus/$target" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=70000 2>&1 \
    | grep -E "^#[0-9]+ *DONE|Done [0-9]+ runs|ERROR|crash-" || true
done
