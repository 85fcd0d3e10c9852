#!/usr/bin/env python3
"""diffusers reference timings on the GPU (eager, no torch.compile): random bf16 weights made on the GPU
from a weightless model folder (configs + tokenizers), for SD3/SD3.5, FLUX.1 and CogVideoX.

Per step it reports the median interval between steps (callback_on_step_end with a device sync: what
`mmdit bench` measures) and the median transformer call (CUDA events around forward); per pipeline,
the wall time of one whole call (prompt encoding, all steps, VAE decode), after a short warm-up call.

    python3 scripts/bench/bench_diffusers.py LAYOUT --family sd3|flux|cogvideox [--size 1024] [--steps 28] ...
"""
import argparse
import json
import os
import statistics
import time

import torch


def random_init(module, seed=0):
    """Materialise a meta-device module on the GPU with random weights (norm gains 1)."""
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
            elif name.endswith("position_ids"):  # CLIP's arange buffer: the meta init left it empty
                b.copy_(torch.arange(b.shape[-1], device=b.device).expand_as(b))
    return module


def build(cls, folder, dtype):
    if hasattr(cls, "load_config"):  # diffusers
        cfg = cls.load_config(folder)
        with torch.device("meta"):
            m = cls.from_config(cfg)
    else:  # transformers
        cfg = cls.config_class.from_pretrained(folder)
        with torch.device("meta"):
            m = cls(cfg)
    return random_init(m).to(dtype).eval()


def make_pipeline(L, family, dtype):
    import diffusers
    import transformers
    index = json.load(open(os.path.join(L, "model_index.json")))
    parts = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
            continue
        lib = diffusers if spec[0] == "diffusers" else transformers
        cls = getattr(lib, spec[1])
        folder = os.path.join(L, name)
        if "Scheduler" in spec[1]:
            parts[name] = cls.from_pretrained(folder)
        elif "Tokenizer" in spec[1]:
            parts[name] = (transformers.T5TokenizerFast if "T5" in spec[1] else cls).from_pretrained(folder)
        else:
            parts[name] = build(cls, folder, dtype)
    pipe = getattr(diffusers, index["_class_name"])(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("layout")
    ap.add_argument("--family", required=True, choices=["sd3", "flux", "cogvideox"])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--warmup-steps", type=int, default=2)
    a = ap.parse_args()
    dtype = torch.bfloat16
    pipe = make_pipeline(a.layout, a.family, dtype)

    calls = []  # (start, end) CUDA events of each transformer forward

    def pre(mod, args, kwargs):
        s = torch.cuda.Event(enable_timing=True)
        s.record()
        calls.append([s, None])

    def post(mod, args, kwargs, out):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        calls[-1][1] = e

    pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    pipe.transformer.register_forward_hook(post, with_kwargs=True)
    stamps = []

    def on_step(p, i, t, cb):
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return cb

    kwargs = dict(prompt="a photo of an astronaut riding a horse on mars", width=a.width, height=a.height,
                  generator=torch.Generator("cpu").manual_seed(0), output_type="np", callback_on_step_end=on_step)
    if a.family == "flux":
        kwargs.update(guidance_scale=3.5, max_sequence_length=512)
    elif a.family == "sd3":
        kwargs.update(guidance_scale=a.cfg)
    else:
        kwargs.update(guidance_scale=a.cfg, num_frames=a.frames)
    with torch.no_grad():
        pipe(num_inference_steps=a.warmup_steps, **kwargs)  # warm-up: kernels, allocator, cuDNN plans
        torch.cuda.synchronize()
        calls.clear()
        stamps.clear()
        kwargs["generator"] = torch.Generator("cpu").manual_seed(1)
        t0 = time.perf_counter()
        pipe(num_inference_steps=a.steps, **kwargs)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
    steps = [b - a_ for a_, b in zip(stamps, stamps[1:])]
    res = {"impl": "diffusers", "family": a.family, "card": torch.cuda.get_device_name(), "torch": torch.__version__,
           "diffusers": __import__("diffusers").__version__, "dtype": "bf16", "width": a.width, "height": a.height,
           "steps": a.steps, "cfg": kwargs["guidance_scale"],
           "attention": "F.scaled_dot_product_attention, PyTorch default dispatch",
           "step_ms": statistics.median(steps) * 1000,
           "transformer_call_ms": statistics.median(s.elapsed_time(e) for s, e in calls),
           "transformer_calls": len(calls), "pipeline_s": total}
    if a.family == "cogvideox":
        res["frames"] = a.frames
    print(json.dumps(res))


if __name__ == "__main__":
    main()
