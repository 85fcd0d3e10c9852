#!/usr/bin/env python3
"""The effect test of a multi-prompt video on the demo video model (frames of `mmdit generate` with two prompts):
the first frame shows the first prompt's object, the last frame the second prompt's (by the shapes checker's
detector), and the video changes gradually: no frame-to-frame step larger than half of the change from the first
frame to the last (a hard cut between two clips makes one step of all of it). Prints one JSON line; exit 1 unless
all three hold.

    multiprompt_check.py 'FRAMES_%03d.png' N "colour [shape]" "colour [shape]"

A want without a shape asks for an object of that colour, whatever its shape (for a model that draws its prompts'
colours but not yet their shapes, as the demo video model did before its DiT was retrained: docs/SHAPES.md).
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checker  # noqa: E402


def shows(frame, want):
    colour, *shape = want.split()
    return any(o["colour"] == colour and (not shape or o["shape"] == shape[0]) for o in checker.detect(frame))


def largest_step_share(frames):
    """The largest frame-to-frame change as a share of the change from the first frame to the last (mean absolute
    level differences); None for a video that ends where it starts."""
    f = [np.asarray(x, np.float64) for x in frames]
    total = np.abs(f[-1] - f[0]).mean()
    return max(np.abs(b - a).mean() for a, b in zip(f, f[1:])) / total if total > 0 else None


def main():
    pattern, n, first, last = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    frames = [np.asarray(Image.open(pattern % i).convert("RGB")) for i in range(n)]
    share = largest_step_share(frames)
    result = {"starts_on_first": shows(frames[0], first), "ends_on_second": shows(frames[-1], last),
              "largest_step_share": None if share is None else round(share, 3)}
    result["ok"] = bool(result["starts_on_first"] and result["ends_on_second"] and share is not None and
                        result["largest_step_share"] <= 0.5)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
