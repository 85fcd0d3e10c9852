#!/usr/bin/env bash
# GPU box (2+ GPUs): ranks started with torchrun's variables (rank 0 serves the store) and generate --gpus, against one GPU.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
scripts/bench/multigpu_round.sh build > /dev/null 2>&1 || { echo build failed; tail -20 $OUT/build.txt; exit 1; }
M=$PWD/build-gpu/mmdit; G=.carry/slim/flux
args=(generate -q --model $G/tiny-flux-dev --prompt 'a purple heart' --negative-prompt 'blurry, ugly' --seed 1234 --steps 2 --guidance 2 --cfg 4 --width 64 --height 80 --max-sequence-length 32 --device cuda)
$M "${args[@]}" -o /tmp/one.png
export NCCL_NVLS_ENABLE=0
for p in cfg ulysses; do
  rm -f /tmp/tr.png
  t0=$(date +%s.%N)
  for r in 0 1; do RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29555 $M "${args[@]}" --parallel $p -o /tmp/tr.png & done; wait
  echo "torchrun-style 2 ranks --parallel $p ($(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s): $(python3 scripts/bench/psnr.py /tmp/one.png /tmp/tr.png)"
done
for g in 1 2; do
  t0=$(date +%s.%N); $M "${args[@]}" --gpus $g -o /tmp/g$g.png > /dev/null
  echo "generate --gpus $g wall $(python3 -c "print(round($(date +%s.%N) - $t0, 2))") s"
done
python3 scripts/bench/psnr.py /tmp/one.png /tmp/g2.png
