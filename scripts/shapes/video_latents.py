"""What the video DiT's loss sees of the latents (train_video.py): the latents' spatial detail, where an object's
shape lives, and the loss re-weightings tried to make the DiT learn it (docs/SHAPES.md, the video part)."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def object_weights(vids, weight, dev, chunk=1024):
    """Per latent position [N, latent frames, h, w] (float16 on dev): weight where the shape is, 1 elsewhere.
    The shape's pixels are the saturated ones (the backgrounds are neutral), max-pooled over each latent frame's
    frames (frame 0 alone, then groups of 4: the causal VAE's) and its 4x4 pixels, then grown by one latent pixel."""
    out = []
    for i in range(0, len(vids), chunk):
        v = vids[i:i + chunk].to(dev)
        sat = ((v.amax(-1).short() - v.amin(-1).short()) > 38).float()  # [B, F, H, W]; 0.15 of the range
        first, rest = sat[:, :1], sat[:, 1:]
        rest = rest.reshape(len(v), -1, 4, *sat.shape[2:]).amax(2)
        m = torch.cat([first, rest], 1)  # [B, latent frames, H, W]
        m = F.max_pool2d(m, 4)  # the VAE's 4x spatial compression
        m = F.max_pool2d(m, 3, 1, 1)
        out.append((1 + (weight - 1) * m).half())
    return torch.cat(out)


def detail(z):
    """The spatial detail of latents [..., h, w]: z minus its 3x3 mean (each frame and channel alone). The shape
    of an object lives there: a 3x3 blur of the latents decodes a triangle as a blob (docs/SHAPES.md)."""
    flat = z.reshape(-1, 1, *z.shape[-2:])
    return (flat - F.avg_pool2d(flat, 3, 1, 1, count_include_pad=False)).reshape(z.shape)


def detail_share(lat):
    """The share of each clip's latent variance that is spatial detail (detail()), averaged over the clips of
    lat [N, ...]. The image demo's VAE: 0.49 (64 scenes); the committed video VAE: 0.031 (64 clips)."""
    flat = lat.reshape(len(lat), -1)
    return (detail(lat).pow(2).reshape(len(lat), -1).mean(1) / flat.var(1)).mean().item()


def draw_timesteps(a, batch, n, gen, dev):
    """Uniform over 0..n-1 (diffusers' CogVideoX example), or --t-logit-normal M: sigmoid(N(M, 1)) x n, which
    puts more of the steps at middle noise levels (and, at M < 0, at the lower ones)."""
    if a.t_logit_normal is None:
        return torch.randint(0, n, (batch,), generator=gen, device=dev)
    u = torch.sigmoid(a.t_logit_normal + torch.randn((batch,), generator=gen, device=dev))
    return (u * n).long().clamp(0, n - 1)
