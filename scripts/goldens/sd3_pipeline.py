"""Whole-pipeline goldens: diffusers' StableDiffusion3Pipeline on tiny random SD3 and SD3.5-medium-like
pipelines (CPU, float32). Writes the pipeline folders, the expected PNGs, the prompt encodings and final
latents of each case, and cases.json describing the `mmdit generate` flags of each case."""
import json
import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from _tiny_sd3 import build_pipeline
from sd3 import sd3_to_sai, vae_to_ldm

CASES = [
    # name, variant, generate kwargs
    ("sd3_square_cfg", "sd3", dict(prompt="a small red circle above a blue square", seed=42, steps=4, cfg=7.0,
                                   width=128, height=128)),
    ("sd3_wide_nocfg", "sd3", dict(prompt="a large green star, next to a yellow moon!", seed=7, steps=3, cfg=1.0,
                                   width=96, height=64)),
    ("sd3_neg_batch", "sd3", dict(prompt="a purple heart", negative_prompt="blurry, ugly", seed=1234, steps=3,
                                  cfg=4.5, width=64, height=96, batch=2, shift=1.5, max_sequence_length=32)),
    ("sd35m_square_cfg", "sd35m", dict(prompt="a tiny cyan ring inside a black hexagon", seed=3, steps=4, cfg=5.0,
                                       width=128, height=128)),
    ("sd35m_slg_tall", "sd35m", dict(prompt="an orange cross below a pink diamond", negative_prompt="noise", seed=99,
                                     steps=5, cfg=6.0, width=64, height=128, slg_scale=2.8, slg_layers=[1, 2],
                                     slg_start=0.01, slg_stop=0.6)),
]


def run_case(pipe, k):
    gen = torch.Generator("cpu").manual_seed(k["seed"])
    kwargs = dict(prompt=k["prompt"], negative_prompt=k.get("negative_prompt"), num_inference_steps=k["steps"],
                  guidance_scale=k["cfg"], width=k["width"], height=k["height"], generator=gen,
                  num_images_per_prompt=k.get("batch", 1), max_sequence_length=k.get("max_sequence_length", 256),
                  output_type="np")
    if "shift" in k:
        pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, shift=k["shift"])
    if "slg_scale" in k:
        kwargs.update(skip_guidance_layers=k["slg_layers"], skip_layer_guidance_scale=k["slg_scale"],
                      skip_layer_guidance_start=k["slg_start"], skip_layer_guidance_stop=k["slg_stop"])
    captured = {}

    def keep(p, i, t, cb):  # the final latents, before the VAE
        captured["latents"] = cb["latents"].clone()
        return cb

    out = pipe(**kwargs, callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"]).images
    pe, npe, pp, npp = pipe.encode_prompt(prompt=k["prompt"], prompt_2=None, prompt_3=None,
                                          negative_prompt=k.get("negative_prompt"),
                                          do_classifier_free_guidance=True,
                                          max_sequence_length=k.get("max_sequence_length", 256))
    tensors = {"prompt_embeds": pe, "negative_prompt_embeds": npe, "pooled": pp, "negative_pooled": npp,
               "latents": captured["latents"]}
    return out, {n: t.contiguous() for n, t in tensors.items()}


def main(out: pathlib.Path):
    pipes = {v: build_pipeline(out / f"tiny-{v}", v, seed=0) for v in ("sd3", "sd35m")}
    cases = []
    for name, variant, k in CASES:
        pipe = pipes[variant]
        base_scheduler = pipe.scheduler
        with torch.no_grad():
            images, tensors = run_case(pipe, k)
        pipe.scheduler = base_scheduler
        save_file(tensors, str(out / f"{name}.safetensors"))
        files = []
        for i, img in enumerate(images):
            # diffusers' postprocess to uint8: (x * 255).round() on [0, 1] floats
            arr = (img * 255).round().astype(np.uint8)
            f = f"{name}-{i}.png" if len(images) > 1 else f"{name}.png"
            Image.fromarray(arr).save(out / f)
            files.append(f)
        cases.append({"name": name, "model": f"tiny-{variant}", "params": k, "images": files})
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
    # Stability's single-file layout of the tiny SD3 (transformer + VAE), from the inverse conversion.
    p = pipes["sd3"]
    sai = dict(sd3_to_sai(p.transformer.state_dict(), p.transformer.config.num_layers))  # prefixed already
    sai.update(vae_to_ldm(p.vae.state_dict(), len(p.vae.config.block_out_channels)))
    save_file({k: v.contiguous() for k, v in sai.items()}, str(out / "tiny-sd3-sai.safetensors"))
