#!/usr/bin/env bash
# Trains shapes-video models (train_video.py) on the GPU box, run through the device tool from a folder that
# holds scripts/ (with .whl/ holding the diffusers wheel beside it or in WHL). Optionally a VAE stage first, then
# the configurations side by side on the one GPU (several tiny trainings share a GPU well), each checkpointing
# itself into $OUT/NAME.tgz as it goes and, at its end, scoring itself with diffusers (--eval).
#   VAE="train_video.py args" scripts/shapes/gpu_train_video.sh "NAME:train_video.py args" ...
# In the args, @VAE stands for the VAE stage's output folder and @DATA for the shared clip cache.
# Under $OUT (the device tool brings back 8 files of at most 16 MiB): vae.log, vae.tgz, NAME.log, NAME.tgz (the
# pipeline folder with its eval/ results), gpu.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; W=/tmp/w; mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ -n "${NO_INSTALL:-}" ] || [ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${WHL:-.whl}"/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
T="${PY:-python3} scripts/shapes/train_video.py"
start=$(date +%s)
took() { echo "$1 after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"; }
sub() { local s=${1//@VAE/$W/vae}; echo "${s//@DATA//tmp/clips.npy}"; }
if [ -n "${VAE:-}" ]; then
  # shellcheck disable=SC2046
  $T "$W/vae" $(sub "$VAE") > "$OUT/vae.log" 2>&1
  tar czf "$OUT/vae.tgz" -C "$W" vae
  took "VAE stage"
fi
pids=(); names=()
for spec in "$@"; do
  name=${spec%%:*}; names+=("$name")
  # shellcheck disable=SC2046
  $T "$W/$name" $(sub "${spec#*:}") --checkpoint-tar "$OUT/$name.tgz" > "$OUT/$name.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
took "configurations"
for name in "${names[@]}"; do
  [ -d "$W/$name" ] && tar czf "$OUT/$name.tgz" -C "$W" "$name"   # now with eval/
  echo "== $name"; grep -E "held-out eval|reconstructions|budget|trained in|saved|steps/s\)$" "$OUT/$name.log" | tail -5
done
ls -la "$OUT"
