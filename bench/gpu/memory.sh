#!/usr/bin/env bash
# Peak GPU memory of one full-size UNet forward benchmark, diffusers vs entrovid, each in its own
# process (the diffusers side also writes the checkpoint entrovid then loads). Samples both the
# card's used memory and the per-process figure every 50 ms.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=/tmp/entrovid-bin/entrovid
[ -x "$BIN" ] || { mkdir -p /tmp/entrovid-bin; xz -dc .gpu/entrovid.xz >"$BIN"; chmod +x "$BIN"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site
sample() { while true; do
  echo "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1) $(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits | paste -sd+ | bc 2>/dev/null || echo 0)"
  sleep 0.05; done; }
peak() { awk 'BEGIN{a=0;b=0} {if($1>a)a=$1; if($2>b)b=$2} END{print a, b}' "$1"; }
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
sample >/tmp/mem_d.txt & s=$!
python3 bench/gpu/fullsize_unet.py --out /tmp/fullsize --dtype bf16 --iters 3
kill $s
sample >/tmp/mem_e.txt & s=$!
"$BIN" bench unet --model /tmp/fullsize --device cuda --dtype bf16 --batch 2 --frames 16 \
  --latent-height 32 --latent-width 32 --warmup 1 --iterations 3
kill $s
echo "idle card used MiB: $idle"
echo "diffusers peak (card used MiB, per-process MiB): $(peak /tmp/mem_d.txt)"
echo "entrovid  peak (card used MiB, per-process MiB): $(peak /tmp/mem_e.txt)"
