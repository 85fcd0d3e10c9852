#!/usr/bin/env bash
# Trains shapes-video models (train_video.py) on the GPU box, run through the device tool from a folder that
# holds scripts/ (with .whl/ holding the diffusers wheel beside it or in WHL). Optionally a VAE stage first, then
# the configurations side by side on the one GPU (several tiny trainings share a GPU well), each checkpointing
# itself into $OUT/NAME.tgz as it goes and, at its end, scoring itself with diffusers (--eval).
#   [RENDER_N=N] [VAE="train_video.py args"] [COMBINE="DIT_NAME:VAE_NAME" EVAL_N=50] \
#     scripts/shapes/gpu_train_video.sh "NAME:train_video.py args" ...
# In the args, @VAE stands for the VAE stage's output folder and @DATA for the shared clip cache (/tmp/clips.npy,
# rendered first when RENDER_N is set). COMBINE makes final/: configuration DIT_NAME's pipeline with VAE_NAME's
# vae/ (a decoder fine-tuned beside the DiT), and scores it with diffusers on EVAL_N held-out captions x 2 seeds.
# Under $OUT (the device tool brings back 8 files of at most 16 MiB): vae.log, vae.tgz, NAME.log, NAME.tgz (the
# pipeline folder with its eval/ results), final.log, final.tgz, gpu.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; W=/tmp/w; mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ -n "${NO_INSTALL:-}" ] || [ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${WHL:-.whl}"/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
T="${PY:-python3} scripts/shapes/train_video.py"
start=$(date +%s)
took() { echo "$1 after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"; }
sub() { local s=${1//@VAE/$W/vae}; echo "${s//@DATA//tmp/clips.npy}"; }
if [ -n "${RENDER_N:-}" ]; then
  $T /tmp/unused --render-only --n "$RENDER_N" --data-cache /tmp/clips.npy > "$OUT/render.log" 2>&1
  took "clips rendered"
fi
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
if [ -n "${COMBINE:-}" ]; then
  dit=${COMBINE%%:*}; vae=${COMBINE#*:}
  rm -rf "$W/final" && cp -r "$W/$dit" "$W/final" && rm -rf "$W/final/vae" "$W/final/eval" && cp -r "$W/$vae/vae" "$W/final/vae"
  ${PY:-python3} - "$W" "$dit" "$vae" <<'EOF'
import json, pathlib, sys
w, dit, vae = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
info = lambda n: json.loads((w / n / "shapes_video.json").read_text())  # noqa: E731
(w / "final" / "shapes_video.json").write_text(json.dumps({"dit": info(dit), "vae": info(vae)}, indent=1))
# the decoder is the other run's, the latents' scale the DiT's (train_video.py --latent-scale)
cfg = lambda n: json.loads((w / n / "vae" / "config.json").read_text())  # noqa: E731
joined = cfg("final")
joined["scaling_factor"] = cfg(dit)["scaling_factor"]
(w / "final" / "vae" / "config.json").write_text(json.dumps(joined, indent=2))
EOF
  $T "$W/final" --eval-only --eval "${EVAL_N:-50}" ${EVAL_ARGS:-} > "$OUT/final.log" 2>&1
  tar czf "$OUT/final.tgz" -C "$W" final
  took "final"; grep "held-out eval" "$OUT/final.log"
fi
ls -la "$OUT"
