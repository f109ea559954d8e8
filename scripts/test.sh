#!/usr/bin/env bash
# The whole test suite: unit, property, golden-vector and end-to-end tests (which start the real
# binary on free loopback ports). Heavy crash, soak and fuzz runs have their own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
