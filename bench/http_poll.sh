#!/usr/bin/env bash
# Polling latency while the model runs: GET /v1/jobs/{id} at a fixed 1,000 requests/s for 30 s
# (oha -q, open-loop) against a real server whose one CPU worker is generating videos with the
# default model the whole time. Prints oha's summary (latency percentiles, errors).
#   bench/http_poll.sh [RATE=1000] [SECONDS=30]
# Needs oha: `cargo install oha --locked --root /var/tmp/oha` (or OHA=/path/to/oha).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-1000}; seconds=${2:-30}
OHA=${OHA:-$(command -v oha || echo /var/tmp/oha/bin/oha)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/entrovid-target}
cargo build -q --bin entrovid
bin="$CARGO_TARGET_DIR/debug/entrovid"
source bench/serve.sh
start_server models
submit() { curl -fs -X POST "$base/v1/jobs" -H 'Content-Type: application/json' \
  -d "{\"kind\":\"generate\",\"prompt\":\"a red circle moving right on a black background\",\"seed\":$1}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
# Enough queued work to keep the worker busy for the whole measurement.
first=$(submit 1); for s in 2 3 4 5 6 7 8; do submit $s >/dev/null; done
until curl -fs "$base/v1/jobs/$first" | grep -q '"status":"running"'; do sleep 0.1; done
"$OHA" --no-tui -q "$rate" -z "${seconds}s" -c 50 "$base/v1/jobs/$first"
echo "job states after the run:"; curl -fs "$base/v1/jobs?limit=100" | python3 -c '
import json,sys,collections; print(dict(collections.Counter(j["status"] for j in json.load(sys.stdin)["jobs"])))'
