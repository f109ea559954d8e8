#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with cargo-fuzz, on stable
# (`--sanitizer none`), starting from the saved corpus in fuzz/seeds/TARGET/. New crashes are saved
# under fuzz/artifacts/TARGET/; copy them into the codec's tests as regression cases. Afterwards the
# new inputs are merged into fuzz/seeds/TARGET/ and minimized (`cargo fuzz cmin`): commit them, and
# the default test run replays them (crates/protocols/tests/fuzz_corpus.rs,
# crates/engine/tests/fuzz_corpus.rs, crates/cluster/tests/fuzz_corpus.rs).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"; shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(nmdb_server nmdb_client minority_server minority_client smalld_server smalld_client opencluster_server opencluster_client jsonkv_server jsonkv_client engine_commands handover_wire cluster_wire)
cd fuzz
for target in "${TARGETS[@]}"; do
  echo "== $target (${SECONDS_PER_TARGET}s)"
  mkdir -p "corpus/$target" "seeds/$target"
  cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=70000 2>&1 \
    | grep -E "^#[0-9]+ *DONE|Done [0-9]+ runs|ERROR|crash-" || true
  cp -n "corpus/$target"/* "seeds/$target/" 2>/dev/null || true
  cargo fuzz cmin --sanitizer none "$target" "seeds/$target" -- -max_len=70000 >/dev/null 2>&1 || true
  echo "   seeds/$target: $(ls "seeds/$target" | wc -l) inputs"
done
