#!/usr/bin/env python3
"""PSNR (dB) and max pixel difference between two 8-bit images: psnr.py A.png B.png"""
import sys

import numpy as np
from PIL import Image

a = np.asarray(Image.open(sys.argv[1]).convert("RGB")).astype(np.float64)
b = np.asarray(Image.open(sys.argv[2]).convert("RGB")).astype(np.float64)
mse = ((a - b) ** 2).mean()
psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
print(f'{{"psnr_db": {psnr:.2f}, "max_diff": {int(np.abs(a - b).max())}, "mean_abs_diff": {np.abs(a - b).mean():.3f}}}')
