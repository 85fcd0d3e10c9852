#!/usr/bin/env python3
"""Writes weightless model folders (configs + tokenizer files, as on the Hub) for GPU timing runs with
random weights: FLUX.1-dev (copied from ../shared/model-layouts) and CogVideoX-5b (its configs, built
from diffusers' classes with the 5b values; T5 tokenizer/config from SD3's text_encoder_3).

    .venv/bin/python scripts/bench/make_layouts.py OUT_DIR
"""
import json
import pathlib
import shutil
import sys

import torch

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "model-layouts"


def cogvideox_5b(out: pathlib.Path):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    sd3 = SHARED / "stabilityai" / "stable-diffusion-3.5-large"
    with torch.device("meta"):
        t = CogVideoXTransformer3DModel(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
        v = AutoencoderKLCogVideoX(scaling_factor=0.7, sample_height=480, sample_width=720)
    t.save_config(out / "transformer")
    v.save_config(out / "vae")
    CogVideoXDPMScheduler(snr_shift_scale=1.0, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                          timestep_spacing="trailing", clip_sample=False).save_config(out / "scheduler")
    shutil.copytree(sd3 / "text_encoder_3", out / "text_encoder", ignore=shutil.ignore_patterns("*.json.index*", "*index*"))
    shutil.copytree(sd3 / "tokenizer_3", out / "tokenizer")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "CogVideoXPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "CogVideoXDPMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"]}, indent=2))


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if (out / "flux-dev").exists():
        shutil.rmtree(out / "flux-dev")
    shutil.copytree(SHARED / "black-forest-labs" / "FLUX.1-dev", out / "flux-dev")
    if (out / "cogvideox-5b").exists():
        shutil.rmtree(out / "cogvideox-5b")
    cogvideox_5b(out / "cogvideox-5b")
    print(out)


if __name__ == "__main__":
    main()
