#!/usr/bin/env python3
"""Makes tests/data/regional/: regional-prompt images from InstantX's own code (instantX-research/
Regional-Prompting-FLUX @ 6011179: pipeline_flux_regional.py's RegionalFluxPipeline and RegionalFluxAttnProcessor2_0,
transformer_flux.py's FluxTransformer2DModel with the base stream), run on the tiny FLUX.1-dev-like pipeline of the
goldens, CPU float32.

The official code is not in this repository and cannot be fetched in CI, so its images are kept in
tests/data/regional/ (cases.json + PNG) and CTest compares mmdit against them (tests/test_controls.cpp).
Re-make them with a checkout (or a git mirror) of the repository:

    .venv/bin/python scripts/reference/regional_official.py PATH_TO_REPO build/goldens/controls/tiny-flux-dev

It also records the official transformer's inputs and output at the first step of the first case
(transformer_io.safetensors: latents, the regions' encodings side by side, the base encoding, pooled, timestep,
guidance, ids, the output): the tiny model's images respond little to text and masks, so the transformer output is
where the test can tell regional attention from plain attention.

The code was written for an older diffusers; two mechanical shims let it run on the pinned 0.42.1, nothing else
changes: transformer_flux.py's package-relative imports (it replaces the file inside diffusers) become absolute,
and the pipeline's vae_scale_factor is 16 as it was then (the mask grid and the shift use it), while diffusers
0.42's prepare_latents / _unpack_latents, which now expect 8, get 8.
"""
import importlib.util
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

BASE = "a small red circle above a blue square"
CASES = [
    # name, width, height, steps, regions [(box, prompt)], background prompt, mask_inject_steps, base_ratio, seed
    ("regional_flux_two", 128, 128, 4, [((0, 0, 64, 128), "a red circle"), ((64, 0, 128, 128), "a blue square")],
     None, 3, 0.3, 81),
    ("regional_flux_background", 128, 96, 4, [((16, 16, 80, 80), "a green star")], "a white wall", 2, 0.2, 82),
]


def source(repo: pathlib.Path, name: str) -> str:
    if (repo / name).exists():
        return (repo / name).read_text()
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{name}"], check=True, capture_output=True,
                          text=True).stdout


def load(repo: pathlib.Path):
    tmp = pathlib.Path(tempfile.mkdtemp())
    text = source(repo, "transformer_flux.py")
    text = re.sub(r"from \.\.\.(\w+)", r"from diffusers.\1", text)
    text = re.sub(r"from \.\.(\w+)", r"from diffusers.models.\1", text)
    (tmp / "transformer_flux.py").write_text(text)
    (tmp / "pipeline_flux_regional.py").write_text(source(repo, "pipeline_flux_regional.py"))
    sys.path.insert(0, str(tmp))
    import pipeline_flux_regional  # noqa: E402
    import transformer_flux  # noqa: E402
    return pipeline_flux_regional, transformer_flux


def main():
    repo, model = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "regional"
    out.mkdir(parents=True, exist_ok=True)
    pfr, tf = load(repo)

    class Pipeline(pfr.RegionalFluxPipeline):
        def prepare_latents(self, *args, **kwargs):
            self.vae_scale_factor = 8
            try:
                return super().prepare_latents(*args, **kwargs)
            finally:
                self.vae_scale_factor = 16

        @staticmethod
        def _unpack_latents(latents, height, width, vae_scale_factor):
            return pfr.RegionalFluxPipeline._unpack_latents(latents, height, width, 8)

    transformer = tf.FluxTransformer2DModel.from_pretrained(str(model / "transformer"), torch_dtype=torch.float32)
    pipe = Pipeline.from_pretrained(str(model), transformer=transformer, torch_dtype=torch.float32)
    pipe.vae_scale_factor = 16
    procs = {name: pfr.RegionalFluxAttnProcessor2_0() if "transformer_blocks" in name and name.endswith("attn.processor")
             else proc for name, proc in pipe.transformer.attn_processors.items()}
    pipe.transformer.set_attn_processor(procs)
    cases = []
    for name, width, height, steps, regions, background, inject, ratio, seed in CASES:
        # infer_flux_regional.py: box masks in pixels, the background appended when the boxes leave pixels uncovered.
        prompts, masks = [], []
        background_mask = torch.ones((height, width))
        for (x1, y1, x2, y2), prompt in regions:
            mask = torch.zeros((height, width))
            mask[y1:y2, x1:x2] = 1.0
            background_mask -= mask
            prompts.append(prompt)
            masks.append(mask)
        if background_mask.sum() > 0:
            prompts.append(background if background else BASE)
            masks.append(background_mask)
        for p in pipe.transformer.attn_processors.values():  # a fresh mask per case
            if isinstance(p, pfr.RegionalFluxAttnProcessor2_0):
                p.regional_mask = None
        record = {}
        forward = pipe.transformer.forward

        def recording(*a, **kw):
            y = forward(*a, **kw)
            if not record and kw.get("base_ratio") is not None:
                record.update(hidden_states=kw["hidden_states"], encoder_hidden_states=kw["encoder_hidden_states"],
                              encoder_hidden_states_base=kw["encoder_hidden_states_base"],
                              pooled=kw["pooled_projections"], timestep=kw["timestep"], guidance=kw["guidance"],
                              img_ids=kw["img_ids"], txt_ids=kw["txt_ids"], out=y[0])
            return y

        pipe.transformer.forward = recording
        with torch.no_grad():
            image = pipe(prompt=BASE, num_samples=1, width=width, height=height, mask_inject_steps=inject,
                         guidance_scale=3.5, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
                         joint_attention_kwargs={"regional_prompts": prompts, "regional_masks": masks,
                                                 "double_inject_blocks_interval": 1, "single_inject_blocks_interval": 1,
                                                 "base_ratio": ratio},
                         output_type="np").images[0]
        pipe.transformer.forward = forward
        if name == CASES[0][0]:
            from safetensors.torch import save_file
            save_file({k: v.detach().float().contiguous() for k, v in record.items()}, str(out / "transformer_io.safetensors"),
                      metadata={"case": name})
        fn = f"{name}.png"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(out / fn)
        args = (f"--prompt '{BASE}' --steps {steps} --guidance 3.5 --width {width} --height {height} --seed {seed} "
                + " ".join(f"--region '{x1},{y1},{x2},{y2}:{p}'" for (x1, y1, x2, y2), p in regions)
                + (f" --region-background '{background}'" if background else "")
                + f" --region-steps {inject} --region-base-ratio {ratio}")
        cases.append({"name": name, "model": model.name, "args": args, "images": [fn]})
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
