#!/usr/bin/env python3
"""Makes tests/data/stg/: STG images from STGuidance's own CogVideoXSTGPipeline (junhahyung/STGuidance @ df04da0,
CogVideoX/pipeline_stg_cogvideox.py), run on the tiny CogVideoX-2B-like pipeline of the goldens, CPU float32.

The official code is not in this repository and cannot be fetched in CI, so its images are kept in
tests/data/stg/ (cases.json + PNG frames) and CTest compares mmdit against them (tests/test_controls.cpp).
Re-make them with a checkout (or a git mirror) of the repository:

    .venv/bin/python scripts/reference/stg_official.py PATH_TO_STGUIDANCE build/goldens/controls/tiny-cogvideox-2b

One shim, for the pinned diffusers 0.42.1: its CogVideoXTransformer3DModel passes `attention_kwargs=` to every
block, which the official forward_with_stg (written for an older diffusers) does not take; the shim drops that
argument (None here) and calls the official function unchanged.
"""
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

PROMPT = "a small red circle above a blue square"
CASES = [
    # name, guidance_scale, stg_scale, layers, do_rescaling, seed
    ("stg_cogvideox", 6.0, 1.0, [1], False, 71),
    ("stg_cogvideox_rescale", 6.0, 2.0, [0], True, 72),
]


def official_module(repo: pathlib.Path):
    src = repo / "CogVideoX" / "pipeline_stg_cogvideox.py"
    if not src.exists():  # a bare mirror: read the file from HEAD
        text = subprocess.run(["git", "-C", str(repo), "show", "HEAD:CogVideoX/pipeline_stg_cogvideox.py"],
                              check=True, capture_output=True, text=True).stdout
        src = pathlib.Path(tempfile.mkdtemp()) / "pipeline_stg_cogvideox.py"
        src.write_text(text)
    spec = importlib.util.spec_from_file_location("pipeline_stg_cogvideox", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    official = mod.forward_with_stg
    mod.forward_with_stg = lambda self, *a, attention_kwargs=None, **kw: official(self, *a, **kw)
    return mod


def main():
    repo, model = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "stg"
    out.mkdir(parents=True, exist_ok=True)
    mod = official_module(repo)
    cases = []
    for name, cfg, stg, layers, rescale, seed in CASES:
        pipe = mod.CogVideoXSTGPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
        gen = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            frames = pipe(prompt=PROMPT, negative_prompt="blurry", height=64, width=48, num_frames=9,
                          num_inference_steps=4, guidance_scale=cfg, stg_applied_layers_idx=layers, stg_scale=stg,
                          do_rescaling=rescale, generator=gen, output_type="np", max_sequence_length=16).frames[0]
        files = []
        for i, f in enumerate(frames):
            fn = f"{name}-{i:03d}.png"
            Image.fromarray((f * 255).round().astype(np.uint8)).save(out / fn)
            files.append(fn)
        args = (f"--prompt '{PROMPT}' --negative-prompt blurry --steps 4 --cfg {cfg} --frames 9 --width 48 --height 64 "
                f"--seed {seed} --max-sequence-length 16 --stg-scale {stg} --stg-layers {','.join(map(str, layers))}"
                + (" --stg-rescale" if rescale else ""))
        cases.append({"name": name, "model": model.name, "args": args, "video": True, "images": files})
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
