#!/usr/bin/env bash
# The whole test suite: unit, property, golden-vector and end-to-end tests (which start the real
# binary on free loopback ports), and the web console in headless Chromium. Installs what the
# tests need that a fresh machine lacks (Debian's chromium and chromium-driver). Heavy crash,
# soak and fuzz runs have their own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromedriver >/dev/null 2>&1 || [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium and chromium-driver (browser test of the web console)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

cargo test --workspace --locked "$@"
