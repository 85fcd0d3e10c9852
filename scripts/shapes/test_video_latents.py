#!/usr/bin/env python3
"""Checks video_latents.py (CTest shapes_video_latents): the latent detail and its share on known fields, the
object weights of a rendered clip, and the measurement behind docs/SHAPES.md's diagnosis of the video demo's
blobs: the image demo's VAE keeps far more of its latents' variance in spatial detail than the video demo's."""
import pathlib
import random
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "goldens"))
import world  # noqa: E402
from train import to_tensor  # noqa: E402
from video_vae import encode_all, render_clips  # noqa: E402
from video_latents import detail, detail_share, object_weights  # noqa: E402


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    return ok


def fields():
    g = torch.Generator().manual_seed(0)
    const = torch.full((2, 16, 5, 16, 16), 3.0)
    ramp = torch.arange(16.0).view(1, 1, 1, 1, 16).expand(2, 16, 5, 16, 16)
    noise = torch.randn((2, 16, 5, 16, 16), generator=g)
    ok = check(detail(const).abs().max().item() < 1e-6, "a constant field has no detail")
    # a linear ramp equals its 3x3 mean away from the border columns
    ok &= check(detail(ramp)[..., 1:-1].abs().max().item() < 1e-5, "a linear ramp has no detail inside")
    s = detail_share(noise)
    ok &= check(0.85 < s < 0.92, f"white noise: detail share {s:.3f} (8/9 inside, less at the border)")
    s = detail_share(noise + 10 * ramp / 15)
    ok &= check(s < 0.3, f"noise on a large ramp: detail share {s:.3f} (the ramp's variance is not detail)")
    return ok


def weights():
    clip = world.sample_clip(random.Random("latents:test"), "train")
    v = torch.from_numpy(render_clips([clip]))
    w = object_weights(v, 5.0, torch.device("cpu"))[0].float()  # [5, 16, 16]
    on = (w > 1).float()
    ok = check(tuple(w.shape) == (5, 16, 16) and set(w.unique().tolist()) <= {1.0, 5.0}, "weights are 1 or 5")
    frac = on.mean().item()
    ok &= check(0.02 < frac < 0.5, f"the shape covers {frac:.3f} of the latent positions")
    # the weighted cells of the first latent frame hold the object's pixels of frame 0
    sat = (v[0, 0].amax(-1).short() - v[0, 0].amin(-1).short()) > 38
    ys, xs = np.nonzero(sat.numpy())
    cells = {(y // 4, x // 4) for y, x in zip(ys, xs)}
    ok &= check(all(on[0, y, x] == 1 for y, x in cells), f"all {len(cells)} cells of frame 0's object are weighted")
    return ok


def vaes():
    from diffusers import AutoencoderKL, AutoencoderKLCogVideoX
    rng = random.Random("latents:test:vae")
    vid = AutoencoderKLCogVideoX.from_pretrained(ROOT / "demo/shapes-video/vae", torch_dtype=torch.float32)
    v = torch.from_numpy(render_clips([world.sample_clip(rng, "train") for _ in range(8)]))
    video = detail_share(encode_all(vid, v, torch.device("cpu"), chunk=8)[0])
    img = AutoencoderKL.from_pretrained(ROOT / "demo/shapes-world/vae", torch_dtype=torch.float32)
    x = to_tensor(np.stack([np.asarray(world.render(world.sample_scene(rng, "train"))) for _ in range(16)]),
                  slice(None), "cpu")
    with torch.no_grad():
        image = detail_share(img.encode(x).latent_dist.mean)
    # measured on 64 clips / scenes: 0.031 and 0.49 (docs/SHAPES.md)
    return check(video < 0.08 and image > 0.3, f"detail share: video VAE {video:.3f} (< 0.08), image VAE {image:.3f} (> 0.3)")


if __name__ == "__main__":
    results = [fields(), weights(), vaes()]
    sys.exit(0 if all(results) else 1)
