#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the Python
# OpenTelemetry SDK for the interop test), runs every Rust test, then a short smoke run of the
# benchmark harness (harness correctness only; no timing is asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

echo "== cargo test"
cargo test --locked --all-targets

if [ -x scripts/bench.sh ] && [ -d loadgen ]; then
  echo "== benchmark harness smoke run"
  scripts/bench.sh --smoke
fi
