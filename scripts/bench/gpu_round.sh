#!/usr/bin/env bash
# One GPU-box round (run through the device tool from the repo root, carrying .carry and .whl; make
# .carry with scripts/bench/prepare_carry.sh): builds mmdit against the box's torch, checks CUDA images
# of a tiny golden case against the float32 CPU golden, then times mmdit and diffusers eager in the same
# call on full-size configs with random bf16 weights made on the GPU. Results: $OUT/results.jsonl, log.
#   scripts/bench/gpu_round.sh [sd3] [flux] [cogvideox] [parity] [bf16ref] [cogmem]   (default: the first three)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
WHAT=${*:-sd3 flux cogvideox}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMDIT_BUILD_TESTS=OFF -DMMDIT_WITH_FFMPEG=OFF \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/cmake.txt" 2>&1 \
  || { tail -30 "$OUT/cmake.txt"; exit 1; }
cmake --build build-gpu -j16 > "$OUT/build.txt" 2>&1 || { grep -E "error" -A3 "$OUT/build.txt" | head -40; exit 1; }
M=build-gpu/mmdit
R="$OUT/results.jsonl"
L=.carry/layouts
bench() {  # family layout mmdit-args... -- diffusers-args...
  local fam=$1 lay=$2; shift 2
  local margs=() dargs=() sep=0
  for x in "$@"; do if [ "$x" = "--" ]; then sep=1; elif [ $sep = 0 ]; then margs+=("$x"); else dargs+=("$x"); fi; done
  $M bench --model "$lay" --random-weights --device cuda --dtype bf16 --runs 1 "${margs[@]}" | tee -a "$R"
  python3 scripts/bench/bench_diffusers.py "$lay" --family "$fam" "${dargs[@]}" 2>>"$OUT/diffusers.err" | tee -a "$R"
}
for w in $WHAT; do case $w in
  sd3)
    P='--prompt "a small red circle above a blue square" --seed 42 --steps 4 --cfg 7 --width 128 --height 128'
    for dt in f32 bf16; do
      eval $M generate -q --model .carry/tiny-sd3 $P --device cuda --dtype $dt -o /tmp/tiny_$dt.png
      echo "{\"check\": \"tiny sd3 cuda $dt vs cpu f32 golden\", \"result\": $(python3 scripts/bench/psnr.py /tmp/tiny_$dt.png .carry/sd3_square_cfg.png)}" | tee -a "$R"
    done
    for m in sd3.5-large sd3.5-medium; do
      bench sd3 $L/$m --width 1024 --height 1024 --steps 28 --cfg 7 --warmup-steps 2 -- --width 1024 --height 1024 --steps 28 --cfg 7
    done ;;
  flux)
    bench flux $L/flux-dev --width 1024 --height 1024 --steps 28 --warmup-steps 2 -- --width 1024 --height 1024 --steps 28 ;;
  parity)  # every tiny golden case on CUDA, f32 and bf16, against diffusers' f32 CPU images
    for g in sd3_pipeline flux cogvideox; do
      python3 scripts/bench/device_parity.py $M .carry/goldens/$g | tee -a "$R"
    done ;;
  bf16ref)  # bf16 on CUDA: mmdit against diffusers' own bf16 run of every tiny golden case
    for g in sd3_pipeline flux cogvideox; do
      python3 scripts/bench/bf16_vs_diffusers.py $M .carry/goldens/$g --device cuda --dtype bf16 2>>"$OUT/bf16ref.err" | tee -a "$R"
    done ;;
  cogmem)  # CogVideoX-5B peak device memory with and without VAE tiling (2 steps: memory, not speed)
    for t in "" --vae-tiling; do
      $M bench --model $L/cogvideox-5b --random-weights --device cuda --dtype bf16 --runs 1 --width 720 --height 480 \
        --frames 49 --steps 2 --warmup-steps 1 $t | tee -a "$R"
    done ;;
  cogvideox)
    bench cogvideox $L/cogvideox-5b --width 720 --height 480 --frames 49 --steps 50 --cfg 6 --warmup-steps 2 \
      -- --width 720 --height 480 --frames 49 --steps 50 --cfg 6 ;;
esac; done
echo "round done"
