#!/usr/bin/env bash
# GPU-box round for one generation over several GPUs (issues 18 and 19; docs/SCALING.md). Run through the device
# tool on a multi-GPU kind from the repo root, carrying .carry/stb, .carry/layouts and tiny goldens (GOLDENS=...):
#   build     mmdit against the box's torch (fused kernels, NCCL);
#   parity    every tiny golden case of FLUX / CogVideoX (and SD3 when carried) on 1 GPU and on N GPUs with each
#             strategy: f32 <= 1 level and bf16 >= 45 dB against the one-GPU image;
#   runjobs   `mmdit run` of a 20-run job file (SD3.5-large 1024², 8 steps, random weights) on 1 GPU, then
#             `run --gpus N`: throughput;
#   multiprompt  issue 17 on one GPU: a 3-prompt CogVideoX-5B video at 480x720 (DiTCtrl tiles) against one clip
#             (three clips = 3x its time), MP_STEPS steps, bf16, random weights: time and peak memory;
#   sd35l flux cogvideox
#             per-step and whole-pipeline times, bf16, random weights, 1 GPU then N GPUs, same call; one JSON line
#             per rank (its peak memory).
# NCCL_NVLS_ENABLE=0 (the device tool's KINDS.md). Results: $OUT/results.jsonl, $OUT/log.txt.
#   GPUS=2 scripts/bench/multigpu_round.sh build parity sd35l flux cogvideox
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
M=$PWD/build-gpu/mmdit
R="$OUT/results.jsonl"
L=.carry/layouts
G=${GOLDENS:-.carry/goldens}
N=${GPUS:-2}
STEPS=${STEPS:-10}
timed() {  # label layout strategy args...: one GPU, then N GPUs with the strategy
  local w=$1 lay=$2 par=$3; shift 3
  $M bench --model "$lay" --random-weights --device cuda --dtype bf16 --runs 1 --steps $STEPS --warmup-steps 2 "$@" \
    | sed "s/^{/{\"label\": \"$w 1gpu\", /" | tee -a "$R"
  for p in $par; do
    $M bench --model "$lay" --random-weights --device cuda --dtype bf16 --runs 1 --steps $STEPS --warmup-steps 2 "$@" \
      --gpus $N --parallel $p | sed "s/^{/{\"label\": \"$w ${N}gpu $p\", /" | tee -a "$R"
  done
}
for w in "$@"; do case $w in
  build)
    cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMDIT_BUILD_TESTS=OFF -DMMDIT_WITH_FFMPEG=OFF \
      -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/cmake.txt" 2>&1 \
      || { tail -30 "$OUT/cmake.txt"; exit 1; }
    grep -i "nccl" "$OUT/cmake.txt"
    cmake --build build-gpu -j16 --target mmdit > "$OUT/build.txt" 2>&1 \
      || { grep -E "error" -A3 "$OUT/build.txt" | head -40; exit 1; } ;;
  parity)
    for g in sd3_pipeline flux cogvideox; do
      multi=(); for p in ${PARITY_STRATEGIES:-cfg ulysses auto}; do multi+=(--multi "--gpus $N --parallel $p"); done
      [ -d $G/$g ] && python3 scripts/bench/device_parity.py $M $G/$g "${multi[@]}" | tee -a "$R"
    done ;;
  sd35l) timed sd35l $L/sd3.5-large "${CFG_STRATEGIES:-cfg ulysses}" --width 1024 --height 1024 --cfg 7 ;;
  flux) timed flux $L/flux-dev "ulysses" --width 1024 --height 1024 ;;
  cogvideox) timed cogvideox $L/cogvideox-5b "${CFG_STRATEGIES:-cfg ulysses}" --width 720 --height 480 --frames 49 --cfg 6 ;;
  multiprompt)
    for p in 1 3; do
      $M bench --model $L/cogvideox-5b --random-weights --device cuda --dtype bf16 --runs 1 --steps ${MP_STEPS:-10} \
        --warmup-steps 1 --width 720 --height 480 --frames 49 --cfg 6 --prompts $p \
        | sed "s/^{/{\"label\": \"cogvideox-5b $p prompts\", /" | tee -a "$R"
    done ;;
  fullimage)
    # The same image on N GPUs as on one at full size: FLUX.1-dev 1024², 8 steps, random weights (the same on every
    # rank), bf16; Ulysses over N, and CFG x Ulysses on SD3.5-large.
    python3 - "$PWD/$L" "$OUT/full.json" $N <<'PY'
import json, sys
lay, n = sys.argv[1], int(sys.argv[3])
base = {"prompt": "a lighthouse at dusk", "seed": 3, "steps": 8, "width": 1024, "height": 1024, "device": "cuda", "dtype": "bf16"}
jobs = [dict(base, model=f"{lay}/flux-dev", output="/tmp/full/flux-1.png"),
        dict(base, model=f"{lay}/flux-dev", output=f"/tmp/full/flux-{n}.png", gpus=n, parallel="ulysses"),
        dict(base, model=f"{lay}/sd3.5-large", cfg=7, output="/tmp/full/sd35l-1.png"),
        dict(base, model=f"{lay}/sd3.5-large", cfg=7, output=f"/tmp/full/sd35l-{n}.png", gpus=n, parallel="auto")]
json.dump({"jobs": jobs}, open(sys.argv[2], "w"))
PY
    rm -rf /tmp/full; mkdir -p /tmp/full
    MMDIT_RANDOM_WEIGHTS=1 $M run -q "$OUT/full.json" --report "$OUT/full.jsonl" > /dev/null
    for m in flux sd35l; do
      echo "{\"label\": \"full-size $m 1 vs $N gpus\", \"compare\": $(python3 scripts/bench/psnr.py /tmp/full/$m-1.png /tmp/full/$m-$N.png)}" | tee -a "$R"
    done
    cp /tmp/full/*.png "$OUT/" ;;
  runjobs)
    python3 - "$PWD/$L/sd3.5-large" "$OUT/jobs20.json" <<'PY'
import json, sys
runs = [{"prompt": f"a lighthouse at dusk, study {i}", "seed": i} for i in range(20)]
d = {"model": sys.argv[1], "width": 1024, "height": 1024, "steps": 8, "cfg": 4.5, "device": "cuda", "dtype": "bf16",
     "output": "/tmp/jobs20/img-{index}.png"}
json.dump({"defaults": d, "jobs": runs}, open(sys.argv[2], "w"))
PY
    for g in 1 $N; do
      rm -rf /tmp/jobs20; mkdir -p /tmp/jobs20
      flag=(); [ $g -gt 1 ] && flag=(--gpus $g)
      t0=$(date +%s.%N)
      MMDIT_RANDOM_WEIGHTS=1 $M run -q "$OUT/jobs20.json" "${flag[@]}" --report "$OUT/jobs20-$g.jsonl" > /dev/null
      rc=$?
      t1=$(date +%s.%N)
      echo "{\"label\": \"run 20 jobs on $g gpu\", \"exit\": $rc, \"wall_s\": $(python3 -c "print(round($t1 - $t0, 2))"), \"images\": $(ls /tmp/jobs20 | wc -l)}" | tee -a "$R"
    done ;;
esac; echo "$w done after $(( $(date +%s) - start )) s"; done
echo "round done"
