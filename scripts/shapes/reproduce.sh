#!/usr/bin/env bash
# Trains the demo model demo/shapes-world from nothing, with the recipe and step counts it was made with
# (docs/SHAPES.md), on one CUDA GPU with diffusers importable (on the GPU box: the wheel in .whl, see
# gpu_train.sh), then scores it on held-out captions with diffusers. About 12 minutes on one H200 (estimated
# from a replay that DIT_TIME_GUARD=385 cut short: docs/SHAPES.md).
#   scripts/shapes/reproduce.sh OUT_DIR        -> OUT_DIR/shapes-world, OUT_DIR/*.log, OUT_DIR/shapes-world/eval
# DIT_TIME_GUARD=S stops the DiT after S seconds even if its 3902 steps are not done (the device tool's
# 10-minute limit per command); the step reached is logged and recorded in shapes_world.json.
# SMOKE=1 EVAL_N=2 runs every stage for a few CPU steps (train.py --smoke): a check of the script itself.
set -euo pipefail
OUT=${1:?usage: reproduce.sh OUT_DIR}
T="python3 scripts/shapes/train.py ${SMOKE:+--smoke}"
mkdir -p "$OUT"
start=$(date +%s)
took() { echo "$1 done after $(( $(date +%s) - start )) s"; }
# 1. VAE (4x downsampling, 16 latent channels), encoder and decoder: 2853 steps at batch 64 on 20000 scenes.
$T "$OUT/vae-stage1" --vae-steps 2853 --vae-batch 64 --dit-steps 0 > "$OUT/vae-stage1.log" 2>&1
took "VAE stage 1"
# 2. The VAE decoder alone: 8857 steps at batch 128. The encoder, so the latents, stay as stage 1 made them,
#    so it runs beside
# 3. the MM-DiT (patch size 1: a token per latent pixel; 4 layers, 3 heads of 64) and the two CLIP text
#    encoders, from scratch on stage 1's latents: 50000 scenes, batch 1024, AdamW at 2.5e-3 with 200 warm-up
#    steps, then a cosine down to 2% over 3902 steps.
$T "$OUT/vae-stage2" --resume "$OUT/vae-stage1" --decoder-only --vae-steps 8857 --vae-batch 128 --vae-lr 5e-4 \
  --dit-steps 0 > "$OUT/vae-stage2.log" 2>&1 &
vae_pid=$!
$T "$OUT/dit" --vae-from "$OUT/vae-stage1" --patch-size 1 --n 50000 --batch 1024 --lr 2.5e-3 --lr-floor 0.02 \
  --warmup 200 --dit-steps 3902 ${DIT_TIME_GUARD:+--time-budget "$DIT_TIME_GUARD"} > "$OUT/dit.log" 2>&1
took "DiT"
wait "$vae_pid"
took "VAE stage 2"
# The model: the DiT and text encoders of 3 with the VAE of 2, and where each part came from.
rm -rf "$OUT/shapes-world" && cp -r "$OUT/dit" "$OUT/shapes-world"
rm -rf "$OUT/shapes-world/vae" && cp -r "$OUT/vae-stage2/vae" "$OUT/shapes-world/vae"
python3 - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
stage = lambda d: {k: v for k, v in json.loads((out / d / "shapes_world.json").read_text()).items()
                   if k not in ("heldout_pairs", "heldout_triples", "resumed_from_run")}
dit = json.loads((out / "dit" / "shapes_world.json").read_text())
(out / "shapes-world" / "shapes_world.json").write_text(json.dumps({
    "about": "The shapes-world demo model (scripts/shapes/, docs/SHAPES.md), made by scripts/shapes/reproduce.sh: "
             "VAE stage 1 (encoder and decoder), VAE stage 2 (decoder alone), the DiT and text encoders on stage 1's latents.",
    "size": dit["size"], "heldout_pairs": dit["heldout_pairs"], "heldout_triples": dit["heldout_triples"],
    "stages": {"1_vae": stage("vae-stage1"), "2_vae_decoder": stage("vae-stage2"), "3_dit": stage("dit")}}, indent=1))
EOF
took "all training"
$T "$OUT/shapes-world" --eval-only --eval "${EVAL_N:-100}" > "$OUT/eval.log" 2>&1
grep "held-out eval" "$OUT/eval.log"
echo "$OUT/shapes-world"
