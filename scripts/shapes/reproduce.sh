#!/usr/bin/env bash
# Retrains the demo model demo/shapes-world with the stages and step counts it was made with (docs/SHAPES.md),
# on a CUDA machine with diffusers importable (on the GPU box: the wheel in .whl, see gpu_train.sh), then scores it.
#   scripts/shapes/reproduce.sh OUT_DIR          (about 20 GPU minutes on an H200: stage 1, then 2 and 3 at once)
set -euo pipefail
OUT=${1:?usage: reproduce.sh OUT_DIR}
T="python3 scripts/shapes/train.py"
mkdir -p "$OUT"
# 1. VAE (4x, 16 channels) 2853 steps, then DiT + CLIPs at batch 256 for 2265 of a 4000-step cosine.
$T "$OUT/stage1" --vae-channels 32,64,64 --batch 256 --vae-batch 64 --vae-steps 2853 --dit-steps 4000 --stop-after 2265 \
  --lr 1e-3 > "$OUT/stage1.log" 2>&1
# 2. DiT + CLIPs continued at batch 512, a cosine from 1e-3 to 2e-5 over 2262 steps (the original run's
#    schedule ran over 440 s, which on the H200 was these 2262 steps). 3. The VAE decoder alone, 8857 steps.
$T "$OUT/stage2" --resume "$OUT/stage1" --vae-steps 0 --batch 512 --lr 1e-3 --lr-floor 0.02 --warmup 100 \
  --dit-steps 2262 > "$OUT/stage2.log" 2>&1 &
$T "$OUT/stage3" --resume "$OUT/stage1" --decoder-only --vae-steps 8857 --vae-batch 128 --vae-lr 5e-4 --dit-steps 0 \
  > "$OUT/stage3.log" 2>&1
wait
# The model: stage 2's transformer and text encoders with stage 3's VAE (same encoder, so the same latents).
rm -rf "$OUT/shapes-world" && cp -r "$OUT/stage2" "$OUT/shapes-world"
rm -rf "$OUT/shapes-world/vae" && cp -r "$OUT/stage3/vae" "$OUT/shapes-world/vae"
echo "$OUT/shapes-world"
