#!/usr/bin/env bash
# Trains the default model on a GPU machine in steps that each fit one short remote command.
# RUNS="a b" trains the same command twice side by side (same seed; on one GPU give step counts,
# since two runs share it and a time budget would give each fewer steps): `a` is the candidate,
# `b` checks that a re-run scores within 0.03 of it.
#   gpu_train.sh bench           time a diffusion step of TRAIN_ARGS' design (BENCH_BATCH clips, 1024) in the
#                                variants of BENCH_VARIANTS
#                                and write the train.py options of the fastest to $WORK/fastest_flags
#   gpu_train.sh start           export the training clips, start both runs in their own sessions
#   gpu_train.sh wait SECONDS    wait (at most SECONDS) for both, printing the logs' tails
#   gpu_train.sh pack DIR        pack every finished run's model folder, training logs and console
#                                log into DIR (parts < 16 MiB), to score it elsewhere
#   gpu_train.sh finish DIR      sample held-out prompts with diffusers from every run's model (one
#                                run per GPU at a time), score them with the project's evaluator,
#                                pack each run into DIR (parts < 16 MiB)
# On a machine with one GPU per run, each run gets its own (CUDA_VISIBLE_DEVICES) and runs at full
# speed; TRAIN_ARGS_<run> (e.g. TRAIN_ARGS_b) replaces TRAIN_ARGS for that run, to train two
# designs side by side. FINETUNE_ARGS (or FINETUNE_ARGS_<run>), when set, is a second training
# command run right after the first, continuing from its pipeline (`--init-from`), as the shipped
# model was trained (tools/train/README.md).
# Needs .gpu/entrovid-world.xz (a release build of crates/world's binary) and .whl/ (diffusers).
# The training command (tools/train/README.md) is TRAIN_ARGS below.
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=/tmp/entrovid-train
RUNS=${RUNS:-a}
TRAIN_ARGS=${TRAIN_ARGS:-"--seed 0 --minutes 15"}
mkdir -p "$WORK"
[ -x "$WORK/entrovid-world" ] || { xz -dc .gpu/entrovid-world.xz >"$WORK/entrovid-world" && chmod +x "$WORK/entrovid-world"; }
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

# `wait` and `finish` on a machine that holds none of the runs (a fresh one: the runs live in
# this machine's /tmp) stop at once instead of waiting on nothing.
require_runs() {
  for run in $RUNS; do
    [ -f "$WORK/$run.log" ] || { echo "run $run was not started on this machine ($WORK/$run.log is missing)" >&2; exit 3; }
  done
}

# archive_run RUN DIR FILES...: the run's FILES (relative to its folder) as one archive in DIR,
# in parts < 16 MiB.
archive_run() {
  local run=$1 out=$2; shift 2
  tar -C "$WORK/$run" -cf - "$@" | xz -1 -T4 | split -b 15M - "$out/run_$run.tar.xz.part-"
}

case "$1" in
  bench)
    # ~1 minute for the eager variants, and each compiled one's compile time (~140 s for the
    # blocks on an H200). Its compile cache is left out of
    # the training runs (start), whose time budget must hold their own compiling.
    # The design timed is TRAIN_ARGS' (its other options are not the bench's).
    TORCHINDUCTOR_CACHE_DIR=$WORK/bench-inductor-cache python3 tools/train/bench_step.py --train-args "$TRAIN_ARGS" \
        --batch ${BENCH_BATCH:-1024} --steps 8 --warmup 2 \
        --variants ${BENCH_VARIANTS:-cached_text cached_expand blocks_compiled blocks_compiled_expand} \
        --profile ${BENCH_PROFILE:-blocks_compiled} --write-fastest-flags "$WORK/fastest_flags" ;;
  start)
    "$WORK/entrovid-world" export --out "$WORK/train.safetensors" --count 40000 --seed 1 --split train
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l); index=0
    for run in $RUNS; do
      args_var="TRAIN_ARGS_$run"; args=${!args_var:-$TRAIN_ARGS}
      finetune_var="FINETUNE_ARGS_$run"; finetune=${!finetune_var:-${FINETUNE_ARGS:-}}
      device=""; [ "$gpus" -gt 1 ] && device="CUDA_VISIBLE_DEVICES=$((index % gpus))"
      train="$device python3 tools/train/train.py --data $WORK/train.safetensors"
      if [ -n "$finetune" ]; then
        echo "run $run: train.py $args, then train.py --init-from (that) $finetune"
        commands="$train --out $WORK/$run/base $args && $train --out $WORK/$run/model --init-from $WORK/$run/base $finetune"
      else
        echo "run $run: train.py $args"
        commands="$train --out $WORK/$run/model $args"
      fi
      setsid nohup bash -c "($commands) >$WORK/$run.log 2>&1; echo \$? >$WORK/$run.rc" >/dev/null 2>&1 &
      index=$((index + 1))
    done
    sleep 30; for run in $RUNS; do tail -3 "$WORK/$run.log"; done ;;
  wait)
    require_runs
    deadline=$((SECONDS + $2))
    all_done() { for run in $RUNS; do [ -f "$WORK/$run.rc" ] || return 1; done; }
    # New log lines are printed as they come, so that a remote command stopped at its time
    # limit still shows how far the runs got.
    for run in $RUNS; do tail -n 0 -F --pid=$$ "$WORK/$run.log" 2>/dev/null | sed -u "s/^/[$run] /" & done
    while ! all_done && [ $SECONDS -lt $deadline ]; do sleep 10; done
    for run in $RUNS; do
      echo "== run $run"; tail -4 "$WORK/$run.log"
      [ -f "$WORK/$run.rc" ] && echo "train.py exit: $(cat $WORK/$run.rc)"
    done ;;
  pack)
    require_runs
    out=$2; mkdir -p "$out"
    for run in $RUNS; do
      [ -f "$WORK/$run.rc" ] || { echo "run $run has not finished: not packed" >&2; continue; }
      cp "$WORK/$run.log" "$out/$run.log"
      files=(model); for log in "$WORK/$run"/*.log.json "$WORK/$run"/*.compile-ahead.*; do [ -f "$log" ] && files+=("$(basename "$log")"); done
      archive_run "$run" "$out" "${files[@]}"
      echo "run $run (train.py exit $(cat "$WORK/$run.rc")): $(ls "$out"/run_"$run".tar.xz.part-* | wc -l) part(s) in $out"
    done ;;
  finish)
    require_runs
    # Each run comes back as one archive (model folder, reports, training log) in parts < 16 MiB.
    out=$2; mkdir -p "$out"
    # Held-out combinations (the score that counts) and, to tell learning from generalising,
    # combinations seen in training.
    "$WORK/entrovid-world" export --out "$WORK/held-out.safetensors" --count 200 --seed 2 --split held-out
    "$WORK/entrovid-world" export --out "$WORK/train-split.safetensors" --count 200 --seed 5 --split train
    finish_run() {
      local run=$1
      for split in held-out train-split; do
        echo "== run $run, $split"
        python3 tools/train/sample.py --model "$WORK/$run/model" --prompts "$WORK/$split.json" --seeds 0 \
            --out "$WORK/$run/$split-samples.safetensors"
        "$WORK/entrovid-world" eval --videos "$WORK/$run/$split-samples.safetensors" \
            --prompts "$WORK/$run/$split-samples.json" --out "$WORK/$run/${split}_report.json"
      done
      cp "$WORK/$run/model.log.json" "$WORK/$run/train_log.json" 2>/dev/null
      cp "$WORK/$run/base.log.json" "$WORK/$run/base_train_log.json" 2>/dev/null || : >"$WORK/$run/base_train_log.json"
      # Whether the model reads each kind of prompt word (the motion words above all).
      python3 tools/train/probe_conditioning.py --model "$WORK/$run/model" \
          --data "$WORK/held-out.safetensors" --clips 48 2>/dev/null >"$WORK/$run/probe.txt"
      cat "$WORK/$run/probe.txt"
      archive_run "$run" "$out" model held-out_report.json train-split_report.json train_log.json base_train_log.json probe.txt
    }
    # One run per GPU at a time, all at once where there are as many GPUs as runs.
    slots=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$slots" -gt 0 ] || slots=1; index=0
    for run in $RUNS; do
      (export CUDA_VISIBLE_DEVICES=$((index % slots))
       finish_run "$run" >"$WORK/$run.finish.log" 2>&1) &
      index=$((index + 1))
      [ $((index % slots)) -eq 0 ] && wait
    done
    wait
    for run in $RUNS; do cat "$WORK/$run.finish.log"; done ;;
esac
