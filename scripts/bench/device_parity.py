#!/usr/bin/env python3
"""Same seed, same image on any device: runs every case of a goldens folder (cases.json, as written by
scripts/goldens/{sd3_pipeline,flux,cogvideox}.py) through `mmdit generate` on DEVICE in f32 and bf16 and
compares each image or frame with diffusers' float32 CPU golden. One JSON line per case and dtype.

    python3 scripts/bench/device_parity.py MMDIT GOLDEN_DIR [--device cuda]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mmdit")
    ap.add_argument("golden")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    g = pathlib.Path(a.golden)
    for c in json.load(open(g / "cases.json")):
        refs = c.get("images") or c.get("frames")
        video = "frames" in c
        for dtype in ("f32", "bf16"):
            with tempfile.TemporaryDirectory() as tmp:
                out = f"{tmp}/f_%03d.png" if video else f"{tmp}/out.png"
                cmd = [a.mmdit, "generate", "-q", "--model", str(g / c["model"]), "--device", a.device, "--dtype", dtype,
                       "-o", out] + flags(c["params"])
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(json.dumps({"case": c["name"], "dtype": dtype, "error": r.stderr.strip()}))
                    continue
                if video:
                    got = [f"{tmp}/f_{i:03d}.png" for i in range(len(refs))]
                elif len(refs) > 1:
                    got = [f"{tmp}/out-{i}.png" for i in range(len(refs))]
                else:
                    got = [out]
                diffs, mses = [], []
                for mine, ref in zip(got, refs):
                    x = np.asarray(Image.open(mine).convert("RGB")).astype(np.float64)
                    y = np.asarray(Image.open(g / ref).convert("RGB")).astype(np.float64)
                    diffs.append(np.abs(x - y).max())
                    mses.append(((x - y) ** 2).mean())
                mse = float(np.mean(mses))
                psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
                print(json.dumps({"case": c["name"], "device": a.device, "dtype": dtype, "images": len(got),
                                  "max_diff": int(max(diffs)), "psnr_db": round(psnr, 2)}))


if __name__ == "__main__":
    main()
