#!/usr/bin/env bash
# Runs the whole entrovid test suite: unit tests, model parity tests against diffusers fixtures,
# integration tests over real HTTP (SQLite, FFmpeg, worker processes) and schema-driven fuzzing of
# the served API. Installs what it needs first (scripts/setup.sh is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# Keep build outputs outside the clone so repeated runs (and CI on the same machine) are incremental.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/entrovid-target}
export CARGO_TERM_COLOR=never

cargo build --bins
cargo nextest run --workspace --no-fail-fast

scripts/fuzz-api.sh
