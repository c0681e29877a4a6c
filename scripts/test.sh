#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (the Python
# OpenTelemetry SDK and a Prometheus text parser for the interop and metrics tests), runs every
# Rust test, a short smoke run of the benchmark harness (harness correctness only; no timing is
# asserted), and each fuzz target for FUZZ_SECONDS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

echo "== cargo test"
cargo test --locked --all-targets

echo "== benchmark harness smoke run"
scripts/bench.sh --smoke

echo "== fuzz targets"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" scripts/fuzz.sh
