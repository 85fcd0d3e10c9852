#!/usr/bin/env python3
"""diffusers reference timings for SD3/SD3.5 on the GPU: random bf16 weights made on the GPU from a
model folder's configs (no weight files), eager mode (no torch.compile).

Prints one JSON line: per-step transformer time (batch 2 = CFG) and whole-pipeline time
(prompt encoding + N steps + VAE decode), medians over repeats.

    python3 scripts/bench/bench_diffusers_sd3.py LAYOUT_DIR [--transformer-config FILE] [--size 1024] [--steps 28]
"""
import argparse
import json
import statistics
import time

import torch


def random_init(module, seed=0):
    """Materialise a meta-device module on the GPU with random weights (norms at 1)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    module.to_empty(device="cuda")
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
        for name, b in module.named_buffers():
            if b.is_floating_point():
                b.normal_(0.0, 0.02, generator=g)
            elif name.endswith("position_ids"):  # CLIP's arange buffer: meta init left it empty
                b.copy_(torch.arange(b.shape[-1], device=b.device).expand_as(b))
    return module


def build(cls, config, dtype):
    with torch.device("meta"):
        m = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return random_init(m).to(dtype).eval()


def cuda_time(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("layout")
    ap.add_argument("--transformer-config", default=None)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--pipeline-runs", type=int, default=2)
    ap.add_argument("--skip-pipeline", action="store_true")
    a = ap.parse_args()

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel,
                              T5TokenizerFast)
    import os
    dtype = torch.bfloat16
    L = a.layout
    tcfg = SD3Transformer2DModel.load_config(a.transformer_config or os.path.join(L, "transformer"))
    transformer = build(SD3Transformer2DModel, tcfg, dtype)
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "bf16",
           "size": a.size, "steps": a.steps, "cfg": a.cfg, "layers": tcfg["num_layers"],
           "attention": "F.scaled_dot_product_attention (PyTorch default dispatch)"}

    # One transformer call as the pipeline makes it with CFG: batch 2, 77 + 256 text tokens.
    lat = a.size // 8
    x = torch.randn(2, 16, lat, lat, device="cuda", dtype=dtype)
    ctx = torch.randn(2, 77 + 256, tcfg["joint_attention_dim"], device="cuda", dtype=dtype)
    pooled = torch.randn(2, tcfg["pooled_projection_dim"], device="cuda", dtype=dtype)
    t = torch.full((2,), 500.0, device="cuda")
    with torch.no_grad():
        med, _ = cuda_time(lambda: transformer(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                                               timestep=t, return_dict=False), 3, a.iters)
    res["transformer_step_ms"] = med

    if not a.skip_pipeline:
        clip_l = build(CLIPTextModelWithProjection, CLIPTextConfig.from_pretrained(os.path.join(L, "text_encoder")), dtype)
        clip_g = build(CLIPTextModelWithProjection, CLIPTextConfig.from_pretrained(os.path.join(L, "text_encoder_2")), dtype)
        t5 = build(T5EncoderModel, T5Config.from_pretrained(os.path.join(L, "text_encoder_3")), dtype)
        vae = build(AutoencoderKL, AutoencoderKL.load_config(os.path.join(L, "vae")), dtype)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(os.path.join(L, "scheduler")),
            text_encoder=clip_l, tokenizer=CLIPTokenizer.from_pretrained(os.path.join(L, "tokenizer")),
            text_encoder_2=clip_g, tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(L, "tokenizer_2")),
            text_encoder_3=t5, tokenizer_3=T5TokenizerFast.from_pretrained(os.path.join(L, "tokenizer_3")))
        pipe.set_progress_bar_config(disable=True)

        def run():
            pipe(prompt="a photo of an astronaut riding a horse on mars", num_inference_steps=a.steps,
                 guidance_scale=a.cfg, width=a.size, height=a.size, generator=torch.Generator("cpu").manual_seed(0),
                 output_type="np")
        times = []
        run()  # warm-up
        for _ in range(a.pipeline_runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        res["pipeline_s"] = statistics.median(times)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
