#!/usr/bin/env python3
"""Low precision against the reference in the same precision: runs every tiny golden case through
diffusers (the pipeline class named by the folder, torch_dtype DTYPE, on DEVICE) and through
`mmdit generate --device DEVICE --dtype DTYPE`, and compares the two, and each with the float32 CPU golden.
One JSON line per case.

    python3 scripts/bench/bf16_vs_diffusers.py MMDIT GOLDEN_DIR [--device cuda] [--dtype bf16]
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from device_parity import flags  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def diffusers_run(folder, p, device, dtype):
    import diffusers
    index = json.load(open(folder / "model_index.json"))
    pipe = getattr(diffusers, index["_class_name"]).from_pretrained(folder, torch_dtype=DTYPES[dtype]).to(device)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator("cpu").manual_seed(p["seed"])
    kw = dict(prompt=p["prompt"], negative_prompt=p.get("negative_prompt"), num_inference_steps=p["steps"],
              width=p["width"], height=p["height"], generator=gen, output_type="np")
    name = index["_class_name"]
    if name.startswith("Flux"):
        kw.update(guidance_scale=p.get("guidance", 3.5), true_cfg_scale=p.get("cfg", 1.0),
                  num_images_per_prompt=p.get("batch", 1), max_sequence_length=p.get("max_sequence_length", 512))
        return list(pipe(**kw).images)
    if name.startswith("CogVideoX"):
        kw.update(guidance_scale=p["cfg"], num_frames=p["frames"], use_dynamic_cfg=p.get("dynamic_cfg", False),
                  max_sequence_length=pipe.transformer.config.max_text_seq_length)
        return list(pipe(**kw).frames[0])
    kw.update(guidance_scale=p["cfg"], num_images_per_prompt=p.get("batch", 1),
              max_sequence_length=p.get("max_sequence_length", 256))
    if "shift" in p:
        pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, shift=p["shift"])
    if "slg_scale" in p:
        kw.update(skip_guidance_layers=p["slg_layers"], skip_layer_guidance_scale=p["slg_scale"],
                  skip_layer_guidance_start=p["slg_start"], skip_layer_guidance_stop=p["slg_stop"])
    return list(pipe(**kw).images)


def compare(a, b):
    a, b = np.stack(a).astype(np.float64), np.stack(b).astype(np.float64)
    mse = ((a - b) ** 2).mean()
    return {"max_diff": int(np.abs(a - b).max()), "psnr_db": round(float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mmdit")
    ap.add_argument("golden")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    a = ap.parse_args()
    g = pathlib.Path(a.golden)
    for c in json.load(open(g / "cases.json")):
        refs = c.get("images") or c.get("frames")
        video = "frames" in c
        res = {"case": c["name"], "device": a.device, "dtype": a.dtype}
        try:
            with torch.no_grad():
                theirs = [(x * 255).round().astype(np.uint8) for x in diffusers_run(g / c["model"], c["params"], a.device, a.dtype)]
        except Exception as e:  # report and go on: one failing case must not hide the others
            res["diffusers_error"] = str(e).splitlines()[0][:200]
            theirs = None
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/f_%03d.png" if video else f"{tmp}/out.png"
            r = subprocess.run([a.mmdit, "generate", "-q", "--model", str(g / c["model"]), "--device", a.device,
                                "--dtype", a.dtype, "-o", out] + flags(c["params"]), capture_output=True, text=True)
            if r.returncode != 0:
                res["mmdit_error"] = r.stderr.strip()
                print(json.dumps(res))
                continue
            if video:
                paths = [f"{tmp}/f_{i:03d}.png" for i in range(len(refs))]
            elif len(refs) > 1:
                paths = [f"{tmp}/out-{i}.png" for i in range(len(refs))]
            else:
                paths = [out]
            ours = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        golden = [np.asarray(Image.open(g / f).convert("RGB")) for f in refs]
        res["mmdit_vs_golden_f32"] = compare(ours, golden)
        if theirs is not None:
            res["diffusers_vs_golden_f32"] = compare(theirs, golden)
            res["mmdit_vs_diffusers"] = compare(ours, theirs)
        print(json.dumps(res))


if __name__ == "__main__":
    main()
