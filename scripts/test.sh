#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the Python
# OpenTelemetry SDK and a Prometheus text parser for the interop and metrics tests; Debian's
# chromium for the dashboard test; Debian's redis-server for the redis membership tests), runs every
# Rust test, a short smoke run of the benchmark harness (harness correctness only; no timing is
# asserted), and each fuzz target for FUZZ_SECONDS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium (the dashboard test drives it headless)"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "cannot install chromium here (needs root and apt-get); install it, then rerun" >&2
    exit 1
  fi
fi
export TAILSIFT_REQUIRE_CHROMIUM=1

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing Debian's redis-server (the redis membership tests start their own on a free port)"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "cannot install redis-server here (needs root and apt-get); install it, then rerun" >&2
    exit 1
  fi
fi
export TAILSIFT_REQUIRE_REDIS=1

echo "== cargo test"
cargo test --locked --all-targets

echo "== benchmark harness smoke run"
scripts/bench.sh --smoke
scripts/bench-signals.sh --smoke

echo "== fuzz targets"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" scripts/fuzz.sh
