#!/usr/bin/env bash
# Trains the default model on a GPU machine in steps that each fit one short remote command:
#   gpu_train.sh start MINUTES   export the training clips, start train.py in its own session
#   gpu_train.sh wait SECONDS    wait (at most SECONDS) for it, printing the log's tail
#   gpu_train.sh finish DIR      sample held-out prompts with diffusers, score them with the
#                                project's evaluator, pack the model folder into DIR (parts < 16 MiB)
# Needs .gpu/entrovid-world.xz (a release build of crates/world's binary) and .whl/ (diffusers).
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=/tmp/entrovid-train
mkdir -p "$WORK"
xz -dc .gpu/entrovid-world.xz >"$WORK/entrovid-world" && chmod +x "$WORK/entrovid-world"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

case "$1" in
  start)
    "$WORK/entrovid-world" export --out "$WORK/train.safetensors" --count 40000 --seed 1 --split train
    setsid nohup bash -c "python3 tools/train/train.py --data $WORK/train.safetensors --out $WORK/model \
        --minutes $2 --seed 0 >$WORK/train.log 2>&1; echo \$? >$WORK/train.rc" >/dev/null 2>&1 &
    sleep 20; tail -5 "$WORK/train.log" ;;
  wait)
    deadline=$((SECONDS + $2))
    while [ ! -f "$WORK/train.rc" ] && [ $SECONDS -lt $deadline ]; do sleep 10; done
    tail -8 "$WORK/train.log"; [ -f "$WORK/train.rc" ] && echo "train.py exit: $(cat $WORK/train.rc)" ;;
  finish)
    out=$2; mkdir -p "$out"
    "$WORK/entrovid-world" export --out "$WORK/held.safetensors" --count 200 --seed 2 --split held-out
    python3 tools/train/sample.py --model "$WORK/model" --prompts "$WORK/held.json" --seeds 0 \
        --out "$WORK/samples.safetensors"
    "$WORK/entrovid-world" eval --videos "$WORK/samples.safetensors" --prompts "$WORK/samples.json" \
        --out "$out/heldout_report.json"
    cp "$WORK/model.log.json" "$out/train_log.json" 2>/dev/null
    tar -C "$WORK" -cf - model | split -b 15M - "$out/model.tar.part-" ;;
esac
