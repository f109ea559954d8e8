#!/usr/bin/env bash
# The whole test suite: unit, property, golden-vector and end-to-end tests (which start the real
# binary on free loopback ports), and the web console in headless Chromium. Installs what the
# tests need that a fresh machine lacks (Debian's chromium and chromium-driver). Heavy crash,
# soak and fuzz runs have their own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + chromium-driver: the web console's browser test; memcached + redis-server: the
# load generator's encoders are checked against the real servers.
. scripts/lib/packages.sh
missing=()
command -v chromedriver >/dev/null 2>&1 && [ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
command -v memcached >/dev/null 2>&1 || missing+=(memcached)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
install_packages "${missing[@]}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary, doc-tests last).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
