#!/usr/bin/env bash
# GPU checks of the model core, run on a GPU machine with the CUDA build of entrovid in .gpu/ and
# diffusers' wheels in .whl/ (see README "GPU build"). Writes results under ${OUT:-./gpu-results}.
#   1. `entrovid debug unet --device cuda` on the committed fixtures, every plan, in f32, f16 and
#      bf16, compared with the diffusers references (f32 tol 1e-3, f16/bf16 tol 3e-2).
#   2. The full-size ModelScope UNet (random weights, bf16) at 256x256, 16 frames, batch 2:
#      diffusers + PyTorch and entrovid side by side, ms per step and peak GPU memory.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-./gpu-results}
mkdir -p "$OUT" /tmp/entrovid-bin
xz -dc .gpu/entrovid.xz >/tmp/entrovid-bin/entrovid && chmod +x /tmp/entrovid-bin/entrovid
BIN=/tmp/entrovid-bin/entrovid
# The binary links OpenSSL 3 (webhook client); use the carried copy where the machine lacks it.
ldconfig -p | grep -q 'libssl.so.3 ' || export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"

# 1. Parity on the fixtures.
failures=0
for fixture in tests/fixtures/tiny_a tests/fixtures/tiny_b; do
  for dtype in f32 f16 bf16; do
    if [ "$dtype" = f32 ]; then tol=1e-3; else tol=3e-2; fi
    for plan in none "$fixture"/ref/plan_*.json; do
      if [ "$plan" = none ]; then plan_args=(); ref="$fixture/ref/unet.safetensors"; name=plain
      else name=$(basename "$plan" .json); name=${name#plan_}; plan_args=(--plan "$plan")
           ref="$fixture/ref/unet_plan_$name.safetensors"; fi
      line="$(basename "$fixture") $dtype $name:"
      if "$BIN" debug unet --device cuda --dtype "$dtype" --model "$fixture" \
           --inputs "$fixture/ref/unet.safetensors" --out /tmp/out.safetensors "${plan_args[@]}" 2>/tmp/err.txt; then
        result=$(python3 tools/fixtures/compare_unet.py --out /tmp/out.safetensors --ref "$ref" --tol $tol) \
          || { failures=$((failures+1)); result="FAIL $result"; }
      else failures=$((failures+1)); result="FAIL $(cat /tmp/err.txt)"; fi
      echo "$line $result" | tee -a "$OUT/parity.txt"
    done
  done
done
echo "parity failures: $failures" | tee -a "$OUT/parity.txt"

# 2. Full-size UNet, bf16, 256x256 (32x32 latents), 16 frames, batch 2 (one video with CFG).
sample_memory() { # $1 = output file; samples used GPU memory every 50 ms until killed
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$1" 2>/dev/null
}
peak() { sort -n "$1" | tail -1; }
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
sample_memory /tmp/mem_diffusers.txt & sampler=$!
python3 bench/gpu/fullsize_unet.py --out /tmp/fullsize --dtype bf16 | tee "$OUT/diffusers.json"
kill $sampler; wait $sampler 2>/dev/null
sample_memory /tmp/mem_entrovid.txt & sampler=$!
"$BIN" bench unet --model /tmp/fullsize --device cuda --dtype bf16 --batch 2 --frames 16 \
  --latent-height 32 --latent-width 32 --warmup 2 --iterations 5 --observe | tee "$OUT/entrovid.json"
kill $sampler; wait $sampler 2>/dev/null
echo "{\"baseline_mib\": $base, \"diffusers_peak_used_mib\": $(peak /tmp/mem_diffusers.txt), \"entrovid_peak_used_mib\": $(peak /tmp/mem_entrovid.txt)}" | tee "$OUT/memory.json"
