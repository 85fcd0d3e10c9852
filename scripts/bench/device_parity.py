#!/usr/bin/env python3
"""Same seed, same image on any device: runs every case of a goldens folder (cases.json, as written by
scripts/goldens/{sd3_pipeline,flux,cogvideox}.py) through `mmdit generate` on DEVICE in f32 and bf16 and
compares each image or frame with diffusers' float32 CPU golden. One JSON line per case and dtype.

    python3 scripts/bench/device_parity.py MMDIT GOLDEN_DIR [--device cuda] [--multi '--gpus 2 --parallel cfg' ...]

--multi: the same case over several GPUs (docs/SCALING.md), against the one-GPU image (f32: <= 1 level, bf16:
>= 45 dB) and the golden.
"""
import argparse
import json
import pathlib
import shlex
import subprocess
import tempfile

import numpy as np
from PIL import Image


def flags(p):
    out = []
    for k, v in p.items():
        if isinstance(v, bool):
            if v:
                out.append("--" + k.replace("_", "-"))
        elif isinstance(v, list):
            out += ["--" + k.replace("_", "-"), ",".join(map(str, v))]
        else:
            out += ["--" + k.replace("_", "-"), str(v)]
    return out


def run(a, g, c, dtype, extra, tmp):
    """Images (float64 RGB arrays) of one case, or the error text."""
    refs = c.get("images") or c.get("frames")
    video = "frames" in c
    out = f"{tmp}/f_%03d.png" if video else f"{tmp}/out.png"
    cmd = [a.mmdit, "generate", "-q", "--model", str(g / c["model"]), "--device", a.device, "--dtype", dtype,
           "-o", out] + flags(c["params"]) + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return r.stderr.strip()
    if video:
        got = [f"{tmp}/f_{i:03d}.png" for i in range(len(refs))]
    elif len(refs) > 1:
        got = [f"{tmp}/out-{i}.png" for i in range(len(refs))]
    else:
        got = [out]
    return [np.asarray(Image.open(p).convert("RGB")).astype(np.float64) for p in got]


def compare(xs, ys):
    diffs = [np.abs(x - y).max() for x, y in zip(xs, ys)]
    mse = float(np.mean([((x - y) ** 2).mean() for x, y in zip(xs, ys)]))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
    return int(max(diffs)), round(psnr, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mmdit")
    ap.add_argument("golden")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--unfused", action="store_true",
                    help="also run --no-fused: the fused kernels' image against the plain path's (PSNR)")
    ap.add_argument("--multi", action="append", default=[],
                    help="also run with these flags (e.g. '--gpus 2', '--cuda-graphs'): against the default run's image")
    a = ap.parse_args()
    g = pathlib.Path(a.golden)
    for c in json.load(open(g / "cases.json")):
        refs = [np.asarray(Image.open(g / r).convert("RGB")).astype(np.float64)
                for r in (c.get("images") or c.get("frames"))]
        for dtype in ("f32", "bf16"):
            with tempfile.TemporaryDirectory() as tmp:
                got = run(a, g, c, dtype, [], tmp)
                if isinstance(got, str):
                    print(json.dumps({"case": c["name"], "dtype": dtype, "error": got}))
                    continue
                max_diff, psnr = compare(got, refs)
                line = {"case": c["name"], "device": a.device, "dtype": dtype, "images": len(got),
                        "max_diff": max_diff, "psnr_db": psnr}
                if a.unfused:
                    plain = run(a, g, c, dtype, ["--no-fused"], tmp)
                    if isinstance(plain, str):
                        line["unfused_error"] = plain
                    else:
                        line["unfused_max_diff_vs_golden"], _ = compare(plain, refs)
                        line["fused_vs_unfused_max_diff"], line["fused_vs_unfused_psnr_db"] = compare(got, plain)
                for m in a.multi:
                    multi = run(a, g, c, dtype, shlex.split(m), tmp)
                    if isinstance(multi, str):
                        line[m] = {"error": multi}
                    else:
                        d, p = compare(multi, got)
                        line[m] = {"max_diff_vs_default": d, "psnr_vs_default_db": p,
                                   "max_diff_vs_golden": compare(multi, refs)[0]}
                print(json.dumps(line))


if __name__ == "__main__":
    main()
