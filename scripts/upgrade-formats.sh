#!/usr/bin/env bash
# The downgrade across a data format change: builds the binary with the test-only `format-next`
# feature (data format + 1) next to the normal one, and runs the end-to-end test that upgrades
# onto it and checks that going back is refused by the older binary and rolled back.
#
#   scripts/upgrade-formats.sh
#
# Both builds share target/debug (only polykv-server and polykv are rebuilt with the feature);
# the feature binary is kept as target/polykv-format-next. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p polykv --features format-next
cp target/debug/polykv target/polykv-format-next
# Back to the normal build, which the test itself starts first.
cargo build -q -p polykv
POLYKV_NEXT_BINARY="$PWD/target/polykv-format-next" \
  cargo test -q -p polykv --test upgrade -- --ignored --exact \
  downgrade_across_a_format_change_is_refused_and_rolled_back
