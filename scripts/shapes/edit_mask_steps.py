#!/usr/bin/env python3
"""ConsistEdit's edit mask from the source's first N steps (--edit-mask-steps) on the demo model, against the
official mask over every step: control_effects.py's edits (alternating colour and background edits, 28 steps,
CFG 5), each run once per N. For each N it reports

  mask_iou        the edited region's overlap with the all-steps mask's (1.0: the same mask);
  target_psnr_db  the target image against the all-steps edit's target;
  object_iou      the object's pixels in the target against the source's (control_effects' measure: a background
                  edit should keep the object where it was), for colour and background edits.

    edit_mask_steps.py [--mmdit build/mmdit] [--n 12] [--steps 1,2,3,5] [--out DIR]
"""
import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import control_effects as ce  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmdit", default=str(ROOT / "build" / "mmdit"))
    ap.add_argument("--model", default=str(ROOT / "demo" / "shapes-world"))
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--steps", default="1,2,3,5")
    ap.add_argument("--out", default=str(ROOT / "build" / "edit-mask-steps"))
    a = ap.parse_args(argv)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    edits = ce.edit_pairs(a.n)
    variants = [0] + [int(s) for s in a.steps.split(",")]  # 0: every step (the official mask)
    jobs = []
    for k in variants:
        for i, (src, tgt, _, _) in enumerate(edits):
            job = {"source_prompt": src, "prompt": tgt, "seed": i, "cfg": 5.0, "output": f"k{k}/{i}-target.png",
                   "source_output": f"k{k}/{i}-source.png", "mask_output": f"k{k}/{i}-mask.png"}
            if k:
                job["edit_mask_steps"] = k
            jobs.append(job)
    (out / "jobs.json").write_text(json.dumps({"defaults": {"model": a.model, "steps": 28}, "jobs": jobs}))
    subprocess.run([a.mmdit, "run", "-q", str(out / "jobs.json")], check=True, stdout=subprocess.DEVNULL)

    img = lambda k, i, what: Image.open(out / f"k{k}" / f"{i}-{what}.png")  # noqa: E731
    mask = lambda k, i: np.asarray(img(k, i, "mask").convert("L")) > 127  # noqa: E731
    report = {}
    for k in variants:
        obj = [ce.iou(ce.object_pixels(img(k, i, "source"), c1), ce.object_pixels(img(k, i, "target"), c2))
               for i, (_, _, c1, c2) in enumerate(edits)]
        report[str(k) if k else "all"] = {
            "mask_iou": round(float(np.mean([ce.iou(mask(k, i), mask(0, i)) for i in range(len(edits))])), 4),
            "target_psnr_db": round(float(np.mean([min(ce.psnr(img(k, i, "target"), img(0, i, "target")), 99.0)
                                                   for i in range(len(edits))])), 2),
            "object_iou": {"colour": round(float(np.mean(obj[0::2])), 4),
                           "background": round(float(np.mean(obj[1::2])), 4)}}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
