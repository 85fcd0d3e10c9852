#!/usr/bin/env python3
"""DiTCtrl's transition-smoothness metric CSCV and per-segment prompt adherence for a multi-prompt video of the demo
video model, with the shapes checker standing in for CLIP (no CLIP weights here).

CSCV is the official formula (Metalicana/DiTCtrl metrics/cscv_metric.py, ../shared/research/multiprompt-video-2026.md
§1.1): s_t = cosine(f_t, f_t+1) over adjacent frames, CV = std(s) / mean(s), CSCV = 1 / (1 + 10 CV). The frame
feature f_t is the checker's colour coverage on a 4x4 grid (palette colours x cells): what colour is where, in place
of CLIP's image embedding. A static video scores 1, so CSCV is reported next to adherence: the share of frames of
the first and of the last tile that show their prompt's object (colour and shape, the checker's detector).

    cscv.py 'FRAMES_%03d.png' N TILE_FRAMES "colour shape" "colour shape"
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checker  # noqa: E402
from multiprompt_check import shows  # noqa: E402


def feature(frame, grid=4):
    lab, cov = checker.colour_maps(frame)
    h, w = lab.shape
    f = np.zeros((len(checker.NAMES), grid, grid))
    for c in range(len(checker.NAMES)):
        m = np.where(lab == c, cov, 0.0)
        for i in range(grid):
            for j in range(grid):
                f[c, i, j] = m[i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid].mean()
    f = f.reshape(-1)
    return f / max(np.linalg.norm(f), 1e-12)


def cscv(frames):
    f = [feature(x) for x in frames]
    s = np.array([float(a @ b) for a, b in zip(f, f[1:])])
    return float(1.0 / (1.0 + 10.0 * s.std() / s.mean())) if s.mean() > 0 else 0.0


def main():
    pattern, n, tile, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    frames = [np.asarray(Image.open(pattern % i).convert("RGB")) for i in range(n)]
    head, tail = frames[:tile], frames[-tile:]
    print(json.dumps({"frames": n, "cscv": round(cscv(frames), 4),
                      "first_prompt_adherence": round(float(np.mean([shows(x, first) for x in head])), 3),
                      "last_prompt_adherence": round(float(np.mean([shows(x, last) for x in tail])), 3)}))


if __name__ == "__main__":
    main()
