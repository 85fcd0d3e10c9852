#!/usr/bin/env python3
"""The attention-control golden cases on a CUDA device (scripts/bench/controls_round.sh): every case of
cases.json in the given folders through `mmdit generate --device cuda` in float32 and bfloat16, compared with the
CPU float32 reference images (max difference in levels, PSNR), and the attention maps against the explicit-
probability golden (relative error). One JSON line per case and dtype.

    controls_check.py MMDIT GOLDEN_DIR [CASE_DIRS...]   (models are looked up in GOLDEN_DIR; the cases are
                                                         CASE_DIRS' cases.json, or GOLDEN_DIR's without any)
"""
import json
import math
import pathlib
import shlex
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
from safetensors.numpy import load_file


def compare(a, b):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    mse = (d ** 2).mean()
    return int(d.max()), (99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse))


def main():
    mmdit, golden = sys.argv[1], pathlib.Path(sys.argv[2])
    for case_dir in [pathlib.Path(p) for p in sys.argv[3:]] or [golden]:
        for c in json.loads((case_dir / "cases.json").read_text()):
            for dtype in ("f32", "bf16"):
                tmp = pathlib.Path(tempfile.mkdtemp())
                video = c.get("video", False)
                out = tmp / ("f_%03d.png" if video else "out.png")
                args = c["args"].replace("MAPS", str(tmp / "maps"))
                cmd = (f"{mmdit} generate -q --model {golden / c['model']} {args} --device cuda --dtype {dtype} "
                       f"-o {shlex.quote(str(out))}")
                r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
                line = {"check": c["name"], "dtype": dtype, "exit": r.returncode}
                if r.returncode:
                    line["error"] = r.stderr.strip()[-300:]
                    print(json.dumps(line), flush=True)
                    continue
                diffs = []
                for i, f in enumerate(c["images"]):
                    got = tmp / (f"f_{i:03d}.png" if video else "out.png")
                    diffs.append(compare(np.asarray(Image.open(got)), np.asarray(Image.open(case_dir / f))))
                line["max_diff"] = max(d for d, _ in diffs)
                line["psnr_db"] = round(min(p for _, p in diffs), 2)
                if "maps" in c:
                    got, want = load_file(str(tmp / "maps" / "maps.safetensors"))["maps"], load_file(str(golden / c["maps"]))["maps"]
                    line["maps_rel_err"] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
