#!/usr/bin/env bash
# Trains the video demo model demo/shapes-video from nothing, with the recipe and step counts it was made with
# (docs/SHAPES.md, the video part), on one CUDA GPU with diffusers importable (on the GPU box: the wheel in .whl,
# see gpu_train_video.sh), then scores it on held-out captions with diffusers. About 45 minutes on one GPU
# (estimated from the nine device calls that made the model), so on the GPU box split it over commands with
# STAGES (a comma list; stages 4, 6 and 8 run beside 3, 5 and 7): STAGES=1,2 then 3, 5, 7, 9, 10, 11, 12, 13
# (the folder OUT must survive in between, or be carried).
#   scripts/shapes/reproduce_video.sh OUT_DIR     -> OUT_DIR/shapes-video, OUT_DIR/*.log, OUT_DIR/shapes-video/eval
# SMOKE=1 EVAL_N=2 runs every stage for a few CPU steps (train_video.py --smoke): a check of the script itself.
# The original stages 2, 3, 5, 7, 9-13 ran a cosine over a time budget (195, 238, 280, 280, 300, 330, 200, 290 and
# 290 s) that reached the step counts below, and stages 4, 6 and 8 (the decoder) likewise over 262, 280 and 280 s;
# here the cosines run over those steps. Training on the GPU is not bit-reproducible: a rerun gives an equivalent
# model, not the same files.
set -euo pipefail
OUT=${1:?usage: reproduce_video.sh OUT_DIR}
STAGES=${STAGES:-1,2,3,5,7,9,10,11,12,13}
has() { [[ ",$STAGES," == *",$1,"* ]]; }
T="${PY:-python3} scripts/shapes/train_video.py ${SMOKE:+--smoke}"
D="--n 30000 --data-cache $OUT/clips.npy"
mkdir -p "$OUT"
start=$(date +%s)
took() { echo "$1 done after $(( $(date +%s) - start )) s"; }
# rounds FROM DIT VAE "DIT_ARGS" DECODER_STEPS DECODER_LR LABEL: FROM's DiT and T5 continued at batch 1024 (into
# DIT) beside FROM's decoder fine-tuned alone (into VAE; the encoder and the latents stay): batch 32, a cosine to
# 10% over its steps, the shape's pixels (and their neighbours) weighted 5x against the background's.
rounds() {
  # shellcheck disable=SC2086
  $T "$OUT/$2" --resume "$OUT/$1" --vae-steps 0 $D --batch 1024 $4 > "$OUT/$2.log" 2>&1 &
  local dit_pid=$!
  $T "$OUT/$3" --resume "$OUT/$1" --decoder-only --object-weight 5 --vae-steps "$5" --vae-lr-schedule steps \
    --vae-batch 32 --vae-lr "$6" $D --dit-steps 0 > "$OUT/$3.log" 2>&1
  wait "$dit_pid"
  took "$7"
}
# combine DIT VAE DEST ABOUT STAGE:FOLDER...: DEST = DIT's pipeline (DiT, T5, tokenizer) with VAE's vae/, recorded.
combine() {
  local dit=$1 vae=$2 dest=$3; shift 3
  rm -rf "${OUT:?}/$dest" && cp -r "$OUT/$dit" "$OUT/$dest"
  rm -rf "$OUT/$dest/vae" && cp -r "$OUT/$vae/vae" "$OUT/$dest/vae"
  record "$dest" "$@"
}
# record DEST ABOUT STAGE:FOLDER...: DEST's shapes_video.json records the stages named (each from its folder's own
# shapes_video.json, read before DEST's is rewritten) and the held-out split.
record() {
  ${PY:-python3} - "$OUT" "$@" <<'EOF'
import json, pathlib, sys
out, dest, about, stages = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
stage = lambda d: {k: v for k, v in json.loads((out / d / "shapes_video.json").read_text()).items()  # noqa: E731
                   if k not in ("heldout_pairs", "heldout_motions", "resumed_from_run")}
dit = json.loads((out / dest / "shapes_video.json").read_text())
(out / dest / "shapes_video.json").write_text(json.dumps({
    "about": "The shapes-video demo model (scripts/shapes/, docs/SHAPES.md), made by scripts/shapes/reproduce_video.sh: "
             + about + ".",
    "size": dit["size"], "frames": dit["frames"], "max_text_seq_length": dit["max_text_seq_length"],
    "heldout_pairs": dit["heldout_pairs"], "heldout_motions": dit["heldout_motions"],
    "stages": {k: stage(d) for k, d in (s.split(":") for s in stages)}}, indent=1) + "\n")
EOF
}
if has 1; then
  # 1. The causal 3D VAE (3 blocks of 32, 64, 64 channels: 4x spatial, 4x temporal compression, 16 latent
  #    channels), encoder and decoder: 932 steps at batch 32, AdamW 1e-3 after 100 warm-up steps, 30000 clips.
  $T "$OUT/vae" $D --vae-steps 932 --vae-batch 32 --vae-lr 1e-3 --dit-steps 0 > "$OUT/vae.log" 2>&1
  took "1. VAE"
fi
if has 2; then
  # 2. The DiT (CogVideoXTransformer3DModel: 4 layers, 4 heads of 64, patch 2, 2B-like sin-cos positions) and the
  #    T5 encoder (2 layers, width 128) from scratch on stage 1's latents: batch 512, AdamW 2e-3, 200 warm-up
  #    steps, cosine to 5% over 1261 steps.
  $T "$OUT/dit" --vae-from "$OUT/vae" $D --layers 4 --heads 4 --batch 512 --lr 2e-3 --lr-floor 0.05 --warmup 200 \
    --dit-steps 1261 > "$OUT/dit.log" 2>&1
  took "2. DiT"
fi
if has 3; then
  # 3. Stage 2 continued: batch 1024, AdamW 1.5e-3, 100 warm-up steps, cosine to 2% over 796 steps; beside it
  # 4. stage 1's decoder alone (the latents stay): 1295 steps at batch 32, AdamW 5e-4 with a cosine to 10%, the
  #    shape's pixels (and their neighbours) weighted 5x against the background's.
  rounds dit dit2 vae2 "--lr 1.5e-3 --lr-floor 0.02 --warmup 100 --dit-steps 796" 1295 5e-4 \
    "3. DiT continued + 4. VAE decoder"
  combine dit2 vae2 m34 "the VAE, the DiT and T5 on its latents, the DiT continued beside the VAE's decoder fine-tuned alone" \
    1_vae:vae 2_dit:dit 3_dit_continued:dit2 4_vae_decoder:vae2
fi
if has 5; then
  # 5. Stages 3+4's DiT and T5 continued: batch 1024, AdamW 1e-3, 100 warm-up steps, cosine to 30% over 992 steps;
  #    beside it 6. stages 3+4's decoder fine-tuned further: 1363 steps at batch 32, AdamW 3e-4 with a cosine to
  #    10%, the shape's pixels weighted 5x.
  rounds m34 dit3 vae3 "--lr 1e-3 --lr-floor 0.3 --warmup 100 --dit-steps 992" 1363 3e-4 \
    "5. DiT continued + 6. VAE decoder"
  combine dit3 vae3 m56 "the VAE, the DiT and T5 on its latents, then two rounds of the DiT continued beside the VAE's decoder fine-tuned alone" \
    1_vae:vae 2_dit:dit 3_dit_continued:dit2 4_vae_decoder:vae2 5_dit_continued:dit3 6_vae_decoder:vae3
fi
if has 7; then
  # 7. Stages 5+6's DiT and T5 continued: batch 1024, AdamW 6e-4, 50 warm-up steps, cosine to 2% over 990 steps;
  #    beside it 8. stages 5+6's decoder: 1391 steps at batch 32, AdamW 2e-4 with a cosine to 10%, shape weighted 5x.
  rounds m56 dit4 vae4 "--lr 6e-4 --lr-floor 0.02 --warmup 50 --dit-steps 990" 1391 2e-4 \
    "7. DiT continued + 8. VAE decoder"
  # Stage 7's DiT, T5 and tokenizer with stage 8's VAE (stage 1's encoder, stage 8's decoder): the model until
  # stages 9-13 replaced its DiT.
  combine dit4 vae4 m78 "the VAE, the DiT and T5 on its latents, then three rounds of the DiT continued beside the VAE's decoder fine-tuned alone" \
    1_vae:vae 2_dit:dit 3_dit_continued:dit2 4_vae_decoder:vae2 5_dit_continued:dit3 6_vae_decoder:vae3 \
    7_dit_continued:dit4 8_vae_decoder:vae4
fi
# Stages 9-13: a new DiT on the same VAE, with its latents scaled 3.8x (docs/SHAPES.md "Why the DiT drew blobs":
# the shape is in the latents' spatial detail, which was 0.031 of their variance) and snr_shift_scale 1. Three steps
# in four train on first latent frames alone (batch 1024 images), the fourth on clips (batch 256).
S="--batch 256 --image-frac 0.75 --image-batch 1024 --lr-floor 0.05"
if has 9; then
  # 9. The DiT (4 layers, 4 heads of 64, patch 2) new, the T5 and tokenizer from stage 7, on stage 8's VAE: AdamW
  #    2e-3, 200 warm-up steps, cosine to 5% over 2771 steps.
  $T "$OUT/dit5" --vae-from "$OUT/m78" --text-from "$OUT/m78" --heads 4 --latent-scale 3.8 --snr-shift 1 $D $S \
    --lr 2e-3 --warmup 200 --dit-steps 2771 > "$OUT/dit5.log" 2>&1
  took "9. new DiT on scaled latents"
fi
# continued N FROM TO "train_video.py args": stage N, FROM's DiT and T5 continued on the same VAE into TO (TO.log).
continued() {
  # shellcheck disable=SC2086
  $T "$OUT/$3" --resume "$OUT/$2" --vae-steps 0 $D $S $4 > "$OUT/$3.log" 2>&1
  took "$1. DiT continued"
}
# 10-13. Each stage continues the one before: AdamW at the rate given, cosine to 5% over the steps given. 13 is the
# model.
has 10 && continued 10 dit5 dit6 "--lr 1e-3 --warmup 50 --dit-steps 6035"
has 11 && continued 11 dit6 dit7 "--lr 7e-4 --warmup 30 --dit-steps 3450"
has 12 && continued 12 dit7 dit8 "--lr 5e-4 --warmup 30 --dit-steps 3110"
if has 13; then
  continued 13 dit8 shapes-video "--lr 4e-4 --warmup 30 --dit-steps 6225"
  record shapes-video "the VAE, a first DiT and T5 on its latents with the VAE's decoder fine-tuned beside it, then a new DiT on the latents scaled 3.8x, continued four times" \
    1_vae:vae 2_dit:dit 3_dit_continued:dit2 4_vae_decoder:vae2 5_dit_continued:dit3 6_vae_decoder:vae3 \
    7_dit_continued:dit4 8_vae_decoder:vae4 9_dit_new:dit5 10_dit_continued:dit6 11_dit_continued:dit7 \
    12_dit_continued:dit8 13_dit_continued:shapes-video
  $T "$OUT/shapes-video" --eval-only --eval "${EVAL_N:-100}" ${SMOKE:+--eval-steps 2} > "$OUT/eval.log" 2>&1
  grep "held-out eval" "$OUT/eval.log"
  echo "$OUT/shapes-video"
fi
