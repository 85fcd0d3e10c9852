#!/usr/bin/env bash
# One GPU-box round for SD3 (run through the device tool, from the repo root, with .carry and .whl
# carried): builds mmdit against the box's torch, checks the CUDA image of a tiny golden case against
# the float32 CPU golden, and times SD3.5-large / SD3.5-medium (random bf16 weights made on the GPU,
# 1024², 28 steps, CFG 7) for mmdit and diffusers eager in the same call. Results: $OUT/*.json, log.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMDIT_BUILD_TESTS=OFF -DMMDIT_WITH_FFMPEG=OFF \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/cmake.txt" 2>&1 \
  || { tail -30 "$OUT/cmake.txt"; exit 1; }
time cmake --build build-gpu -j16 > "$OUT/build.txt" 2>&1 || { grep -E "error" -A3 "$OUT/build.txt" | head -40; exit 1; }
M=build-gpu/mmdit
# Same seed, same image on any device: f32 CUDA must equal the f32 CPU golden; bf16 CUDA stays close.
P='--prompt "a small red circle above a blue square" --seed 42 --steps 4 --cfg 7 --width 128 --height 128'
for dt in f32 bf16; do
  eval $M generate -q --model .carry/tiny-sd3 $P --device cuda --dtype $dt -o /tmp/tiny_$dt.png
  echo "tiny sd3 cuda $dt vs cpu f32 golden: $(python3 scripts/bench/psnr.py /tmp/tiny_$dt.png .carry/sd3_square_cfg.png)" | tee -a "$OUT/parity.txt"
done
for model in sd3.5-large sd3.5-medium; do
  L=.carry/layouts/$model
  for attn in auto cudnn; do
    $M bench --model $L --random-weights --device cuda --dtype bf16 --width 1024 --height 1024 --steps 28 --cfg 7 \
      --runs 1 --attention $attn | tee -a "$OUT/mmdit_$model.json"
  done
  python3 scripts/bench/bench_diffusers_sd3.py $L --size 1024 --steps 28 --cfg 7 --iters 10 --pipeline-runs 1 \
    2>"$OUT/diffusers_$model.err" | tee -a "$OUT/diffusers_$model.json"
done
