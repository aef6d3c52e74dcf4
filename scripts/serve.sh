#!/usr/bin/env bash
# Installs what is missing, builds entrovid and serves the default model (models/) on 127.0.0.1:8080.
# Extra arguments go to `entrovid serve` (e.g. --bind 0.0.0.0:8080 --workers 2).
#
# The build is cargo's dev profile with every dependency and the model crate optimised and the
# dependencies' debug assertions off (Cargo.toml), sharing build outputs with scripts/test.sh; its
# default generate runs within ~5% of a release build's (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/entrovid-target}
exec cargo run --bin entrovid -- serve "$@"
