#!/usr/bin/env bash
# Default generate on the CPU, entrovid vs diffusers + PyTorch on the same weights, side by side:
# 16 frames, 64x64, 25 DDIM steps, guidance 7.5, f32, 2 threads each, warm runs (one warm-up each).
#   bench/cpu_generate_vs_diffusers.sh [MODEL_DIR=models/entrovid-world-tiny] [RUNS=3]
# PYTHON must have torch and diffusers 0.42.1 (e.g. /opt/fixtures-venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/entrovid-world-tiny}; runs=${2:-3}
PYTHON=${PYTHON:-/opt/fixtures-venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/entrovid-target}
# A release build, as shipped (Dockerfile). PROFILE=debug measures the dev build instead (every
# dependency optimised, within ~5% of release since their debug assertions are off; BENCHMARKS.md).
profile=${PROFILE:-release}
if [ "$profile" = release ]; then cargo build -q --release --bin entrovid; else cargo build -q --bin entrovid; fi
bin="$CARGO_TARGET_DIR/$profile/entrovid"
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
prompt="a red circle moving right on a black background"
# Prints the whole process's time, then the generation's alone (model loaded, before the MP4 is
# encoded: what diffusers' pipeline call below covers), as `entrovid generate` reports it.
entrovid_once() {
  local start end generation
  start=$(date +%s.%N)
  generation=$(RAYON_NUM_THREADS=2 ENTROVID_LOG=warn "$bin" --models-dir "$(dirname "$model")" generate \
    --model "$(basename "$model")" --prompt "$prompt" --seed 1 --output "$out/v.mp4" 2>&1 >/dev/null \
    | sed -n 's/.*generated in \([0-9.]*\) s.*/\1/p')
  end=$(date +%s.%N); echo "$(echo "$end - $start" | bc) $generation"
}
entrovid_once >/dev/null   # warm-up (page cache)
for i in $(seq "$runs"); do
  read -r whole generation < <(entrovid_once)
  echo "entrovid generate: whole process (load, MP4 included) $whole s; generation (model loaded) $generation s"
done
"$PYTHON" - "$model" "$runs" <<'PY'
import sys, time, torch
from diffusers import TextToVideoSDPipeline
torch.set_num_threads(2)
model, runs = sys.argv[1], int(sys.argv[2])
pipe = TextToVideoSDPipeline.from_pretrained(model, torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
def once():
    g = torch.Generator().manual_seed(1)
    t = time.perf_counter()
    pipe("a red circle moving right on a black background", num_frames=16, height=64, width=64,
         num_inference_steps=25, guidance_scale=7.5, generator=g, output_type="np")
    return time.perf_counter() - t
once()
for _ in range(runs):
    print(f"diffusers pipeline call (model already loaded): {once():.3f} s")
PY
