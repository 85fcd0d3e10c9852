#!/usr/bin/env python3
"""Trains the shapes-world demo model: a tiny SD3 pipeline in the real diffusers layout, with diffusers and
transformers classes, and saves it with save_pretrained (tokenizers made by the project from the captions).

    train.py OUT [--data DIR | --n 20000] [--device cuda] [--vae-steps N] [--dit-steps N] [--batch B] [--seed S]
    train.py OUT --smoke                     # a few CPU iterations end to end, then load + generate one image
    train.py OUT --eval-only --eval 100      # generate held-out captions x 2 seeds with OUT and score them
    train.py OUT --resume DIR --vae-steps 0 --lr-schedule time --time-budget S   # continue a saved pipeline's DiT
    train.py OUT --resume DIR --decoder-only --vae-steps N --dit-steps 0         # fine-tune its VAE decoder only
    train.py OUT --vae-from DIR --patch-size 1 --batch 1024 --lr 2.5e-3 ...      # a new DiT on DIR's VAE (the demo's)

Stages (seeded): 1. AutoencoderKL (16 latent channels, 4x downsampling by default: --vae-channels), L1 + MSE reconstruction + a small
KL term; its scaling_factor/shift_factor are then set from the latents' statistics. 2. With the VAE frozen,
SD3Transformer2DModel and the two CLIP text encoders (CLIPTextModelWithProjection) trained jointly with the
flow-matching loss as diffusers' examples/dreambooth/train_dreambooth_sd3.py computes it: timesteps drawn
with compute_density_for_timestep_sampling (logit_normal by default), sigmas from a
FlowMatchEulerDiscreteScheduler(shift=3), x_t = (1 - sigma) x_0 + sigma noise, target noise - x_0,
compute_loss_weighting_for_sd3. Captions are encoded exactly as StableDiffusion3Pipeline.encode_prompt does
(CLIP hidden_states[-2], pooled text_embeds, no T5: zeros of max_sequence_length 256 x joint_attention_dim,
as the pipeline and mmdit use when text_encoder_3 is absent); 10% of captions are dropped to "" for CFG.
With --merge-t5 (the default) training feeds those 256 zeros as one token with +log(256) on its attention logit,
the same computation at about a third of the sequence length (MergedT5AttnProcessor); inference is unchanged.
Weights are saved in float16 by default (--save-dtype) to stay well under 20 MB.

How the committed demo model was trained (three stages, the step counts, the device minutes, what each
training round scored) is in docs/SHAPES.md; scripts/shapes/reproduce.sh replays it and gpu_train.sh spreads
configurations over the GPU box's GPUs. --time-budget / --vae-time-budget end a stage after so many
seconds (the step reached is logged and saved in shapes_world.json; --stop-after N for the DiT, --vae-steps N
for the VAE then reproduce the cut).
"""
import argparse
import json
import math
import pathlib
import random
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "goldens"))  # appended: goldens/tokenizers.py must not shadow `tokenizers`
import world  # noqa: E402
from _tiny_sd3 import write_clip_tokenizer  # noqa: E402

MAX_T5_LEN = 256  # the pipeline's default max_sequence_length; the zero "T5" tokens have this length


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def load_data(a):
    """(uint8 N x H x W x 3 array, captions) from a world dataset folder or rendered in memory."""
    if a.data:
        d = pathlib.Path(a.data)
        rows = [json.loads(x) for x in (d / "captions.jsonl").read_text().splitlines() if x.strip()]
        if (d / "images.npz").exists():
            imgs = np.load(d / "images.npz")["images"]
        else:
            from PIL import Image
            imgs = np.stack([np.asarray(Image.open(d / "images" / r["file"]).convert("RGB")) for r in rows])
        return imgs, [r["caption"] for r in rows]
    rng = random.Random(f"train:{a.seed}")
    scenes = [world.sample_scene(rng, "train") for _ in range(a.n)]  # drawn in order: a larger --n extends a smaller
    return np.stack([np.asarray(world.render(s, a.size)) for s in scenes]), [world.caption(s) for s in scenes]


def build(a, captions, tmp):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
    if a.resume:  # a saved pipeline, to train on (weights back to float32)
        r = pathlib.Path(a.resume)
        for sub in ("tokenizer", "tokenizer_2"):
            shutil.copytree(r / sub, tmp / sub)
        f32 = dict(torch_dtype=torch.float32)
        return (CLIPTokenizer.from_pretrained(tmp / "tokenizer"), CLIPTokenizer.from_pretrained(tmp / "tokenizer_2"),
                CLIPTextModelWithProjection.from_pretrained(r / "text_encoder", **f32),
                CLIPTextModelWithProjection.from_pretrained(r / "text_encoder_2", **f32),
                SD3Transformer2DModel.from_pretrained(r / "transformer", **f32), AutoencoderKL.from_pretrained(r / "vae", **f32))
    # Tokenizer merges learned on the training captions plus every word of the grammar (held-out captions
    # use the same words, so they tokenize the same way).
    vocab_lines = captions[:5000] + [" ".join(list(world.COLOURS) + world.SHAPES + world.RELATIONS + list(world.SIZES)
                                              + list(world.BACKGROUNDS) + ["a", "on", "over", "background"])]
    tok_l = write_clip_tokenizer(tmp / "tokenizer", pad_token="<|endoftext|>", num_merges=200, lines=vocab_lines)
    tok_g = write_clip_tokenizer(tmp / "tokenizer_2", pad_token="!", num_merges=200, lines=vocab_lines)

    def clip(act):
        cfg = CLIPTextConfig(vocab_size=len(tok_l.get_vocab()), hidden_size=a.clip_dim, intermediate_size=2 * a.clip_dim,
                             num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
                             projection_dim=a.clip_dim, bos_token_id=tok_l.bos_token_id,
                             eos_token_id=tok_l.eos_token_id, pad_token_id=1)
        return CLIPTextModelWithProjection(cfg)

    te1, te2 = clip("quick_gelu"), clip("gelu")
    if a.vae_from:  # a new DiT and text encoders on an already trained VAE (its latent statistics included)
        vae = AutoencoderKL.from_pretrained(pathlib.Path(a.vae_from) / "vae", torch_dtype=torch.float32)
        a.vae_channels = ",".join(str(c) for c in vae.config.block_out_channels)  # as loaded, not --vae-channels
        return tok_l, tok_g, te1, te2, new_transformer(a, len(vae.config.block_out_channels)), vae
    # Head size 64 and 32 VAE norm groups, as in every real SD3 (single-file loading assumes them).
    vc = tuple(int(c) for c in a.vae_channels.split(","))  # n blocks: 2^(n-1) downsampling
    transformer = new_transformer(a, len(vc))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * len(vc), up_block_types=("UpDecoderBlock2D",) * len(vc),
                        block_out_channels=vc, layers_per_block=1, norm_num_groups=32,
                        scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False)
    return tok_l, tok_g, te1, te2, transformer, vae


def new_transformer(a, vae_blocks):
    """SD3Transformer2DModel for 16-channel latents of a VAE with vae_blocks blocks (2^(n-1) downsampling).
    --patch-size 1 gives one token per latent pixel (4x4 image pixels at the 4x VAE): 4x the tokens of patch 2,
    the same parameters apart from the patch embedding and the output projection."""
    from diffusers import SD3Transformer2DModel
    return SD3Transformer2DModel(sample_size=a.size // 2 ** (vae_blocks - 1), patch_size=a.patch_size, in_channels=16,
                                 out_channels=16, num_layers=a.layers, attention_head_dim=64, num_attention_heads=a.heads,
                                 joint_attention_dim=2 * a.clip_dim, caption_projection_dim=64 * a.heads,
                                 pooled_projection_dim=2 * a.clip_dim, pos_embed_max_size=32)


def to_tensor(imgs, idx, device):
    return torch.from_numpy(imgs[idx]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tokenize(tok, prompts):
    return tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def encode_ids(ids_l, ids_g, te1, te2, joint_dim, device, t5_len=MAX_T5_LEN):
    """StableDiffusion3Pipeline.encode_prompt without T5 (t5_len zero tokens), with gradients, from token ids."""
    embeds, pooled = [], []
    for ids, te in ((ids_l, te1), (ids_g, te2)):
        out = te(ids.to(device), output_hidden_states=True)
        pooled.append(out[0])
        embeds.append(out.hidden_states[-2])
    clip = torch.cat(embeds, -1)
    clip = F.pad(clip, (0, joint_dim - clip.shape[-1]))
    t5 = torch.zeros(len(ids_l), t5_len, joint_dim, device=device, dtype=clip.dtype)
    return torch.cat([clip, t5], -2), torch.cat(pooled, -1)


class MergedT5AttnProcessor:
    """JointAttnProcessor2_0's math for a context whose last token stands for MAX_T5_LEN zero "T5" tokens.
    Text tokens get no positional encoding and only per-token operations, so the 256 zeros stay identical through
    every block; n identical keys/values weigh in softmax attention exactly as one key with log(n) added to its
    logit. One token plus that bias is the 256-token computation at 142 instead of 397 tokens (at 16x16 latents)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        b, n = hidden_states.shape[:2]

        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
        q, k, v = (heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        cq, ck, cv = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        q = attn.norm_q(q) if attn.norm_q is not None else q
        k = attn.norm_k(k) if attn.norm_k is not None else k
        cq = attn.norm_added_q(cq) if attn.norm_added_q is not None else cq
        ck = attn.norm_added_k(ck) if attn.norm_added_k is not None else ck
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        # (bf16 under autocast: log 256 -> 5.53, i.e. 252 tokens; outputs stay as close to float32 as with 256)
        bias = torch.zeros(1, 1, 1, k.shape[2], device=q.device, dtype=q.dtype)
        bias[..., -1] = math.log(MAX_T5_LEN)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3]).to(q.dtype)
        x, c = out[:, :n], out[:, n:]
        return attn.to_out[1](attn.to_out[0](x)), (c if attn.context_pre_only else attn.to_add_out(c))


def train_vae(vae, imgs, a, dev, gen):
    """Trains the VAE; with --decoder-only, only its decoder (the latent space, and so a trained DiT, stays valid)."""
    if a.vae_steps == 0:
        return
    vae.train()
    if a.decoder_only:
        vae.encoder.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in vae.parameters() if q.requires_grad], lr=a.vae_lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(a.vae_steps):
        idx = torch.randint(len(imgs), (a.vae_batch,), generator=gen).numpy()
        x = to_tensor(imgs, idx, dev)
        with torch.set_grad_enabled(not a.decoder_only):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=None)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + (0 if a.decoder_only else a.kl * post.kl().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(a.vae_steps // 20, 1) == 0 or step == a.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} ({(step + 1) / (time.time() - t0):.1f} steps/s)")
        if a.vae_time_budget and time.time() - t0 > a.vae_time_budget:
            log(f"vae: time budget {a.vae_time_budget} s reached after {step + 1} of {a.vae_steps} steps")
            break
    a.vae_steps_done = step + 1
    vae.eval().requires_grad_(False)
    if a.decoder_only:
        log("vae decoder reconstructions of 100 held-out scenes, checker: " + json.dumps(score_reconstructions(vae, dev)))
        return
    # latent statistics -> shift_factor / scaling_factor (the pipeline decodes z / scale + shift)
    with torch.no_grad():
        zs = torch.cat([vae.encode(to_tensor(imgs, np.arange(i, min(i + 256, len(imgs), 2048)), dev)).latent_dist.mean
                        for i in range(0, min(len(imgs), 2048), 256)])
    shift, scale = zs.mean().item(), 1.0 / zs.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    log(f"vae latents: shift_factor {shift:.4f} scaling_factor {scale:.4f}")
    log("vae reconstructions of 100 held-out scenes, checker: " + json.dumps(score_reconstructions(vae, dev)))


def score_reconstructions(vae, dev, n=100):
    """The checker on VAE round trips of held-out renders: the ceiling for what the DiT can reach."""
    from PIL import Image
    import checker
    rng = random.Random("heldout:vae")
    scenes = [world.sample_scene(rng, "heldout") for _ in range(n)]
    imgs = np.stack([np.asarray(world.render(s, 64)) for s in scenes])
    with torch.no_grad():
        rec = vae.decode(vae.encode(to_tensor(imgs, np.arange(n), dev)).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return checker.summarize([checker.score(Image.fromarray(r), world.caption(s)) for r, s in zip(rec, scenes)])


def train_dit(parts, imgs, caps, a, dev, gen):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    tok_l, tok_g, te1, te2, transformer, vae = parts
    if a.dit_steps == 0:  # a VAE-only run (reproduce.sh's VAE stages): no latents to cache, nothing to train
        return
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=a.shift)
    sigmas_all = sched.sigmas.to(dev)
    timesteps_all = sched.timesteps.to(dev)
    with torch.no_grad():  # cache the posterior (mean, std) of every image; sample per batch as dreambooth does
        stats = [vae.encode(to_tensor(imgs, np.arange(i, min(i + 256, len(imgs))), dev)).latent_dist
                 for i in range(0, len(imgs), 256)]
        mean = torch.cat([s.mean for s in stats])
        std = torch.cat([s.std for s in stats])
    # Every caption tokenized once (row len(caps) is "", the dropped caption): the same ids the pipeline's
    # tokenizers give, without tokenizer calls in the loop.
    ids_l, ids_g = (tokenize(t, list(caps) + [""]).to(dev) for t in (tok_l, tok_g))
    params = list(transformer.parameters()) + list(te1.parameters()) + list(te2.parameters())
    fused = dict(fused=True) if dev.type == "cuda" else {}  # one kernel for the whole update, not one per tensor
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4, **fused)
    # Every random draw of a step (images, caption dropout, timesteps, noise) comes from one seeded generator on
    # the training device, and the token ids live there: a step copies nothing from the host. (A copy from
    # pageable host memory waits for the GPU to finish, so the CPU could not queue the next step meanwhile.)
    gen_dev = gen if dev.type == "cpu" else torch.Generator(dev).manual_seed(a.seed)
    t0 = time.time()

    def lr_at(s):  # linear warm-up, then cosine from --lr down to --lr-floor x --lr over the steps, or the time budget
        p = (time.time() - t0) / a.time_budget if a.lr_schedule == "time" else s / max(a.dit_steps, 1)
        cos = 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
        return a.lr * min(1.0, (s + 1) / max(a.warmup, 1)) * (cos * (1 - a.lr_floor) + a.lr_floor)
    for m in (transformer, te1, te2):
        m.train()
    if a.merge_t5:  # training only: eval and the saved pipeline keep the standard 256 zeros and processor
        transformer.set_attn_processor(MergedT5AttnProcessor())
    cfg = vae.config
    step = -1
    for step in range(a.dit_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(len(imgs), (a.batch,), generator=gen_dev, device=dev)
        drop = torch.rand((a.batch,), generator=gen_dev, device=dev) < a.drop
        cap_idx = torch.where(drop, len(caps), idx)
        x0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen_dev, device=dev)
        x0 = (x0 - cfg.shift_factor) * cfg.scaling_factor
        noise = torch.randn(x0.shape, generator=gen_dev, device=dev)
        u = compute_density_for_timestep_sampling(a.weighting, a.batch, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                  device=dev, generator=gen_dev)
        ti = (u * sched.config.num_train_timesteps).long().clamp(max=len(timesteps_all) - 1)
        timesteps, sigmas = timesteps_all[ti], sigmas_all[ti].view(-1, 1, 1, 1)
        xt = (1.0 - sigmas) * x0 + sigmas * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            emb, pooled = encode_ids(ids_l[cap_idx], ids_g[cap_idx], te1, te2, transformer.config.joint_attention_dim,
                                     dev, t5_len=1 if a.merge_t5 else MAX_T5_LEN)
            pred = transformer(hidden_states=xt, timestep=timesteps, encoder_hidden_states=emb,
                               pooled_projections=pooled, return_dict=False)[0]
        w = compute_loss_weighting_for_sd3(a.weighting, sigmas)
        loss = (w.float() * (pred.float() - (noise - x0)) ** 2).reshape(a.batch, -1).mean(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 200 == 0 or step == a.dit_steps - 1:
            log(f"dit step {step} loss {loss.item():.4f} lr {lr_at(step):.2e} "
                f"({(step + 1) / (time.time() - t0):.1f} steps/s)")
        if a.time_budget and time.time() - t0 > a.time_budget:  # the schedule's end, or a safety net
            log(f"dit: time budget {a.time_budget} s reached after {step + 1} of {a.dit_steps} steps")
            break
        if a.stop_after and step + 1 >= a.stop_after:  # the learning-rate schedule still spans --dit-steps
            break
    a.dit_steps_done = step + 1
    if a.merge_t5:
        from diffusers.models.attention_processor import JointAttnProcessor2_0
        transformer.set_attn_processor(JointAttnProcessor2_0())
    for m in (transformer, te1, te2):
        m.eval().requires_grad_(False)


def save(parts, out, a, tmp):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    tok_l, tok_g, te1, te2, transformer, vae = parts
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[a.save_dtype]
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=a.shift), vae=vae, text_encoder=te1, tokenizer=tok_l, text_encoder_2=te2,
        tokenizer_2=tok_g, text_encoder_3=None, tokenizer_3=None)
    pipe.to("cpu", dtype)
    out = pathlib.Path(out)
    pipe.save_pretrained(out, safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):  # real repos also carry the slow files, which mmdit reads
        for n in ("vocab.json", "merges.txt"):
            shutil.copy(tmp / sub / n, out / sub / n)
    before = json.loads((pathlib.Path(a.resume) / "shapes_world.json").read_text()) if a.resume else None
    (out / "shapes_world.json").write_text(json.dumps({"resumed_from_run": before,
        "size": a.size, "seed": a.seed, "vae_steps": a.vae_steps, "vae_steps_done": getattr(a, "vae_steps_done", a.vae_steps),
        "vae_channels": a.vae_channels, "dit_steps": a.dit_steps, "lr_schedule": a.lr_schedule, "lr_floor": a.lr_floor, "resume": a.resume,
        "decoder_only": a.decoder_only, "time_budget": a.time_budget,
        "dit_steps_done": getattr(a, "dit_steps_done", a.dit_steps), "batch": a.batch, "lr": a.lr, "layers": a.layers,
        "heads": a.heads, "patch_size": a.patch_size, "vae_from": a.vae_from, "clip_dim": a.clip_dim, "n": a.n, "train_seconds": round(time.time() - a.t0),
        "heldout_pairs": world.HELDOUT_PAIRS, "heldout_triples": world.HELDOUT_TRIPLES}, indent=1))
    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2 ** 20
    log(f"saved {out} ({mb:.2f} MB)")


def evaluate(out, a, dev):
    """Generate n held-out captions x 2 seeds with the saved pipeline and score them with the checker."""
    from diffusers import StableDiffusion3Pipeline
    import checker
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None,
                                                    torch_dtype=torch.float32).to(dev)
    pipe.set_progress_bar_config(disable=True)
    from evaluate import heldout_captions, image_seed
    caps = heldout_captions(a.eval, a.seed)
    results = []
    edir = pathlib.Path(out) / "eval"
    edir.mkdir(exist_ok=True)
    for seed in (0, 1):
        for i in range(0, len(caps), 32):
            batch = caps[i:i + 32]
            imgs = pipe(batch, height=a.size, width=a.size, num_inference_steps=a.eval_steps, guidance_scale=a.cfg,
                        generator=[torch.Generator().manual_seed(image_seed(seed, i + j)) for j in range(len(batch))]).images
            for j, (c, im) in enumerate(zip(batch, imgs)):
                im.save(edir / f"{i + j:04d}_s{seed}.png")
                r = checker.score(im, c)
                r["file"] = f"{i + j:04d}_s{seed}.png"
                results.append(r)
    s = checker.summarize(results)
    from PIL import Image
    grid = Image.new("RGB", (8 * a.size, 4 * a.size))  # the first 32 images, seed 0, for a look
    for k in range(min(32, len(caps))):
        grid.paste(Image.open(edir / f"{k:04d}_s0.png"), ((k % 8) * a.size, (k // 8) * a.size))
    grid.save(edir / "grid.png")
    (edir / "results.json").write_text(json.dumps({"summary": s, "results": results}, indent=1))
    log("held-out eval: " + json.dumps(s))
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--data", help="a world.py dataset folder (default: render --n train scenes in memory)")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-channels", default="32,64,64",
                    help="VAE block_out_channels; n entries downsample 2^(n-1)x (default 4x: 16x16 latents at 64x64)")
    ap.add_argument("--vae-time-budget", type=float, default=0, help="stop the VAE stage after this many seconds")
    ap.add_argument("--vae-batch", type=int, default=128)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl", type=float, default=1e-6)
    ap.add_argument("--dit-steps", type=int, default=8000)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--drop", type=float, default=0.1, help="caption dropout (to '') for CFG")
    ap.add_argument("--weighting", default="logit_normal", choices=["logit_normal", "none", "mode", "sigma_sqrt", "cosmap"])
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--merge-t5", action=argparse.BooleanOptionalAction, default=True,
                    help="train with the 256 zero T5 tokens as one token + log(256) attention bias (exact, faster)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=2, help="the transformer's patch size (1: a token per latent pixel)")
    ap.add_argument("--vae-from", help="train a new DiT and text encoders on this saved pipeline's VAE (no VAE stage)")
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--clip-dim", type=int, default=64)
    ap.add_argument("--save-dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--stop-after", type=int, default=0, help="stop the DiT stage after this many steps")
    ap.add_argument("--lr-schedule", choices=["steps", "time"], default="steps",
                    help="time: the cosine runs over --time-budget seconds, for as many steps as fit")
    ap.add_argument("--lr-floor", type=float, default=0.1, help="the final learning rate, as a fraction of --lr")
    ap.add_argument("--resume", help="continue from a saved pipeline folder (then --vae-steps 0 keeps its VAE)")
    ap.add_argument("--decoder-only", action="store_true", help="VAE stage trains the decoder only")
    ap.add_argument("--time-budget", type=float, default=0, help="stop the DiT stage after this many seconds")
    ap.add_argument("--eval", type=int, default=0, help="then generate this many held-out captions x 2 seeds, score")
    ap.add_argument("--eval-steps", type=int, default=28)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: 64 images, 3+3 steps, load, generate one")
    a = ap.parse_args(argv)
    if a.smoke:
        a.n, a.batch, a.vae_batch, a.vae_steps, a.dit_steps, a.warmup, a.device = 64, 4, 4, 3, 3, 1, "cpu"
    if a.vae_from:
        a.vae_steps = 0
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the float32 parts (VAE) on GPU
    dev = torch.device(a.device)
    if not a.eval_only:
        t0 = a.t0 = time.time()
        imgs, caps = load_data(a)
        log(f"data: {len(imgs)} images {imgs.shape[1]}x{imgs.shape[2]}")
        gen = torch.Generator().manual_seed(a.seed)
        tmp = pathlib.Path(tempfile.mkdtemp())
        parts = build(a, caps, tmp)
        for name, m in zip(("text_encoder", "text_encoder_2", "transformer", "vae"), parts[2:]):
            m.to(dev)
            log(f"{name}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M parameters")
        train_vae(parts[5], imgs, a, dev, gen)
        train_dit(parts, imgs, caps, a, dev, gen)
        save(parts, a.out, a, tmp)
        shutil.rmtree(tmp)
        log(f"trained in {time.time() - t0:.0f} s")
    if a.smoke:
        from diffusers import StableDiffusion3Pipeline
        import checker
        pipe = StableDiffusion3Pipeline.from_pretrained(a.out, text_encoder_3=None, tokenizer_3=None,
                                                        torch_dtype=torch.float32)
        cap = "a small red circle above a large blue square on a white background"
        img = pipe(cap, height=a.size, width=a.size, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0)).images[0]
        img.save(pathlib.Path(a.out) / "smoke.png")
        log(f"generated {img.size} -> {a.out}/smoke.png; checker: " +
            json.dumps({k: v for k, v in checker.score(img, cap).items() if k != "detected"}))
    if a.eval:
        evaluate(a.out, a, dev)


if __name__ == "__main__":
    main()
