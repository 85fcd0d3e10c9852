#!/usr/bin/env bash
# Fills the git-ignored .carry/ and .whl/ folders that scripts/bench/gpu_round.sh needs on the GPU box
# (which lacks stb, diffusers and network access). Needs the goldens (ctest) built first.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.carry/' .git/info/exclude || echo '/.carry/' >> .git/info/exclude
mkdir -p .carry .whl
[ -d .carry/stb ] || (cd .carry && apt-get download libstb-dev && dpkg -x libstb-dev_*.deb stb && rm -f ./*.deb)
# The cudnn-frontend headers for --fp8-attention (the box's torch has cuDNN, not these headers).
rm -rf .carry/cudnn_frontend && mkdir -p .carry/cudnn_frontend
cp -r .venv/lib/python3.11/site-packages/include .carry/cudnn_frontend/include
ls .whl/diffusers-0.42.1-*.whl >/dev/null 2>&1 || .venv/bin/pip download -q --no-deps -d .whl diffusers==0.42.1
rm -rf .carry/layouts .carry/tiny-sd3
mkdir -p .carry/layouts
cp -r ../shared/model-layouts/stabilityai/stable-diffusion-3.5-large .carry/layouts/sd3.5-large
cp -r .carry/layouts/sd3.5-large .carry/layouts/sd3.5-medium
cp configs/sd3.5-medium-transformer.json .carry/layouts/sd3.5-medium/transformer/config.json
rm -f .carry/layouts/sd3.5-medium/transformer/*.index.json
.venv/bin/python scripts/bench/make_layouts.py .carry/layouts
cp -r build/goldens/sd3_pipeline/tiny-sd3 .carry/tiny-sd3
# Tiny golden cases for device parity (models, cases.json, expected images).
rm -rf .carry/goldens && mkdir -p .carry/goldens
for g in sd3_pipeline flux cogvideox; do
  mkdir -p .carry/goldens/$g
  cp build/goldens/$g/cases.json build/goldens/$g/*.png .carry/goldens/$g/
  for m in $(python3 -c "import json,sys; print(' '.join(sorted({c['model'] for c in json.load(open('build/goldens/$g/cases.json'))})))"); do
    cp -r build/goldens/$g/$m .carry/goldens/$g/
  done
done
# The attention-control cases (scripts/bench/controls_check.py): models, images, maps golden.
cp -r build/goldens/controls .carry/goldens/controls
rm -f .carry/goldens/controls/.stamp .carry/goldens/controls/guiders.safetensors .carry/goldens/controls/text_scale.safetensors
cp build/goldens/sd3_pipeline/sd3_square_cfg.png .carry/
du -sh .carry .whl
