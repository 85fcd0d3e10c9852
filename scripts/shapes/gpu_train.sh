#!/usr/bin/env bash
# Trains shapes-world demo models on the GPU box (through the device tool, from the repo root, carrying
# .whl with the diffusers wheel: scripts/bench/prepare_carry.sh makes it). Configurations are spread over the
# machine's GPUs (round robin; several on one GPU share it: a tiny model alone leaves a GPU partly idle), each
# then scores itself on held-out captions with diffusers (train.py --eval).
# Results under $OUT (the device tool returns at most 8 files of 16 MiB):
#   logs.tgz          every configuration's train.log, eval summary (results.json) and image grid
#   NAME.tgz.partXX   the saved pipeline folders of the KEEP best configurations by held-out colour+shape
#   scripts/shapes/gpu_train.sh "NAME:train.py args" ...        (KEEP=2 by default)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
KEEP=${KEEP:-2}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
ngpu=$(nvidia-smi -L | wc -l)
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
FIRST_GPU=${FIRST_GPU:-0}  # configurations go to GPUs FIRST_GPU.. (another job may hold the ones before)
start=$(date +%s)
pids=(); names=(); i=0
for spec in "$@"; do
  name=${spec%%:*}; args=${spec#*:}; names+=("$name")
  mkdir -p "/tmp/models/$name"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$((FIRST_GPU + i % (ngpu - FIRST_GPU))) python3 scripts/shapes/train.py "/tmp/models/$name" $args \
    > "/tmp/models/$name.log" 2>&1 &
  pids+=($!); i=$((i + 1))
done
for p in "${pids[@]}"; do wait "$p"; done
echo "all done in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
mkdir -p /tmp/logs
for name in "${names[@]}"; do
  d=/tmp/models/$name
  mkdir -p "/tmp/logs/$name"; cp "$d.log" "/tmp/logs/$name/train.log"; cp "$d.log" "$d/train.log" 2>/dev/null
  cp "$d/eval/results.json" "$d/eval/grid.png" "/tmp/logs/$name/" 2>/dev/null
  echo "== $name"; grep -E "held-out eval|reconstructions|budget|trained in|saved|steps/s\)$" "$d.log" | tail -6
done
tar czf "$OUT/logs.tgz" -C /tmp/logs .
# the KEEP best by held-out colour+shape come back whole
best=$(for name in "${names[@]}"; do
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['summary']['colour_shape'], sys.argv[2])" \
    "/tmp/models/$name/eval/results.json" "$name" 2>/dev/null
done | sort -rn | head -n "$KEEP" | awk '{print $2}')
for name in $best; do
  echo "keeping $name"
  tar czf - -C "/tmp/models/$name" --exclude='eval/0*' . | split -b 15M - "$OUT/$name.tgz.part"
done
ls -la "$OUT"
