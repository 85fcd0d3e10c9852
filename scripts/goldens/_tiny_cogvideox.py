"""Builds tiny random-weight CogVideoX pipelines in the real diffusers folder layout (transformer/, vae/,
text_encoder/, tokenizer/, scheduler/), with the project's own sentencepiece T5 tokenizer, so nothing is
fetched. Used by the goldens.

    build_pipeline(out_dir, variant="2b" | "5b", seed=0) -> CogVideoXPipeline

Tiny shapes: transformer 2 layers, 2 heads x 16, text_embed_dim 32, time_embed_dim 16, 4 latent channels,
sample 9 frames x 6 x 8 latents (48x64 pixels), max_text_seq_length 16 (the real models use 226). The VAE
keeps the real structure: four blocks (spatial compression 8), temporal compression 4 (the first two
up/down blocks compress time), with channels (8, 8, 16, 16), one resnet per block, 4 groups.
"""
import pathlib
import shutil
import tempfile

import torch

from _tiny_sd3 import write_t5_tokenizer

# 2B-like: 3D sin-cos positions; 5B-like: 3D RoPE; 1.5-like: temporal patch 2, no patch bias, RoPE (slice).
TRANSFORMERS = {
    "2b": dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
               text_embed_dim=32, num_layers=2, sample_width=8, sample_height=6, sample_frames=9, patch_size=2,
               temporal_compression_ratio=4, max_text_seq_length=16, spatial_interpolation_scale=1.875,
               temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=False),
    "5b": dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
               text_embed_dim=32, num_layers=2, sample_width=8, sample_height=6, sample_frames=9, patch_size=2,
               temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True),
    "15": dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
               text_embed_dim=32, num_layers=2, sample_width=8, sample_height=6, sample_frames=9, patch_size=2,
               patch_size_t=2, patch_bias=False, temporal_compression_ratio=4, max_text_seq_length=16,
               use_rotary_positional_embeddings=True),
}

VAE = dict(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
           up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 16, 16), latent_channels=4,
           layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4, sample_height=48, sample_width=64,
           scaling_factor=0.7)

# The real CogVideoX-2b / -5b scheduler configs (2b: DDIM, snr_shift_scale 3; 5b: DPM, snr_shift_scale 1).
SCHEDULERS = {
    "2b": ("CogVideoXDDIMScheduler", dict(snr_shift_scale=3.0)),
    "5b": ("CogVideoXDPMScheduler", dict(snr_shift_scale=1.0)),
}
SCHED_COMMON = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                    clip_sample_range=1.0, num_train_timesteps=1000, prediction_type="v_prediction",
                    rescale_betas_zero_snr=True, sample_max_value=1.0, set_alpha_to_one=True, steps_offset=0,
                    timestep_spacing="trailing")


def randomize(model, seed, scale=0.05):
    """Overwrite every floating parameter (diffusers zero-inits some layers); norm gains around one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g) * scale
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                r = 1.0 + r
            p.copy_(r)


def make_transformer(variant, seed):
    from diffusers import CogVideoXTransformer3DModel
    torch.manual_seed(seed)
    m = CogVideoXTransformer3DModel(**TRANSFORMERS[variant]).eval()
    randomize(m, seed, 0.08)
    return m


def make_vae(seed):
    from diffusers import AutoencoderKLCogVideoX
    torch.manual_seed(seed)
    v = AutoencoderKLCogVideoX(**VAE).eval()
    randomize(v, seed, 0.1)
    return v


def build_pipeline(out_dir: pathlib.Path, variant: str = "2b", seed: int = 0):
    import diffusers
    from diffusers import CogVideoXPipeline
    from transformers import T5Config, T5EncoderModel

    tmp = pathlib.Path(tempfile.mkdtemp())
    tok = write_t5_tokenizer(tmp / "tokenizer")
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=48, num_layers=2, num_heads=2,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
    randomize(t5, seed + 1, 0.1)
    cls, extra = SCHEDULERS[variant]
    scheduler = getattr(diffusers, cls)(**SCHED_COMMON, **extra)
    pipe = CogVideoXPipeline(tokenizer=tok, text_encoder=t5, vae=make_vae(seed + 2),
                             transformer=make_transformer(variant, seed + 3), scheduler=scheduler)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    shutil.copy(tmp / "tokenizer" / "spiece.model", pathlib.Path(out_dir) / "tokenizer" / "spiece.model")
    shutil.rmtree(tmp)
    return CogVideoXPipeline.from_pretrained(out_dir, torch_dtype=torch.float32)
