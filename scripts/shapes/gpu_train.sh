#!/usr/bin/env bash
# Trains shapes-world demo models on the GPU box (through the device tool, from the repo root, carrying
# .whl with the diffusers wheel: scripts/bench/prepare_carry.sh makes it). Several configurations train at
# once on the one GPU (each alone leaves it mostly idle: a tiny model is launch-bound), each then scores
# itself on held-out captions with diffusers (train.py --eval). Results under $OUT: NAME.log, NAME.eval.json,
# NAME.tgz.partXX (the saved pipeline folder, split under the 16 MiB per-file limit of the device tool).
#   scripts/shapes/gpu_train.sh "NAME:train.py args" ...
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
start=$(date +%s)
pids=()
for spec in "$@"; do
  name=${spec%%:*}; args=${spec#*:}
  # shellcheck disable=SC2086
  python3 scripts/shapes/train.py "/tmp/models/$name" $args > "$OUT/$name.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
echo "all done in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
for spec in "$@"; do  # one archive per configuration: model, log, eval results and image grid
  name=${spec%%:*}; d=/tmp/models/$name
  cp "$OUT/$name.log" "$d/train.log" 2>/dev/null && rm "$OUT/$name.log"
  grep -E "held-out eval|reconstructions|budget|trained in|saved" "$d/train.log"
  tar czf - -C "$d" --exclude='eval/0*' . | split -b 15M - "$OUT/$name.tgz.part"
done
