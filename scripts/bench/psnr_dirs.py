#!/usr/bin/env python3
"""PSNR (dB) between the same-named PNGs of two folders (e.g. bf16 and --fp8 outputs): psnr_dirs.py NAME A_DIR B_DIR
Prints one JSON line: the number of images, the mean and the lowest PSNR (identical images count as 99 dB)."""
import json
import pathlib
import sys

import numpy as np
from PIL import Image

name, a_dir, b_dir = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
values = []
for a in sorted(a_dir.glob("*.png")):
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b_dir / a.name).convert("RGB"), dtype=np.float64)
    mse = ((x - y) ** 2).mean()
    values.append(99.0 if mse == 0 else min(99.0, 10 * np.log10(255.0 ** 2 / mse)))
print(json.dumps({"psnr": name, "images": len(values), "psnr_db_mean": round(float(np.mean(values)), 2),
                  "psnr_db_min": round(float(min(values)), 2)}))
