"""Goldens for the SD3 / SD3.5 transformer, the 16-channel AutoencoderKL and FlowMatchEulerDiscreteScheduler.

Tiny seeded random models saved with save_pretrained (the real component layout), SAI single-file
checkpoints produced from them by the inverse of diffusers' conversion (written here independently of
the C++ rename table), and reference outputs on CPU float32.
"""
import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel


def randomize(model, seed, scale=0.05):
    """Overwrite every parameter and floating buffer (diffusers zero-inits adaLN/out layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.dtype.is_floating_point:
                continue
            r = torch.randn(p.shape, generator=g) * scale
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm_added" in name or "norm" in name and p.dim() == 1:
                r = 1.0 + r  # norm gains around one
            p.copy_(r)


def save(path, tensors):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


# --- SD3 transformer --------------------------------------------------------------------------------

def sd3_to_sai(sd, num_layers):
    """diffusers SD3Transformer2DModel state dict -> Stability's MMDiT layout (inverse of diffusers'
    convert_sd3_transformer_checkpoint_to_diffusers)."""
    sd = dict(sd)
    out = {}

    def take(k):
        return sd.pop(k)

    def swap(t):  # diffusers (scale, shift) <-> SAI (shift, scale)
        a, b = t.chunk(2, dim=0)
        return torch.cat([b, a], dim=0)

    out["pos_embed"] = take("pos_embed.pos_embed")
    for s in ("weight", "bias"):
        out[f"x_embedder.proj.{s}"] = take(f"pos_embed.proj.{s}")
        out[f"t_embedder.mlp.0.{s}"] = take(f"time_text_embed.timestep_embedder.linear_1.{s}")
        out[f"t_embedder.mlp.2.{s}"] = take(f"time_text_embed.timestep_embedder.linear_2.{s}")
        out[f"y_embedder.mlp.0.{s}"] = take(f"time_text_embed.text_embedder.linear_1.{s}")
        out[f"y_embedder.mlp.2.{s}"] = take(f"time_text_embed.text_embedder.linear_2.{s}")
        out[f"context_embedder.{s}"] = take(f"context_embedder.{s}")
        out[f"final_layer.linear.{s}"] = take(f"proj_out.{s}")
        out[f"final_layer.adaLN_modulation.1.{s}"] = swap(take(f"norm_out.linear.{s}"))
    for i in range(num_layers):
        d, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == num_layers - 1
        for s in ("weight", "bias"):
            out[j + f"x_block.attn.qkv.{s}"] = torch.cat([take(d + f"attn.to_{c}.{s}") for c in "qkv"])
            out[j + f"context_block.attn.qkv.{s}"] = torch.cat([take(d + f"attn.add_{c}_proj.{s}") for c in "qkv"])
            out[j + f"x_block.attn.proj.{s}"] = take(d + f"attn.to_out.0.{s}")
            if not last:
                out[j + f"context_block.attn.proj.{s}"] = take(d + f"attn.to_add_out.{s}")
            if d + f"attn2.to_q.{s}" in sd:
                out[j + f"x_block.attn2.qkv.{s}"] = torch.cat([take(d + f"attn2.to_{c}.{s}") for c in "qkv"])
                out[j + f"x_block.attn2.proj.{s}"] = take(d + f"attn2.to_out.0.{s}")
            out[j + f"x_block.adaLN_modulation.1.{s}"] = take(d + f"norm1.linear.{s}")
            ctx_ada = take(d + f"norm1_context.linear.{s}")
            out[j + f"context_block.adaLN_modulation.1.{s}"] = swap(ctx_ada) if last else ctx_ada
            out[j + f"x_block.mlp.fc1.{s}"] = take(d + f"ff.net.0.proj.{s}")
            out[j + f"x_block.mlp.fc2.{s}"] = take(d + f"ff.net.2.{s}")
            if not last:
                out[j + f"context_block.mlp.fc1.{s}"] = take(d + f"ff_context.net.0.proj.{s}")
                out[j + f"context_block.mlp.fc2.{s}"] = take(d + f"ff_context.net.2.{s}")
        if d + "attn.norm_q.weight" in sd:
            out[j + "x_block.attn.ln_q.weight"] = take(d + "attn.norm_q.weight")
            out[j + "x_block.attn.ln_k.weight"] = take(d + "attn.norm_k.weight")
            out[j + "context_block.attn.ln_q.weight"] = take(d + "attn.norm_added_q.weight")
            out[j + "context_block.attn.ln_k.weight"] = take(d + "attn.norm_added_k.weight")
        if d + "attn2.norm_q.weight" in sd:
            out[j + "x_block.attn2.ln_q.weight"] = take(d + "attn2.norm_q.weight")
            out[j + "x_block.attn2.ln_k.weight"] = take(d + "attn2.norm_k.weight")
    assert not sd, f"unconverted: {sorted(sd)}"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


TRANSFORMERS = {
    # SD3-medium-like: no qk norm, no dual attention; pos_embed_max_size > sample grid, so cropping matters.
    "sd3_tiny": dict(sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                     num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                     pooled_projection_dim=16, out_channels=16, pos_embed_max_size=24),
    # SD3.5-medium-like: qk rms_norm, dual attention in the first blocks.
    "sd35m_tiny": dict(sample_size=32, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8,
                       num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                       pooled_projection_dim=16, out_channels=16, pos_embed_max_size=20, qk_norm="rms_norm",
                       dual_attention_layers=(0, 1)),
}


def transformer_goldens(out, name, cfg, seed):
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(**cfg).eval()
    randomize(model, seed)
    model.save_pretrained(out / name, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 16, 32, 24, generator=g)
    ctx = torch.randn(2, 7, cfg["joint_attention_dim"], generator=g)
    pooled = torch.randn(2, cfg["pooled_projection_dim"], generator=g)
    t = torch.tensor([999.0, 321.5])
    with torch.no_grad():
        y = model(x, ctx, pooled, t, return_dict=False)[0]
        y_skip = model(x, ctx, pooled, t, skip_layers=[1], return_dict=False)[0]
    save(out / f"{name}_io.safetensors", {"hidden_states": x, "encoder_hidden_states": ctx, "pooled": pooled,
                                          "timestep": t, "out": y, "out_skip1": y_skip})
    save(out / f"{name}_sai.safetensors", sd3_to_sai(model.state_dict(), cfg["num_layers"]))


# --- VAE ----------------------------------------------------------------------------------------------

def vae_to_ldm(sd, num_blocks, conv_attn=True):
    """diffusers AutoencoderKL state dict -> LDM `first_stage_model.` layout (inverse of
    convert_ldm_vae_checkpoint; mid-block attention linears become 1x1 convs as in LDM files)."""
    out = {}
    for k, v in sd.items():
        n = k
        n = n.replace("conv_norm_out", "norm_out")
        for i in range(num_blocks):
            n = n.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            n = n.replace(f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.")
            n = n.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{num_blocks - 1 - i}.block.")
            n = n.replace(f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{num_blocks - 1 - i}.upsample.conv.")
        n = n.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        n = n.replace("conv_shortcut", "nin_shortcut")
        if "mid_block.attentions.0." in n:
            n = n.replace("mid_block.attentions.0.", "mid.attn_1.")
            n = (n.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.")
                 .replace("to_v.", "v.").replace("to_out.0.", "proj_out."))
            if conv_attn and v.dim() == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + n] = v
    return out


VAES = {
    "vae_tiny": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                     latent_channels=16, norm_num_groups=4, scaling_factor=1.5305, shift_factor=0.0609,
                     use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True, sample_size=32),
    # SD1/SDXL-style: quant convs present, no shift factor; three blocks (two down/upsamplers).
    "vae_quant_tiny": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                           up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16),
                           layers_per_block=2, latent_channels=4, norm_num_groups=4, scaling_factor=0.13025,
                           use_quant_conv=True, use_post_quant_conv=True, sample_size=32),
}


def vae_goldens(out, name, cfg, seed):
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg).eval()
    randomize(vae, seed, scale=0.1)
    vae.save_pretrained(out / name, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    down = 2 ** (len(cfg["block_out_channels"]) - 1)
    latents = torch.randn(2, cfg["latent_channels"], 32 // down, 24 // down, generator=g)
    image = torch.rand(2, 3, 32, 24, generator=g) * 2 - 1
    sf = vae.config.scaling_factor
    shift = vae.config.shift_factor or 0.0
    with torch.no_grad():
        decoded = vae.decode(latents / sf + shift, return_dict=False)[0]
        dist = vae.encode(image).latent_dist
    save(out / f"{name}_io.safetensors", {"latents": latents, "decoded": decoded, "image": image,
                                          "mean": dist.mean, "logvar": dist.logvar,
                                          "encoded_latents": (dist.mean - shift) * sf})
    save(out / f"{name}_ldm.safetensors", vae_to_ldm(vae.state_dict(), len(cfg["block_out_channels"])))


# --- Scheduler ----------------------------------------------------------------------------------------

def scheduler_goldens(out):
    t = {}
    for steps, shift in ((28, 3.0), (4, 1.0), (10, 3.0), (1, 3.0), (50, 1.15)):
        s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        s.set_timesteps(steps)
        t[f"sigmas_{steps}_{shift}"] = s.sigmas
        t[f"timesteps_{steps}_{shift}"] = s.timesteps
    # Dynamic (resolution-dependent) shifting, default sigmas and FLUX-style custom sigmas.
    for steps, mu in ((28, 0.8), (4, 1.15)):
        s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
        s.set_timesteps(steps, mu=mu)
        t[f"dyn_sigmas_{steps}_{mu}"] = s.sigmas
        t[f"dyn_timesteps_{steps}_{mu}"] = s.timesteps
        s.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist(), mu=mu)
        t[f"custom_sigmas_{steps}_{mu}"] = s.sigmas
        t[f"custom_timesteps_{steps}_{mu}"] = s.timesteps
    # step(): the 28-step shift-3 schedule at a few indices, float32 and bf16 model outputs.
    g = torch.Generator().manual_seed(7)
    sample = torch.randn(2, 16, 8, 6, generator=g)
    v = torch.randn(2, 16, 8, 6, generator=g)
    t["step_sample"], t["step_v"] = sample, v
    for i in (0, 5, 27):
        s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        s.set_timesteps(28)
        s.set_begin_index(i)
        t[f"step_{i}"] = s.step(v, s.timesteps[i], sample, return_dict=False)[0]
        s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        s.set_timesteps(28)
        s.set_begin_index(i)
        t[f"step_bf16_{i}"] = s.step(v.bfloat16(), s.timesteps[i], sample.bfloat16(), return_dict=False)[0].float()
    save(out / "scheduler.safetensors", t)


def main(out_dir: pathlib.Path):
    out = pathlib.Path(out_dir)
    torch.set_grad_enabled(False)
    for k, (name, cfg) in enumerate(TRANSFORMERS.items()):
        transformer_goldens(out, name, cfg, seed=100 + k)
    for k, (name, cfg) in enumerate(VAES.items()):
        vae_goldens(out, name, cfg, seed=200 + k)
    scheduler_goldens(out)
