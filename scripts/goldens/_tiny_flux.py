"""Builds tiny random-weight FLUX.1 pipelines in the real diffusers folder layout (FluxPipeline: CLIP-L
text_encoder, T5 text_encoder_2, FluxTransformer2DModel, 16-channel VAE), with the project-made tokenizers
of _tiny_sd3, so nothing is fetched.

    build_flux_pipeline(out_dir, variant="dev" | "schnell", seed=0) -> FluxPipeline

dev: guidance_embeds true, scheduler with dynamic shifting (FLUX.1-dev's scheduler_config.json);
schnell: no guidance embedding, scheduler without dynamic shifting (shift 1.0, FLUX.1-schnell's config).
The head size is 32 with axes_dims_rope (4, 14, 14): FLUX's (16, 56, 56) proportions, so the rotary axes
of a BFL single file of it can be inferred from its shapes as for the real 128-wide heads.
"""
import pathlib
import shutil
import tempfile

import torch

from _tiny_sd3 import randomize, write_clip_tokenizer, write_t5_tokenizer

TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 14, 14))

SCHEDULERS = {
    # FLUX.1-dev scheduler_config.json
    "dev": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                base_image_seq_len=256, max_image_seq_len=4096),
    # FLUX.1-schnell scheduler_config.json
    "schnell": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                    base_image_seq_len=256, max_image_seq_len=4096),
}


def build_flux_pipeline(out_dir: pathlib.Path, variant: str = "dev", seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tmp = pathlib.Path(tempfile.mkdtemp())
    tok_l = write_clip_tokenizer(tmp / "tokenizer", pad_token="<|endoftext|>")
    tok_t5 = write_t5_tokenizer(tmp / "tokenizer_2")
    cfg = CLIPTextConfig(vocab_size=len(tok_l.get_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
                         bos_token_id=tok_l.bos_token_id, eos_token_id=tok_l.eos_token_id, pad_token_id=1)
    text_encoder = CLIPTextModel(cfg).eval()
    randomize(text_encoder, gen, 0.1)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok_t5), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
    randomize(t5, gen, 0.1)
    transformer = FluxTransformer2DModel(**TRANSFORMER, guidance_embeds=(variant == "dev")).eval()
    randomize(transformer, gen, 0.08)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False).eval()
    randomize(vae, gen, 0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant])
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tok_l, text_encoder_2=t5, tokenizer_2=tok_t5)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; real repos also carry the slow files, which mmdit reads.
    for sub, names in {"tokenizer": ["vocab.json", "merges.txt"], "tokenizer_2": ["spiece.model"]}.items():
        for n in names:
            shutil.copy(tmp / sub / n, pathlib.Path(out_dir) / sub / n)
    shutil.rmtree(tmp)
    return FluxPipeline.from_pretrained(out_dir, torch_dtype=torch.float32)
