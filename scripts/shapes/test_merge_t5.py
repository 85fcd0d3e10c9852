#!/usr/bin/env python3
"""Checks train.py's --merge-t5: an SD3Transformer2DModel on 77 CLIP + 256 zero "T5" tokens with the standard
JointAttnProcessor2_0 against 77 + 1 zero token with train.MergedT5AttnProcessor (log(256) on that key's logit):
outputs and parameter gradients must agree to float32 rounding. Then times one forward + backward of each at
batch 32 (informative only). CPU, float32, seeded; exits non-zero on a mismatch.

    python scripts/shapes/test_merge_t5.py
"""
import pathlib
import sys
import time

import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train import MAX_T5_LEN, MergedT5AttnProcessor  # noqa: E402

JOINT = 128


def model(seed, **kw):
    torch.manual_seed(seed)
    kw.setdefault("patch_size", 2)
    return SD3Transformer2DModel(sample_size=16, in_channels=16, out_channels=16, num_layers=3,
                                 attention_head_dim=64, num_attention_heads=3, joint_attention_dim=JOINT,
                                 caption_projection_dim=192, pooled_projection_dim=128, pos_embed_max_size=32, **kw)


def inputs(batch, seed):
    g = torch.Generator().manual_seed(seed)
    clip = torch.randn(batch, 77, JOINT, generator=g)
    clip[..., 2 * 48:] = 0  # CLIP hidden states zero-padded to joint_attention_dim, as encode_ids does
    kw = dict(hidden_states=torch.randn(batch, 16, 16, 16, generator=g), timestep=torch.rand(batch, generator=g) * 1000,
              pooled_projections=torch.randn(batch, 128, generator=g))
    return kw, clip


def run(m, kw, clip, t5_len, merged, backward=True):
    m.set_attn_processor(MergedT5AttnProcessor() if merged else JointAttnProcessor2_0())
    m.zero_grad(set_to_none=True)
    emb = torch.cat([clip, torch.zeros(len(clip), t5_len, JOINT)], 1)
    out = m(encoder_hidden_states=emb, return_dict=False, **kw)[0]
    if backward:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # a loss that weighs every output
    return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def rel(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def main():
    torch.set_num_threads(1)  # with 2 cores, OpenMP's per-operation overhead was ~7 ms and hid the compute
    ok = True
    for name, m in (("train.py sizes", model(0)), ("qk_norm rms_norm", model(1, qk_norm="rms_norm")),
                    ("patch size 1 (the demo model's)", model(2, patch_size=1))):
        kw, clip = inputs(4, 2)
        ref, gref = run(m, kw, clip, MAX_T5_LEN, merged=False)
        out, gout = run(m, kw, clip, 1, merged=True)
        e_out = rel(ref, out)
        # every parameter gets a gradient in both, and the same one (per tensor relative error, worst of all)
        e_grad = max(rel(gref[n], gout[n]) for n in gref) if gref.keys() == gout.keys() else float("inf")
        good = e_out <= 1e-5 and e_grad <= 1e-4
        ok &= good
        print(f"{name}: output max rel err {e_out:.2e} (<= 1e-5), parameter gradients worst max rel err {e_grad:.2e} "
              f"(<= 1e-4) over {len(gref)} tensors: {'ok' if good else 'FAIL'}")

    m = model(0)
    kw, clip = inputs(32, 3)
    for merged, t5_len in ((False, MAX_T5_LEN), (True, 1)):
        run(m, kw, clip, t5_len, merged)  # warm-up
        t = time.perf_counter()
        run(m, kw, clip, t5_len, merged)
        print(f"batch 32 forward+backward, {64 + 77 + t5_len} tokens ({'merged' if merged else 'standard'}): "
              f"{time.perf_counter() - t:.3f} s (CPU, 1 thread)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
