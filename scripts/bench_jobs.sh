#!/usr/bin/env bash
# `mmdit run` vs `mmdit generate` on the tiny SD3 pipeline (docs/BENCHMARKS.md, "Job files"): wall time of
# one `generate`, of 10 `generate`s in a row, and of one `run` of a 10-job file (same model, different
# prompts and seeds, 64x64, 2 steps, cfg 2). Usage: scripts/bench_jobs.sh [BUILD_DIR]
set -euo pipefail
build=${1:-build}
mmdit="$build/mmdit"
model="$(cd "$build/goldens/sd3_pipeline/tiny-sd3" && pwd)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
now() { date +%s.%N; }
args="--width 64 --height 64 --steps 2 --cfg 2"
t0=$(now); "$mmdit" generate -q --model "$model" $args --prompt "a red circle number 0" --seed 0 -o "$tmp/g.png" > /dev/null; t1=$(now)
one=$(echo "$t1 - $t0" | bc)
t0=$(now)
for i in $(seq 0 9); do "$mmdit" generate -q --model "$model" $args --prompt "a red circle number $i" --seed $i -o "$tmp/g$i.png" > /dev/null; done
t1=$(now); ten_gen=$(echo "$t1 - $t0" | bc)
{
  echo "{\"defaults\": {\"model\": \"$model\", \"width\": 64, \"height\": 64, \"steps\": 2, \"cfg\": 2, \"output\": \"r-{index}.png\"}, \"jobs\": ["
  for i in $(seq 0 9); do echo "{\"prompt\": \"a red circle number $i\", \"seed\": $i}$([ $i -lt 9 ] && echo ,)"; done
  echo "]}"
} > "$tmp/jobs.json"
t0=$(now); "$mmdit" run -q "$tmp/jobs.json" > /dev/null; t1=$(now)
run=$(echo "$t1 - $t0" | bc)
printf 'one generate: %.2f s\n10 generates: %.2f s\nrun, 10 jobs: %.2f s (%.1fx one generate, %.1fx faster than 10 generates)\n' \
  "$one" "$ten_gen" "$run" "$(echo "$run / $one" | bc -l)" "$(echo "$ten_gen / $run" | bc -l)"
