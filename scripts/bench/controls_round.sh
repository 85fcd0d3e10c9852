#!/usr/bin/env bash
# GPU-box round for the attention controls (run through the device tool from the repo root, carrying .carry; make
# .carry with scripts/bench/prepare_carry.sh after a ctest run, which also copies build/goldens/controls):
#   1. builds mmdit against the box's torch;
#   2. every control golden case (scripts/goldens/controls.py, tests/data/stg) on CUDA in f32 and bf16 against the
#      CPU float32 images, and the attention maps against the explicit-probability golden: the log-sum-exp the
#      CUDA kernels return (flash, memory-efficient, cuDNN) must give the CPU's maps;
#   3. times the controls' overhead on full-size models with random bf16 weights (mmdit bench --variant: one
#      loaded pipeline per model): SD3.5-large 1024² plain CFG (2 rows), three plain rows (--batch 3 --cfg 1),
#      PAG on one layer (image and full identity), SoftPAG on 9 heads, attention maps; FLUX.1-dev 1024² plain and
#      with attention maps (peak memory).
# Results: $OUT/results.jsonl (one JSON line per case or timing) and $OUT/log.txt.
#   4. the GPU checks of the LSE-returning kernels (tests/gpu_checks.cpp) and regional prompts' cost (FLUX.1-dev and
#      SD3.5-large 1024², two regions, every step regional, against plain steps; both attention paths).
#   5. an edit's cost (mmdit edit: the source pass that derives the mask, then source and target together) against
#      a plain generation and a plain batch of two.
#   6. editing a given image (inversion, then the pair) and FreeFlux's edits, against a plain batch of two.
#   7. regions0: regional prompts with --region-base-ratio 0 (no base rows) on FLUX.1-dev and SD3.5-large.
#   8. editsteps: a generated edit at 28 steps, the official mask pass against --edit-mask-steps 1.
# NO_BUILD=1 uses build-gpu/mmdit as it is (prebuilt: see speed_round.sh prebuilt, and export its LD_LIBRARY_PATH).
#   scripts/bench/controls_round.sh [check] [sd35l] [flux] [gpucheck] [regions] [regions0] [edit] [editsteps]
#   [editimage]
#   (default: the first three)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
WHAT=${*:-check sd35l flux}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
if [ -z "${NO_BUILD:-}" ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMDIT_BUILD_TESTS=OFF -DMMDIT_WITH_FFMPEG=OFF \
    -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/cmake.txt" 2>&1 \
    || { tail -30 "$OUT/cmake.txt"; exit 1; }
  cmake --build build-gpu -j16 > "$OUT/build.txt" 2>&1 || { grep -E "error" -A3 "$OUT/build.txt" | head -40; exit 1; }
  echo "built in $(( $(date +%s) - start )) s"
fi
M=$PWD/build-gpu/mmdit
R="$OUT/results.jsonl"
L=.carry/layouts
for w in $WHAT; do case $w in
  check)
    python3 scripts/bench/controls_check.py "$M" .carry/goldens/controls .carry/goldens/controls tests/data/stg \
      tests/data/regional | tee -a "$R" ;;
  checkregions)
    python3 scripts/bench/controls_check.py "$M" .carry/goldens/controls tests/data/regional | tee -a "$R" ;;
  sd35l)
    # The 9 heads: HeadHunter's SD3 examples (Fig. 32), as layer:head pairs of SD3.5-large's 38 x 38.
    $M bench --model $L/sd3.5-large --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
      --steps 10 --warmup-steps 3 --cfg 7 \
      --variant '--cfg 1 --batch 3' \
      --variant '--pag-scale 3 --pag-layers 13' \
      --variant '--pag-scale 3 --pag-layers 13 --pag-mode full' \
      --variant '--pag-scale 3 --pag-heads 13:18,0:2,0:3,0:4,14:1,14:7,15:3,15:20,16:3 --pag-u 0.5' \
      --variant '--attention-maps /tmp/maps-sd35l' | tee -a "$R" ;;
  gpucheck)
    cmake --build build-gpu -j16 --target mmdit_gpu_checks >> "$OUT/build.txt" 2>&1 && build-gpu/mmdit_gpu_checks | tee -a "$R" ;;
  regions)
    # Both attention paths of the regions (controls/regional.h RegionKernel): dense calls per region, one masked call.
    for k in dense mask; do
      $M bench --model $L/flux-dev --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
        --steps 10 --warmup-steps 3 --region-kernel $k \
        --variant "--region '0,0,512,1024:a red sports car' --region '512,0,1024,1024:a blue sports car' --region-steps 10" \
        --variant "--region '0,0,512,512:a red sports car' --region '512,512,1024,1024:a blue sports car' --region-steps 10" \
        | tee -a "$R"
      $M bench --model $L/sd3.5-large --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
        --steps 10 --warmup-steps 3 --cfg 7 --region-kernel $k \
        --variant "--region '0,0,512,1024:a red sports car' --region '512,0,1024,1024:a blue sports car' --region-steps 10" \
        | tee -a "$R"
    done ;;
  regions0)
    # --region-base-ratio 0: no base rows (one row per image), dense calls per region.
    $M bench --model $L/flux-dev --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
      --steps 10 --warmup-steps 3 \
      --variant "--region '0,0,512,1024:a red sports car' --region '512,0,1024,1024:a blue sports car' --region-steps 10 --region-base-ratio 0" \
      --variant "--region '0,0,512,512:a red sports car' --region '512,512,1024,1024:a blue sports car' --region-steps 10 --region-base-ratio 0" \
      | tee -a "$R"
    $M bench --model $L/sd3.5-large --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
      --steps 10 --warmup-steps 3 --cfg 7 \
      --variant "--region '0,0,512,1024:a red sports car' --region '512,0,1024,1024:a blue sports car' --region-steps 10 --region-base-ratio 0" \
      | tee -a "$R" ;;
  edit)
    for m in sd3.5-large flux-dev; do
      $M bench --model $L/$m --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
        --steps 10 --warmup-steps 3 $( [ $m = sd3.5-large ] && echo --cfg 7 ) \
        --variant '--batch 2' \
        --variant "--source-prompt 'a photo of a cat riding a horse on mars' --edit-words cat" | tee -a "$R"
    done ;;
  editsteps)
    # A generated edit at the official 28 steps: the plain batch of two, the official edit (a source pass over every
    # step for the mask), and --edit-mask-steps 1 (a one-step source pass, the mask refined during the pair).
    for m in sd3.5-large flux-dev; do
      $M bench --model $L/$m --random-weights --device cuda --dtype bf16 --runs 1 --width 1024 --height 1024 \
        --steps 28 --warmup-steps 2 $( [ $m = sd3.5-large ] && echo --cfg 7 ) \
        --variant '--batch 2' \
        --variant "--source-prompt 'a photo of a cat riding a horse on mars' --edit-words cat" \
        --variant "--source-prompt 'a photo of a cat riding a horse on mars' --edit-words cat --edit-mask-steps 1" \
        | tee -a "$R"
    done ;;
  editimage)
    # Editing a given image (--image, scaled to 1024² with --resize): the inversion, then source and target
    # together, against a plain batch of two at CFG 1 (the default of image edits); FreeFlux's edits on FLUX.
    IMG=tests/data/consistedit/consistedit_colour-source.png
    # The same edit without edit words (the source prompt is the bench's prompt): no mask to derive, the rest the
    # same, so the difference is the mask's cost.
    SRC="--source-prompt 'a photo of a cat riding a horse on mars' --edit-words cat --image $IMG --resize"
    NOMASK="--source-prompt 'a photo of an astronaut riding a horse on mars' --image $IMG --resize"
    $M bench --model $L/sd3.5-large --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
      --steps 10 --warmup-steps 3 --cfg 1 --variant '--batch 2' --variant "$SRC" --variant "$NOMASK" | tee -a "$R"
    $M bench --model $L/flux-dev --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
      --steps 10 --warmup-steps 3 --variant '--batch 2' --variant "$SRC" --variant "$NOMASK" \
      --variant "--source-prompt 'a photo of a cat riding a horse on mars' --edit-method freeflux-nonrigid" \
      --variant "--source-prompt 'a photo of a horse on mars' --edit-method freeflux-add --edit-words astronaut" \
      | tee -a "$R" ;;
  flux)
    $M bench --model $L/flux-dev --random-weights --device cuda --dtype bf16 --runs 2 --width 1024 --height 1024 \
      --steps 10 --warmup-steps 3 \
      --variant '--attention-maps /tmp/maps-flux' \
      --variant '--pag-scale 3 --pag-layers 20 --pag-mode full' | tee -a "$R" ;;
esac; echo "$w done after $(( $(date +%s) - start )) s"; done
echo "round done"
