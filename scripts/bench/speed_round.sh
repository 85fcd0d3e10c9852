#!/usr/bin/env bash
# GPU-box round for the fast path (issue 14; run through the device tool from the repo root, carrying .carry/stb,
# .carry/cudnn_frontend, .carry/layouts, the tiny goldens under .carry/goldens and .whl; make them with
# scripts/bench/prepare_carry.sh):
#   build     mmdit and mmdit_gpu_checks against the box's torch, with the fused CUDA kernels;
#   prebuilt  instead of build: build-gpu/mmdit and mmdit_gpu_checks built on the CPU machine against the same
#             torch wheel (cmake -B build-gpu ... as below, -j2, then strip), with the Debian libraries the box
#             lacks copied into build-gpu/lib (libspdlog.so.1.10, libfmt.so.9, libsentencepiece.so.0); carry the
#             two files and build-gpu/lib. They run with those and the box's torch, cuDNN and CUDA libraries
#             (saves the box's minutes of compiling);
#   gpucheck  the kernels against their ATen references (and the LSE kernels);
#   parity    every tiny golden case on CUDA in f32 and bf16: fused against diffusers' f32 CPU
#             images and against --cuda-graphs (the same image), with UNFUSED=1 also against --no-fused (PSNR:
#             lossless means >= 45 dB in bf16);
#   sd35l sd35m flux cogvideox
#             per-step times, bf16, random weights, same call: mmdit fused, mmdit fused with --cuda-graphs,
#             mmdit --no-fused (same loaded pipeline), diffusers eager; with PROFILE=1 also each mmdit variant's
#             GEMM / attention / other split (trace-0: fused, trace-1: --cuda-graphs, trace-2: --no-fused);
#             PLAIN=1 leaves the --cuda-graphs and --no-fused variants out; with FP8=1 also mmdit --fp8 (a second load: fp8 frees the bf16 weights),
#             and on FLUX and CogVideoX --fp8 --fp8-attention (a third);
#   fp8psnr   --fp8 (FLUX: also with --fp8-attention) against bf16 at full size: each family's image (CogVideoX: every frame) from the same random
#             weights and seed, PSNR;
#   fp8psnr-flux  the same for FLUX alone;
#   fp8demo   --fp8 on the trained demo (demo/shapes-world, bf16 on CUDA): checker scores of 100 held-out captions x 2
#             seeds with and without fp8, and the PSNR between the two sets.
# Results: $OUT/results.jsonl, $OUT/log.txt.   scripts/bench/speed_round.sh build gpucheck parity sd35l ...
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null && export PYTHONPATH=/tmp/site
start=$(date +%s)
M=$PWD/build-gpu/mmdit
R="$OUT/results.jsonl"
L=.carry/layouts
STEPS=${STEPS:-10}
G=${GOLDENS:-.carry/goldens}  # the tiny golden folders (prepare_carry.sh); the controls' models may be links to them
pair() {  # family layout args...: mmdit (fused, then --no-fused) and diffusers eager, same settings
  local fam=$1 lay=$2; shift 2
  local prof=() variants=(--variant '--cuda-graphs' --variant '--no-fused')
  [ -n "${PLAIN:-}" ] && variants=()
  [ -n "${PROFILE:-}" ] && mkdir -p "$OUT/prof-$w" && prof=(--profile "$OUT/prof-$w")
  $M bench --model "$lay" --random-weights --device cuda --dtype bf16 --runs 1 --steps $STEPS --warmup-steps 2 "$@" \
    "${prof[@]}" "${variants[@]}" | tee -a "$R"
  if [ -n "${PROFILE:-}" ]; then
    for t in "$OUT/prof-$w"/trace-*.json; do
      python3 scripts/bench/profile_summary.py "$t" --steps $((STEPS - 1)) --label "$w $(basename $t)" | tee -a "$R"
    done
    rm -rf "$OUT/prof-$w"
  fi
  [ -n "${FP8:-}" ] && $M bench --model "$lay" --random-weights --device cuda --dtype bf16 --runs 1 --steps $STEPS \
    --warmup-steps 2 --fp8 "$@" | sed -E 's/"variant": ?""/"variant": "--fp8"/' | tee -a "$R"
  [ -n "${FP8:-}" ] && [ $fam != sd3 ] && $M bench --model "$lay" --random-weights --device cuda --dtype bf16 --runs 1 \
    --steps $STEPS --warmup-steps 2 --fp8 --fp8-attention "$@" \
    | sed -E 's/"variant": ?""/"variant": "--fp8 --fp8-attention"/' | tee -a "$R"
  python3 scripts/bench/bench_diffusers.py "$lay" --family "$fam" --steps $STEPS --warmup-steps 2 "$@" \
    2>>"$OUT/diffusers.err" | tee -a "$R"
}
fp8_psnr() {  # name layout output job-keys [att]: the bf16 and the --fp8 output of the same random weights and
  # seed; with att also --fp8 --fp8-attention
  local d="$OUT/fp8-$1" att=""; mkdir -p "$d"
  [ -n "${5:-}" ] && att=$(printf ', {"output": "%s/fp8att/%s", "fp8": true, "fp8_attention": true}' "$d" "$3")
  printf '{"defaults": {"model": "%s", "device": "cuda", "dtype": "bf16", "seed": 1, "steps": %s, %s},
    "jobs": [{"output": "%s/bf16/%s"}, {"output": "%s/fp8/%s", "fp8": true}%s]}' "$PWD/$2" "$STEPS" "$4" "$d" "$3" "$d" "$3" \
    "$att" > "$d/jobs.json"
  MMDIT_RANDOM_WEIGHTS=1 $M run -q "$d/jobs.json" --report "$d/report.jsonl" > /dev/null || { echo "fp8 $1 failed"; return; }
  python3 scripts/bench/psnr_dirs.py "fp8 $1" "$d/bf16" "$d/fp8" | tee -a "$R"
  [ -n "$att" ] && python3 scripts/bench/psnr_dirs.py "fp8 attention $1" "$d/bf16" "$d/fp8att" | tee -a "$R"
  rm -rf "$d/bf16" "$d/fp8" "$d/fp8att"
}
for w in "$@"; do case $w in
  prebuilt)
    T=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
    export LD_LIBRARY_PATH="$PWD/build-gpu/lib:$T/lib:$T/../nvidia/cudnn/lib:$T/../nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ldd "$M" build-gpu/mmdit_gpu_checks | grep 'not found'; then echo "prebuilt: libraries missing"; exit 1; fi ;;
  build)
    cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMDIT_BUILD_TESTS=OFF -DMMDIT_WITH_FFMPEG=OFF \
      -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/cmake.txt" 2>&1 \
      || { tail -30 "$OUT/cmake.txt"; exit 1; }
    cmake --build build-gpu -j16 --target mmdit mmdit_gpu_checks > "$OUT/build.txt" 2>&1 \
      || { grep -E "error" -A3 "$OUT/build.txt" | head -40; exit 1; } ;;
  gpucheck) build-gpu/mmdit_gpu_checks | tee -a "$R" | grep -v '"ok": true' ; echo "gpu checks exit ${PIPESTATUS[0]}" ;;
  parity)
    for g in sd3_pipeline flux cogvideox; do
      [ -d $G/$g ] && python3 scripts/bench/device_parity.py $M $G/$g ${UNFUSED:+--unfused} --multi=--cuda-graphs | tee -a "$R"
    done ;;
  controls)
    for m in sd3_pipeline/tiny-sd3 flux/tiny-flux-dev; do
      [ -e $G/controls/$(basename $m) ] || ln -s ../$m $G/controls/$(basename $m)
    done
    python3 scripts/bench/controls_check.py "$M" $G/controls $G/controls tests/data/stg tests/data/regional | tee -a "$R" ;;
  fp8psnr)
    fp8_psnr sd35l $L/sd3.5-large x.png '"width": 1024, "height": 1024, "cfg": 7, "prompt": "a red fox in the snow"'
    fp8_psnr sd35m $L/sd3.5-medium x.png '"width": 1024, "height": 1024, "cfg": 7, "prompt": "a red fox in the snow"'
    fp8_psnr flux $L/flux-dev x.png '"width": 1024, "height": 1024, "prompt": "a red fox in the snow"' att
    fp8_psnr cogvideox $L/cogvideox-5b 'f_%03d.png' '"width": 720, "height": 480, "frames": 49, "cfg": 6, "prompt": "a red fox running in the snow"' ;;
  fp8psnr-flux)
    fp8_psnr flux $L/flux-dev x.png '"width": 1024, "height": 1024, "prompt": "a red fox in the snow"' att ;;
  fp8demo)
    for v in bf16 fp8; do
      python3 scripts/shapes/evaluate.py demo/shapes-world --mmdit $M --device cuda --dtype bf16 --out "$OUT/demo-$v" \
        $( [ $v = fp8 ] && echo --set fp8=true ) \
        | V=$v python3 -c 'import json,os,sys; print(json.dumps({"demo": os.environ["V"], **json.load(sys.stdin)}))' \
        | tee -a "$R"
    done
    python3 scripts/bench/psnr_dirs.py "fp8 demo" "$OUT/demo-bf16/mmdit" "$OUT/demo-fp8/mmdit" | tee -a "$R"
    rm -rf "$OUT/demo-bf16/mmdit" "$OUT/demo-fp8/mmdit" ;;
  sd35l) pair sd3 $L/sd3.5-large --width 1024 --height 1024 --cfg 7 ;;
  sd35m) pair sd3 $L/sd3.5-medium --width 1024 --height 1024 --cfg 7 ;;
  flux) pair flux $L/flux-dev --width 1024 --height 1024 ;;
  cogvideox) pair cogvideox $L/cogvideox-5b --width 720 --height 480 --frames 49 --cfg 6 ;;
esac; echo "$w done after $(( $(date +%s) - start )) s"; done
echo "round done"
