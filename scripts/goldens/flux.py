"""Goldens for FLUX.1: diffusers' FluxTransformer2DModel, FluxPipeline's latent packing / position ids,
the scheduler's custom-sigma + mu path, and whole FluxPipeline images (CPU, float32) of tiny random
dev-like and schnell-like pipelines (_tiny_flux). Also a Black Forest Labs single file of the tiny dev
transformer made here by the inverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers
(independent of the C++ rename table), an fp8-e4m3 copy of it, and the VAE as BFL's ae.safetensors (LDM
names without a prefix)."""
import json
import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from _tiny_flux import build_flux_pipeline
from sd3 import vae_to_ldm


def save(path, tensors):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


def randomize(model, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g) * scale
            if "norm" in name and p.dim() == 1:
                r = 1.0 + r
            p.copy_(r)


def flux_to_bfl(sd, num_layers, num_single_layers):
    """diffusers FluxTransformer2DModel state dict -> BFL layout (inverse of diffusers' conversion)."""
    sd = dict(sd)
    out = {}
    take = sd.pop

    def swap(t):  # diffusers (scale, shift) -> BFL (shift, scale)
        a, b = t.chunk(2, dim=0)
        return torch.cat([b, a], dim=0)

    for s in ("weight", "bias"):
        for bfl, dif in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")):
            if f"time_text_embed.{dif}.linear_1.{s}" in sd:
                out[f"{bfl}.in_layer.{s}"] = take(f"time_text_embed.{dif}.linear_1.{s}")
                out[f"{bfl}.out_layer.{s}"] = take(f"time_text_embed.{dif}.linear_2.{s}")
        out[f"txt_in.{s}"] = take(f"context_embedder.{s}")
        out[f"img_in.{s}"] = take(f"x_embedder.{s}")
        out[f"final_layer.linear.{s}"] = take(f"proj_out.{s}")
        out[f"final_layer.adaLN_modulation.1.{s}"] = swap(take(f"norm_out.linear.{s}"))
        for i in range(num_layers):
            d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
            out[b + f"img_mod.lin.{s}"] = take(d + f"norm1.linear.{s}")
            out[b + f"txt_mod.lin.{s}"] = take(d + f"norm1_context.linear.{s}")
            out[b + f"img_attn.qkv.{s}"] = torch.cat([take(d + f"attn.to_{c}.{s}") for c in "qkv"])
            out[b + f"txt_attn.qkv.{s}"] = torch.cat([take(d + f"attn.add_{c}_proj.{s}") for c in "qkv"])
            out[b + f"img_mlp.0.{s}"] = take(d + f"ff.net.0.proj.{s}")
            out[b + f"img_mlp.2.{s}"] = take(d + f"ff.net.2.{s}")
            out[b + f"txt_mlp.0.{s}"] = take(d + f"ff_context.net.0.proj.{s}")
            out[b + f"txt_mlp.2.{s}"] = take(d + f"ff_context.net.2.{s}")
            out[b + f"img_attn.proj.{s}"] = take(d + f"attn.to_out.0.{s}")
            out[b + f"txt_attn.proj.{s}"] = take(d + f"attn.to_add_out.{s}")
        for i in range(num_single_layers):
            d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
            out[b + f"modulation.lin.{s}"] = take(d + f"norm.linear.{s}")
            out[b + f"linear1.{s}"] = torch.cat([take(d + f"attn.to_{c}.{s}") for c in "qkv"] + [take(d + f"proj_mlp.{s}")])
            out[b + f"linear2.{s}"] = take(d + f"proj_out.{s}")
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out[b + "img_attn.norm.query_norm.scale"] = take(d + "attn.norm_q.weight")
        out[b + "img_attn.norm.key_norm.scale"] = take(d + "attn.norm_k.weight")
        out[b + "txt_attn.norm.query_norm.scale"] = take(d + "attn.norm_added_q.weight")
        out[b + "txt_attn.norm.key_norm.scale"] = take(d + "attn.norm_added_k.weight")
    for i in range(num_single_layers):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out[b + "norm.query_norm.scale"] = take(d + "attn.norm_q.weight")
        out[b + "norm.key_norm.scale"] = take(d + "attn.norm_k.weight")
    assert not sd, f"unconverted: {sorted(sd)}"
    return out


TRANSFORMERS = {
    # dev-like: guidance embedding; unequal rotary axes so an axis mix-up shows.
    "dev_tiny": dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=True,
                     axes_dims_rope=(2, 6, 8)),
    # schnell-like: no guidance embedding.
    "schnell_tiny": dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=1, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24,
                         guidance_embeds=False, axes_dims_rope=(4, 6, 6)),
}


def transformer_io(model, cfg, seed):
    """Fixed packed inputs: batch 2, a non-square 4 x 6 token grid, 7 text tokens."""
    g = torch.Generator().manual_seed(seed + 1)
    from diffusers import FluxPipeline
    img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    x = torch.randn(2, 24, cfg["in_channels"], generator=g)
    ctx = torch.randn(2, 7, cfg["joint_attention_dim"], generator=g)
    pooled = torch.randn(2, cfg["pooled_projection_dim"], generator=g)
    t = torch.tensor([1.0, 0.3215])  # as FluxPipeline passes it: timestep / 1000
    txt_ids = torch.zeros(7, 3)
    guidance = torch.tensor([3.5, 5.0]) if cfg["guidance_embeds"] else None
    with torch.no_grad():
        y = model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t, img_ids=img_ids,
                  txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
    io = {"hidden_states": x, "encoder_hidden_states": ctx, "pooled": pooled, "timestep": t, "img_ids": img_ids,
          "txt_ids": txt_ids, "out": y}
    if guidance is not None:
        io["guidance"] = guidance
    return io


def transformer_goldens(out):
    from diffusers import FluxTransformer2DModel
    for seed, (name, cfg) in enumerate(TRANSFORMERS.items()):
        torch.manual_seed(seed)
        model = FluxTransformer2DModel(**cfg).eval()
        randomize(model, seed)
        model.save_pretrained(out / name, safe_serialization=True)
        save(out / f"{name}_io.safetensors", transformer_io(model, cfg, seed))


def single_file_goldens(out, pipe):
    """The tiny dev pipeline's transformer as a BFL file (f32 and fp8-e4m3) and its VAE as ae.safetensors."""
    tr = pipe.transformer
    cfg = dict(tr.config)
    bfl = flux_to_bfl(tr.state_dict(), cfg["num_layers"], cfg["num_single_layers"])
    save(out / "tiny-flux-dev-bfl.safetensors", {"model.diffusion_model." + k: v for k, v in bfl.items()})
    save(out / "tiny-flux-dev-io.safetensors", transformer_io(tr, cfg, 10))
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in bfl.items()}
    save(out / "tiny-flux-dev-bfl-fp8.safetensors", fp8)
    # Expected output of the fp8 file: diffusers' model with the fp8 weights upcast to float32.
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    up = FluxTransformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}).eval()
    sd = {k: v.to(torch.float32) for k, v in fp8.items()}
    # diffusers' converter assumes FLUX's inner_dim 3072 for linear1; split the tiny one the same way here.
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    conv = {}
    for k in list(sd):
        if ".linear1." in k:
            q, kk, v, mlp = torch.split(sd.pop(k), (inner, inner, inner, 4 * inner), dim=0)
            i, s = k.split(".")[1], k.split(".")[-1]
            p = f"single_transformer_blocks.{i}."
            conv.update({p + f"attn.to_q.{s}": q, p + f"attn.to_k.{s}": kk, p + f"attn.to_v.{s}": v, p + f"proj_mlp.{s}": mlp})
            sd[f"single_blocks.{i}.linear1.{s}"] = torch.zeros(7 * 3072, *q.shape[1:])  # placeholder (replaced below)
    full = convert_flux_transformer_checkpoint_to_diffusers(sd)
    full.update(conv)
    up.load_state_dict(full, strict=True)
    io = transformer_io(up, cfg, 10)
    save(out / "tiny-flux-dev-fp8-io.safetensors", {"out": io["out"]})
    ldm = vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))
    save(out / "tiny-flux-ae.safetensors", {k[len("first_stage_model."):]: v for k, v in ldm.items()})


def latent_goldens(out):
    from diffusers import FluxPipeline
    g = torch.Generator().manual_seed(5)
    lat = torch.randn(2, 16, 8, 12, generator=g)
    packed = FluxPipeline._pack_latents(lat, 2, 16, 8, 12)
    unpacked = FluxPipeline._unpack_latents(packed, 64, 96, 8)
    ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    save(out / "latents.safetensors", {"latents": lat, "packed": packed, "unpacked": unpacked, "image_ids": ids})


def scheduler_goldens(out):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from _tiny_flux import SCHEDULERS
    cases = []
    for variant, cfg in SCHEDULERS.items():
        for steps, seq in ((4, 24), (28, 4096), (50, 1024), (1, 256)):
            s = FlowMatchEulerDiscreteScheduler(**cfg)
            mu = calculate_shift(seq, cfg["base_image_seq_len"], cfg["max_image_seq_len"], cfg["base_shift"], cfg["max_shift"])
            sigmas = np.linspace(1.0, 1 / steps, steps)
            s.set_timesteps(steps, sigmas=sigmas, mu=mu)
            cases.append({"variant": variant, "config": cfg, "steps": steps, "image_seq_len": seq, "mu": mu,
                          "sigmas": s.sigmas.tolist(), "timesteps": s.timesteps.tolist()})
    (out / "scheduler.json").write_text(json.dumps(cases, indent=1))


CASES = [
    # name, variant, generate kwargs
    ("dev_square", "dev", dict(prompt="a small red circle above a blue square", seed=42, steps=3, guidance=3.5,
                               width=64, height=64)),
    ("dev_wide_batch", "dev", dict(prompt="a large green star, next to a yellow moon!", seed=7, steps=2, guidance=5.0,
                                   width=96, height=48, batch=2, max_sequence_length=48)),
    ("dev_true_cfg", "dev", dict(prompt="a purple heart", negative_prompt="blurry, ugly", seed=1234, steps=2,
                                 guidance=2.0, cfg=4.0, width=64, height=80, max_sequence_length=32)),
    ("schnell_square", "schnell", dict(prompt="a tiny cyan ring inside a black hexagon", seed=3, steps=2,
                                       width=64, height=64, max_sequence_length=64)),
    ("schnell_tall", "schnell", dict(prompt="an orange cross below a pink diamond", seed=99, steps=3,
                                     width=48, height=96, max_sequence_length=32)),
]


def run_case(pipe, k):
    gen = torch.Generator("cpu").manual_seed(k["seed"])
    kwargs = dict(prompt=k["prompt"], negative_prompt=k.get("negative_prompt"), true_cfg_scale=k.get("cfg", 1.0),
                  num_inference_steps=k["steps"], guidance_scale=k.get("guidance", 3.5), width=k["width"],
                  height=k["height"], generator=gen, num_images_per_prompt=k.get("batch", 1),
                  max_sequence_length=k.get("max_sequence_length", 512), output_type="np")
    return pipe(**kwargs).images


def main(out: pathlib.Path):
    transformer_goldens(out)
    latent_goldens(out)
    scheduler_goldens(out)
    pipes = {v: build_flux_pipeline(out / f"tiny-flux-{v}", v, seed=0) for v in ("dev", "schnell")}
    single_file_goldens(out, pipes["dev"])
    cases = []
    for name, variant, k in CASES:
        with torch.no_grad():
            images = run_case(pipes[variant], k)
        files = []
        for i, img in enumerate(images):
            arr = (img * 255).round().astype(np.uint8)
            f = f"{name}-{i}.png" if len(images) > 1 else f"{name}.png"
            Image.fromarray(arr).save(out / f)
            files.append(f)
        cases.append({"name": name, "model": f"tiny-flux-{variant}", "params": k, "images": files})
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
    # The first case by diffusers in bfloat16 on CPU (noise drawn in bf16, bf16 compute), for mmdit's bf16 path.
    from diffusers import FluxPipeline
    bf16 = FluxPipeline.from_pretrained(out / "tiny-flux-dev", torch_dtype=torch.bfloat16)
    with torch.no_grad():
        img = run_case(bf16, CASES[0][2])[0]
    Image.fromarray((img * 255).round().astype(np.uint8)).save(out / "dev_square_bf16.png")
