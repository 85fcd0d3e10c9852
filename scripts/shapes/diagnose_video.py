#!/usr/bin/env python3
"""Why a shapes-video model draws blobs: two measurements of a saved pipeline (train_video.py's), on the CPU.

    diagnose_video.py MODEL [--clips 4] [--t 100,300,500] [--split train] [--picture out.png]
                      [--image-demo demo/shapes-world]
    diagnose_video.py MODEL --ceiling 100

1. The VAE: the share of each clip's latent variance that is spatial detail (z minus its 3x3 mean,
   train_video.detail), and that detail's variance in the scaled latents. The shape of an object lives there:
   blurring the latents 3x3 decodes a triangle as a blob. detail_snr is the noise schedule's SNR at t times that
   variance: how visible the shape is in the noised latents the DiT sees.
2. The DiT: its x0 prediction from a clip noised to timestep t (the scheduler's alphas_cumprod, v-prediction),
   decoded, and the fraction of its frames in which the checker sees the caption's colour and shape
   (x0_shape_frames; the VAE's reconstruction of the same clips: reconstruction_shape_frames). Against it,
   noised_shape_frames: the same for the noised latents by themselves (xt / sqrt(alphas_cumprod), no DiT), what
   the input still shows. Where that is near 0 and x0_shape_frames is high, the DiT drew the shape from the
   caption; an untrained DiT scores near noised_shape_frames. With --picture,
   a strip: per clip a row of the reconstruction, then the decoded x0 prediction at each t (frames 0 and 8).
3. With --ceiling N, only the VAE's ceiling (video_vae.score_reconstructions): its round trips (encode,
   decode) of the very clips behind evaluate_video.py's first N held-out captions, scored by the checker as
   evaluate_video.py scores generated clips; colour_shape_frames overall, frames_by_shape by shape and size.
   A DiT that generates latents like the encoder's cannot score much above it.
4. With --fit-latents N (after --ceiling's scores), whether the decoder can draw what the encoder's latents
   lose: for the first N small stars and crosses among those clips, the latent itself is fitted by Adam
   (--fit-iters, from the encoder's mean) so that the decoder reproduces the clip; colour+shape of frames before
   and after, and how far the latent moved (relative norm). Where they end right, the decoder could draw them
   and the encoder is what to train.
"""
import argparse
import json
import pathlib
import random
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "goldens"))
import checker  # noqa: E402
import world  # noqa: E402
from train import to_tensor  # noqa: E402
from train_video import strip, tokenize  # noqa: E402
from video_latents import detail, detail_share  # noqa: E402
from video_vae import encode_all, heldout_clips, render_clips, score_reconstructions, to_video  # noqa: E402


def to_frames(vae, z):
    """Scaled latents [1, F, C, h, w] -> uint8 frames [frames, H, W, 3]."""
    x = vae.decode(z.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor).sample[0]
    return ((x.permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()


@torch.no_grad()
def image_demo(folder, snrs, n, seed):
    """The same x0 test on the image demo (an SD3 pipeline, flow matching: x_s = (1 - s) x0 + s noise, so
    SNR = ((1 - s) / s)^2): the checker's colour+shape of its objects at each SNR, on n training scenes, for the
    x0 prediction and for the noised latents alone (x_s / (1 - s))."""
    from diffusers import StableDiffusion3Pipeline
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    torch_dtype=torch.float32)
    c, rng, gen = pipe.vae.config, random.Random(f"diagnose:image:{seed}"), torch.Generator().manual_seed(seed)
    hits, seen = {snr: [] for snr in snrs}, {snr: [] for snr in snrs}
    for _ in range(n):
        scene = world.sample_scene(rng, "train")
        cap = world.caption(scene)
        x = to_tensor(np.asarray(world.render(scene))[None], [0], "cpu")
        x0 = (pipe.vae.encode(x).latent_dist.mean - c.shift_factor) * c.scaling_factor
        emb, _, pooled, _ = pipe.encode_prompt(cap, cap, cap, do_classifier_free_guidance=False)
        for snr in snrs:
            s = 1 / (1 + snr ** 0.5)
            xs = (1 - s) * x0 + s * torch.randn(x0.shape, generator=gen)
            v = pipe.transformer(hidden_states=xs, timestep=torch.tensor([s * 1000]), encoder_hidden_states=emb,
                                 pooled_projections=pooled, return_dict=False)[0]
            for z, h in ((xs - s * v, hits), (xs / (1 - s), seen)):  # the x0 prediction; the noised latents alone
                img = pipe.vae.decode(z / c.scaling_factor + c.shift_factor).sample[0]
                img = ((img.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
                h[snr] += [o["colour_shape"] for o in checker.score(img, cap)["objects"]]
    mean = lambda d: {round(snr, 3): round(float(np.mean(h)), 3) for snr, h in d.items()}  # noqa: E731
    return {"x0_colour_shape": mean(hits), "noised_colour_shape": mean(seen)}


def fit_latents(vae, pool, n, iters):
    """Per small star or cross among the first `pool` evaluation clips (the first n of them): colour+shape of
    frames of the VAE's round trip, then of the decoded latent fitted to the clip (L1 + MSE, Adam 0.05), and the
    latent's relative move."""
    vae.requires_grad_(False)
    clips = [c for c in heldout_clips(pool) if c["size"] == "small" and c["shape"] in ("star", "cross")][:n]
    out = []
    for clip in clips:
        caption = world.clip_caption(clip)
        x = to_video(torch.from_numpy(render_clips([clip])), torch.tensor([0]), torch.device("cpu"))
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.mean
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.05)
        for _ in range(iters):
            rec = vae.decode(z).sample
            loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            right = [checker.score_clip(list(to_frames(vae, w.permute(0, 2, 1, 3, 4) * vae.config.scaling_factor)),
                                        caption)["frames_right"] for w in (z0, z)]
        out.append({"caption": caption, "encoded": right[0], "fitted": right[1],
                    "latent_move": round(((z - z0).norm() / z0.norm()).item(), 3)})
    return out


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--t", default="100,300,500", help="timesteps of the x0 predictions")
    ap.add_argument("--split", default="train", choices=["train", "heldout"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--picture")
    ap.add_argument("--image-demo", help="also the image demo (demo/shapes-world) at the same SNRs, on 2x --clips scenes")
    ap.add_argument("--ceiling", type=int, help="only score the VAE's round trips of this many evaluation clips")
    ap.add_argument("--fit-latents", type=int, help="then fit the latents of this many small stars and crosses")
    ap.add_argument("--fit-iters", type=int, default=30)
    a = ap.parse_args(argv)
    if a.fit_latents and not a.ceiling:
        ap.error("--fit-latents: give --ceiling N too (the clips it fits are among those N)")
    from diffusers import CogVideoXPipeline
    from diffusers.utils import logging
    logging.set_verbosity_error()
    pipe = CogVideoXPipeline.from_pretrained(a.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    vae, ac = pipe.vae, pipe.scheduler.alphas_cumprod
    if a.ceiling:
        print(json.dumps(score_reconstructions(vae, torch.device("cpu"), a.ceiling)), flush=True)
        if a.fit_latents:
            with torch.enable_grad():
                for row in fit_latents(vae, a.ceiling, a.fit_latents, a.fit_iters):
                    print(json.dumps(row), flush=True)
        return
    rng = random.Random(f"diagnose:{a.split}:{a.seed}")
    gen = torch.Generator().manual_seed(a.seed)
    ts = [int(t) for t in a.t.split(",")]
    clips = [world.sample_clip(rng, a.split) for _ in range(a.clips)]
    lat = encode_all(vae, torch.from_numpy(render_clips(clips)), torch.device("cpu"))[0] * vae.config.scaling_factor
    dvar = detail(lat).pow(2).mean().item()
    recon, rows = [], []
    kept, visible = {t: [] for t in ts}, {t: [] for t in ts}
    for clip, z in zip(clips, lat):
        x0 = z[None].permute(0, 2, 1, 3, 4)  # [1, F, C, h, w], the transformer's layout
        caption = world.clip_caption(clip)
        emb = pipe.text_encoder(tokenize(pipe.tokenizer, [caption]))[0]
        row = [to_frames(vae, x0)]
        recon.append(checker.score_clip(list(row[0]), caption)["frames_right"])
        for t in ts:
            s_a, s_n = ac[t].sqrt(), (1 - ac[t]).sqrt()
            xt = s_a * x0 + s_n * torch.randn(x0.shape, generator=gen)
            v = pipe.transformer(hidden_states=xt, encoder_hidden_states=emb, timestep=torch.tensor([t]),
                                 return_dict=False)[0]
            pred = s_a * xt - s_n * v
            frames = to_frames(vae, pred)
            kept[t].append(checker.score_clip(list(frames), caption)["frames_right"])
            # what the noised latents show by themselves (no DiT): the x0 estimate xt / sqrt(alphas_cumprod)
            visible[t].append(checker.score_clip(list(to_frames(vae, xt / s_a)), caption)["frames_right"])
            row.append(frames)
        rows.append([f for r in row for f in (r[0], r[8])])
    result = {"latent_detail_share": round(detail_share(lat), 4),
              "reconstruction_shape_frames": round(float(np.mean(recon)), 3),
              "x0_shape_frames": {t: round(float(np.mean(k)), 3) for t, k in kept.items()},
              "noised_shape_frames": {t: round(float(np.mean(k)), 3) for t, k in visible.items()},
              "latent_detail_variance": round(dvar, 5),
              "snr": {t: round(float(ac[t] / (1 - ac[t])), 3) for t in ts},
              "detail_snr": {t: round(float(ac[t] / (1 - ac[t]) * dvar), 4) for t in ts},
              "clips": a.clips, "split": a.split}
    if a.image_demo:
        result["image_demo_at_snr"] = image_demo(a.image_demo, [float(ac[t] / (1 - ac[t])) for t in ts],
                                                                 2 * a.clips, a.seed)
    print(json.dumps(result))
    if a.picture:
        strip(rows, a.picture, every=1, scale=2, gap=4)


if __name__ == "__main__":
    main()
