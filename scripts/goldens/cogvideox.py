"""Goldens for CogVideoX: CogVideoXTransformer3DModel (2B-, 5B- and 1.5-like tiny configs),
AutoencoderKLCogVideoX (frame-batched decode of a multi-chunk latent, tiled decode, encode), the DDIM and
DPM CogVideoX schedulers (tables and steps), and whole CogVideoXPipeline videos (cases.json + PNG frames).
CPU float32; tiny random models from _tiny_cogvideox.py saved with save_pretrained."""
import json
import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from _tiny_cogvideox import SCHED_COMMON, TRANSFORMERS, build_pipeline, make_transformer, make_vae


def save(path, tensors):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


def transformer_goldens(out):
    from diffusers import CogVideoXPipeline
    for k, (name, cfg) in enumerate(TRANSFORMERS.items()):
        m = make_transformer(name, 300 + k)
        m.save_pretrained(out / f"transformer_{name}", safe_serialization=True)
        g = torch.Generator().manual_seed(310 + k)
        # latent frames and size, differing from the sample size 6x8 (1.5's RoPE slices need <= 6x8)
        frames, h, w = (4, 4, 8) if cfg.get("patch_size_t") else (4, 8, 6)
        x = torch.randn(2, frames, cfg["in_channels"], h, w, generator=g)
        ctx = torch.randn(2, cfg["max_text_seq_length"], cfg["text_embed_dim"], generator=g)
        t = torch.tensor([999, 321])
        t_out = {"hidden_states": x, "encoder_hidden_states": ctx, "timestep": t.float()}
        rope = None
        if cfg["use_rotary_positional_embeddings"]:
            # The pipeline's own RoPE computation (grid crops / slices), with a stand-in pipeline object.
            class P:
                vae_scale_factor_spatial = 8
                transformer = m
            rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(P(), h * 8, w * 8, frames, "cpu")
            t_out["rope_cos"], t_out["rope_sin"] = rope
        with torch.no_grad():
            y = m(hidden_states=x, encoder_hidden_states=ctx, timestep=t, image_rotary_emb=rope, return_dict=False)[0]
        t_out["out"] = y
        save(out / f"transformer_{name}_io.safetensors", t_out)


def vae_goldens(out):
    vae = make_vae(400)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    g = torch.Generator().manual_seed(401)
    # 5 latent frames: decoded in chunks of 3 + 2 latent frames (frame_batch_size 2, remainder first).
    z = torch.randn(1, 4, 5, 6, 10, generator=g)
    video = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1
    t = {"latents": z, "video": video}
    with torch.no_grad():
        t["decoded"] = vae.decode(z).sample
        dist = vae.encode(video).latent_dist
        t["mean"], t["logvar"] = dist.mean, dist.logvar
        vae.enable_tiling(tile_sample_min_height=24, tile_sample_min_width=40)
        t["decoded_tiled"] = vae.decode(z).sample
    save(out / "vae_io.safetensors", t)


def scheduler_goldens(out):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
    t = {}
    g = torch.Generator().manual_seed(500)
    sample = torch.randn(1, 3, 4, 6, 8, generator=g)
    outs = [torch.randn(1, 3, 4, 6, 8, generator=g) for _ in range(6)]
    t["sample"] = sample
    for i, o in enumerate(outs):
        t[f"model_output_{i}"] = o
    for snr in (3.0, 1.0):
        for spacing in ("trailing", "leading", "linspace"):
            s = CogVideoXDDIMScheduler(**{**SCHED_COMMON, "snr_shift_scale": snr, "timestep_spacing": spacing})
            for steps in (50, 6, 7):
                s.set_timesteps(steps)
                t[f"timesteps_{spacing}_{steps}"] = s.timesteps.clone()
        t[f"alphas_cumprod_{snr}"] = s.alphas_cumprod.clone()
    s = CogVideoXDDIMScheduler(**{**SCHED_COMMON, "rescale_betas_zero_snr": False, "snr_shift_scale": 3.0})
    t["alphas_cumprod_norescale"] = s.alphas_cumprod.clone()
    # Whole 6-step runs, feeding the recorded model outputs.
    s = CogVideoXDDIMScheduler(**{**SCHED_COMMON, "snr_shift_scale": 3.0})
    s.set_timesteps(6)
    x = sample
    for i, ts in enumerate(s.timesteps):
        x = s.step(outs[i], ts, x, return_dict=False)[0]
        t[f"ddim_{i}"] = x
    s = CogVideoXDPMScheduler(**{**SCHED_COMMON, "snr_shift_scale": 1.0})
    s.set_timesteps(6)
    gen = torch.Generator().manual_seed(77)
    x, old = sample, None
    for i, ts in enumerate(s.timesteps):
        x, old = s.step(outs[i], old, ts, s.timesteps[i - 1] if i > 0 else None, x, generator=gen, return_dict=False)
        t[f"dpm_{i}"] = x
        t[f"dpm_x0_{i}"] = old
    save(out / "scheduler.safetensors", {k: (v.double() if v.dtype == torch.float64 else v) for k, v in t.items()})


CASES = [
    ("cog2b_ddim", "2b", dict(prompt="a small red circle above a blue square", seed=42, steps=3, cfg=6.0, frames=9,
                              width=48, height=64)),
    ("cog5b_dpm_dyncfg", "5b", dict(prompt="a large green star next to a yellow moon", negative_prompt="blurry",
                                    seed=7, steps=4, cfg=6.0, frames=9, width=80, height=48, dynamic_cfg=True)),
]


def pipeline_goldens(out):
    pipes = {v: build_pipeline(out / f"tiny-cogvideox-{v}", v, seed=10) for v in ("2b", "5b")}
    cases = []
    for name, variant, k in CASES:
        pipe = pipes[variant]
        gen = torch.Generator("cpu").manual_seed(k["seed"])
        with torch.no_grad():
            video = pipe(prompt=k["prompt"], negative_prompt=k.get("negative_prompt"), height=k["height"],
                         width=k["width"], num_frames=k["frames"], num_inference_steps=k["steps"],
                         guidance_scale=k["cfg"], use_dynamic_cfg=k.get("dynamic_cfg", False), generator=gen,
                         output_type="np", max_sequence_length=16).frames[0]
        files = []
        for i, frame in enumerate(video):
            arr = (frame * 255).round().astype(np.uint8)
            f = f"{name}_{i:03d}.png"
            Image.fromarray(arr).save(out / f)
            files.append(f)
        cases.append({"name": name, "model": f"tiny-cogvideox-{variant}", "params": k, "frames": files})
    (out / "cases.json").write_text(json.dumps(cases, indent=1))


def main(out_dir: pathlib.Path):
    out = pathlib.Path(out_dir)
    torch.set_grad_enabled(False)
    scheduler_goldens(out)
    transformer_goldens(out)
    vae_goldens(out)
    pipeline_goldens(out)
