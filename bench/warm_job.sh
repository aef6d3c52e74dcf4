#!/usr/bin/env bash
# Time from POST to `succeeded` of default generate jobs on a warm server: a real server (SQLite,
# one CPU worker, 2 threads) with the model loaded; one warm-up job, then RUNS jobs one after the
# other, each polled every 20 ms. Default job settings: the model's frames, size, steps and
# guidance, attention statistics recorded.
#   bench/warm_job.sh [MODEL_DIR=models/entrovid-world-tiny] [RUNS=5]
# BIN=path/to/entrovid times another build (e.g. an earlier commit's, for a side-by-side run).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/entrovid-world-tiny}; runs=${2:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/entrovid-target}
# A release build, as shipped (see bench/cpu_generate_vs_diffusers.sh for why not the dev one).
bin=${BIN:-$CARGO_TARGET_DIR/release/entrovid}
[ -n "${BIN:-}" ] || cargo build -q --release --bin entrovid
source bench/serve.sh
SERVE_ENV="RAYON_NUM_THREADS=2" start_server "$(dirname "$model")"
python3 - "$base" "$(basename "$model")" "$runs" <<'PY'
import json, sys, time, urllib.request
base, model, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)
def job(seed):
    start = time.perf_counter()
    created = call("POST", "/v1/jobs", {"kind": "generate", "model": model, "seed": seed,
                                        "prompt": "a red circle moving right on a black background"})
    while True:
        status = call("GET", f"/v1/jobs/{created['id']}")["status"]
        if status in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.02)
    return status, time.perf_counter() - start
print("warm-up:", *job(0))
times = []
for seed in range(1, runs + 1):
    status, seconds = job(seed)
    assert status == "succeeded", status
    times.append(seconds)
    print(f"job {seed}: POST -> {status} in {seconds:.2f} s")
times.sort()
print(f"median {times[len(times) // 2]:.2f} s, min {times[0]:.2f} s, max {times[-1]:.2f} s over {runs} jobs")
PY
