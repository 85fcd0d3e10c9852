"""The VAE stage of train_video.py (the causal 3D AutoencoderKLCogVideoX of demo/shapes-video), the clips it
learns from, and the checker on its round trips: what a DiT that generates latents like the encoder's can reach.

--decoder-only and --encoder-only train one half; --latent-anchor W keeps a resumed encoder's latents near the
ones its DiT learned (the drift of the posterior mean over their variance, times W), and a resumed VAE keeps its
latents' scaled std, so the resumed DiT can continue on them.
"""
import copy
import json
import math
import multiprocessing
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

import world
from train import log
from video_latents import detail_share


def render_np(clip, size=64):
    return np.stack([np.asarray(f) for f in world.render_clip(clip, size)])


def render_clips(clips, size=64, workers=None):
    """uint8 array [N, frames, size, size, 3], rendered in parallel (each clip is deterministic)."""
    workers = workers or min(os.cpu_count() or 1, 32)
    if workers <= 1 or len(clips) < 64:
        return np.stack([render_np(c, size) for c in clips])
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return np.stack(pool.starmap(render_np, [(c, size) for c in clips], chunksize=64))


def new_vae(a):
    from diffusers import AutoencoderKLCogVideoX
    vc = tuple(int(c) for c in a.vae_channels.split(","))
    return AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * len(vc),
                                  up_block_types=("CogVideoXUpBlock3D",) * len(vc), block_out_channels=vc,
                                  latent_channels=16, layers_per_block=1, norm_num_groups=a.vae_groups,
                                  temporal_compression_ratio=4, sample_height=a.size, sample_width=a.size,
                                  scaling_factor=1.0)


def to_video(vids, idx, dev):
    """uint8 [B, F, H, W, 3] rows -> float [B, 3, F, H, W] in [-1, 1] on dev."""
    return vids[idx].to(dev, non_blocking=True).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def amp(dev):
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def train_vae(vae, vids, a, dev, gen):
    if a.vae_steps == 0:
        return
    vae.train()
    if a.decoder_only:
        vae.encoder.requires_grad_(False)
    if a.encoder_only:
        vae.decoder.requires_grad_(False)
    # a resumed DiT knows the latents at their scaled std: keep it (measured before and after this stage)
    std_before = encode_all(vae, vids[:512], dev)[0].std().item() if a.resume and not a.decoder_only else None
    anchor = copy.deepcopy(vae).eval().requires_grad_(False) if a.latent_anchor else None
    opt = torch.optim.AdamW([q for q in vae.parameters() if q.requires_grad], lr=a.vae_lr, weight_decay=0.0)
    t0 = time.time()
    step = -1
    for step in range(a.vae_steps):
        # warm-up over 100 steps, then constant, or a cosine down to 10% over the time budget (--vae-lr-schedule
        # time) or the steps (steps)
        p = {"constant": 0.0, "steps": step / max(a.vae_steps, 1),
             "time": (time.time() - t0) / max(a.vae_time_budget, 1e-9)}[a.vae_lr_schedule]
        p = min(p, 1.0)
        cos = 0.5 * (1 + math.cos(math.pi * p))
        lr = a.vae_lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * cos)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(vids), (a.vae_batch,), generator=gen, device=gen.device)
        x = to_video(vids, idx, dev)
        with amp(dev):
            with torch.set_grad_enabled(not a.decoder_only):
                post = vae.encode(x).latent_dist
                z = post.sample()
            rec = vae.decode(z).sample.float()
        if a.object_weight != 1:  # pixels of (and next to) the coloured shape count object_weight times
            sat = (x.amax(1) - x.amin(1)).unsqueeze(1)  # [B, 1, F, H, W]: backgrounds are neutral (0)
            near = F.max_pool3d((sat > 0.15).float(), (1, 3, 3), 1, (0, 1, 1))
            w = 1 + (a.object_weight - 1) * near
            rec_loss = (w * (rec - x).abs()).mean() / w.mean() + (w * (rec - x) ** 2).mean() / w.mean()
        else:
            rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        loss = rec_loss + (0 if a.decoder_only else a.kl * post.kl().mean())
        if anchor is not None:  # stay near the latents the resumed DiT learned: the mean's drift over their variance
            with torch.no_grad(), amp(dev):
                was = anchor.encode(x).latent_dist.mean.float()
            loss = loss + a.latent_anchor * F.mse_loss(post.mean.float(), was) / std_before ** 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(a.vae_steps // 20, 1) == 0 or step == a.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} ({(step + 1) / (time.time() - t0):.2f} steps/s)")
        if a.vae_time_budget and time.time() - t0 > a.vae_time_budget:
            log(f"vae: time budget {a.vae_time_budget} s reached after {step + 1} of {a.vae_steps} steps")
            break
    a.vae_steps_done = step + 1
    vae.eval().requires_grad_(False)
    mean, _ = encode_all(vae, vids[:512], dev)
    if not a.decoder_only:
        scale = (vae.config.scaling_factor * std_before if a.resume else a.latent_scale) / mean.std().item()
        vae.register_to_config(scaling_factor=scale)
        log(f"vae latents: mean {mean.mean().item():.4f} std {mean.std().item():.4f} -> scaling_factor {scale:.4f}")
    log(f"vae latent detail share: {detail_share(mean):.4f}")
    log("vae reconstructions of held-out clips, checker: " + json.dumps(score_reconstructions(vae, dev, 4 if a.smoke else a.recon_n, a.size)))


@torch.no_grad()
def encode_all(vae, vids, dev, chunk=64):
    """Posterior (mean, std) of every clip, float32 [N, 16, latent frames, h, w] on dev."""
    means, stds = [], []
    for i in range(0, len(vids), chunk):
        with amp(dev):
            d = vae.encode(to_video(vids, torch.arange(i, min(i + chunk, len(vids))), dev)).latent_dist
        means.append(d.mean.float())
        stds.append(d.std.float())
    return torch.cat(means), torch.cat(stds)


def score_clips_parallel(frames_list, captions):
    """checker.score_clip over many clips (uint8 [F, H, W, 3] each), in worker processes."""
    import checker
    args = list(zip(frames_list, captions))
    if len(args) < 8:
        return [checker.score_clip(list(f), c) for f, c in args]
    with multiprocessing.get_context("fork").Pool(min(os.cpu_count() or 1, 16)) as pool:
        return pool.starmap(_score_one, args, chunksize=2)


def _score_one(frames, caption):
    import checker
    return checker.score_clip(list(frames), caption)


def heldout_clips(n, seed=0):
    rng = random.Random(f"heldout:clips:eval:{seed}")  # evaluate_video.py's captions are these clips'
    return [world.sample_clip(rng, "heldout") for _ in range(n)]


def score_reconstructions(vae, dev, n=100, size=64):
    """The checker on VAE round trips of the clips behind the evaluation's held-out captions: what a DiT that
    generates latents like the encoder's can reach (diagnose_video.py --ceiling: the same on the CPU)."""
    import checker
    clips = heldout_clips(n)
    vids = torch.from_numpy(render_clips(clips, size))
    outs = []
    with torch.no_grad():
        for i in range(0, n, 16):
            with amp(dev):
                x = to_video(vids, torch.arange(i, min(i + 16, n)), dev)
                rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
            outs.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy())
    results = score_clips_parallel(list(np.concatenate(outs)), [world.clip_caption(c) for c in clips])
    by = {}
    for c, r in zip(clips, results):
        by.setdefault(f"{c['shape']}/{c['size']}", []).append(r["frames_right"])
    summary = {k: v for k, v in checker.summarize_clips(results).items() if not k.startswith("shows_by")}
    return summary | {"frames_by_shape": {k: round(float(np.mean(v)), 3) for k, v in sorted(by.items())}}
