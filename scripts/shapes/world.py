#!/usr/bin/env python3
"""The shapes world: a seeded generator of coloured-shape scenes, their renders and their captions, with a
held-out split of combinations that never appear in training; and clips of one shape moving in a straight line
(render_clip, clip_caption, sample_clip: the video demo model). Used to train the built-in demo models and,
with checker.py, to score what it generates.

    world.py dataset OUT --n 20000 --split train|heldout --seed S [--size 64] [--format png|npz]
    world.py sample --n 5 --split heldout --seed 0          # print captions
    world.py sample --n 5 --split heldout --clips           # print clip captions (moving shapes, for video)

Scene: 1 or 2 shapes (two shapes always have different colours), each with a colour (COLOURS), a shape
(SHAPES) and a size (small/large); two shapes stand in one relation (above/below/left of/right of, the
first relative to the second, along the dominant axis: the offset along the named axis is at least 1.5x the
offset across it and the boxes do not overlap); the background is one neutral (white/black/grey) or two
("white over black": top half, bottom half). Colours are saturated and hue-separated (red 0, orange 28,
yellow 55, green 129, blue 226, purple 283 degrees) and the backgrounds neutral, so colour is recoverable
from hue alone, also on anti-aliased edges (mixing with a neutral keeps the hue).

Caption grammar (checker.parse_caption reads it back):
    caption  := object [" " relation " " object] " on a " background " background"
    object   := "a " size " " colour " " shape
    background := neutral | neutral " over " neutral

Resolution: 64x64 by default (the tiny SD3 VAE downsamples 8x, so 8x8 latents, 4x4 transformer tokens at
patch size 2), which keeps training within minutes; small shapes are ~13 px, large ~22 px, which the
checker reads reliably (see selftest.py). --size 128 doubles everything if a model needs more room.
Rendering is deterministic: PIL polygons at 4x supersampling, box-filtered down (anti-aliased).

Held-out split: a scene is held out iff it contains a HELDOUT_PAIRS (colour, shape) object, or its two
shapes stand in a HELDOUT_TRIPLES relation (in either phrasing: "A left of B" is "B right of A"). Training
scenes contain none of these; every colour, shape, size, relation and background is still seen.
"""
import argparse
import json
import math
import pathlib
import random

from PIL import Image, ImageDraw

COLOURS = {  # well separated in hue; see the module docstring
    "red": (220, 30, 30),
    "orange": (245, 120, 10),
    "yellow": (240, 220, 20),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (150, 50, 190),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
SHAPES = ["circle", "square", "triangle", "star", "cross"]
SIZES = {"small": (0.18, 0.22), "large": (0.32, 0.37)}  # box side as a fraction of the image side
RELATIONS = ["above", "below", "left of", "right of"]
INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}

HELDOUT_PAIRS = [("purple", "star"), ("green", "triangle"), ("orange", "circle")]
HELDOUT_TRIPLES = [("square", "left of", "circle"), ("star", "above", "triangle"), ("cross", "below", "square")]

DOMINANCE = 1.5  # along-axis offset / across-axis offset, at least
MARGIN = 0.03    # fraction of the image kept free at the border
GAP = 0.04       # fraction of the image between two boxes along the relation's axis


def is_heldout(scene):
    objs = scene["objects"]
    if any((o["colour"], o["shape"]) in HELDOUT_PAIRS for o in objs):
        return True
    if len(objs) == 2:
        a, b, rel = objs[0]["shape"], objs[1]["shape"], scene["relation"]
        for t in HELDOUT_TRIPLES:
            if t == (a, rel, b) or t == (b, INVERSE[rel], a):
                return True
    return False


def _place(rng, side, n, rel):
    """Box centres and sides (fractions of the image) for n boxes; for two, A rel B."""
    sides = [rng.uniform(*SIZES[s]) for s in side]
    lo = lambda s: MARGIN + s / 2  # noqa: E731
    hi = lambda s: 1 - MARGIN - s / 2  # noqa: E731
    if n == 1:
        s = sides[0]
        return [(rng.uniform(lo(s), hi(s)), rng.uniform(lo(s), hi(s)), s)]
    sa, sb = sides
    for _ in range(1000):
        ax = [(rng.uniform(lo(s), hi(s)), rng.uniform(lo(s), hi(s))) for s in (sa, sb)]
        (xa, ya), (xb, yb) = ax
        along, across = {"above": (yb - ya, xb - xa), "below": (ya - yb, xb - xa),
                         "left of": (xb - xa, yb - ya), "right of": (xa - xb, yb - ya)}[rel]
        if along >= (sa + sb) / 2 + GAP and along >= DOMINANCE * abs(across):
            return [(xa, ya, sa), (xb, yb, sb)]
    raise RuntimeError("no placement")  # not reached with the sizes above


def sample_scene(rng: random.Random, split="train"):
    """One scene dict of the split (rejection-sampled against the held-out rule)."""
    while True:
        n = 1 if rng.random() < 0.3 else 2
        colours = rng.sample(sorted(COLOURS), n)
        shapes = [rng.choice(SHAPES) for _ in range(n)]
        sizes = [rng.choice(sorted(SIZES)) for _ in range(n)]
        rel = rng.choice(RELATIONS) if n == 2 else None
        bg = [rng.choice(sorted(BACKGROUNDS))]
        if rng.random() < 0.4:
            bg.append(rng.choice([b for b in sorted(BACKGROUNDS) if b != bg[0]]))
        boxes = _place(rng, sizes, n, rel)
        scene = {"objects": [{"colour": c, "shape": s, "size": z, "cx": round(x, 4), "cy": round(y, 4),
                              "side": round(d, 4)} for c, s, z, (x, y, d) in zip(colours, shapes, sizes, boxes)],
                 "relation": rel, "background": bg}
        if is_heldout(scene) == (split == "heldout"):
            return scene


def caption(scene):
    obj = lambda o: f"a {o['size']} {o['colour']} {o['shape']}"  # noqa: E731
    objs = scene["objects"]
    text = obj(objs[0]) if len(objs) == 1 else f"{obj(objs[0])} {scene['relation']} {obj(objs[1])}"
    return f"{text} on a {' over '.join(scene['background'])} background"


def shape_polygon(shape, cx, cy, s):
    """Outline points (or an ellipse box for circles) of a shape whose bounding box is about s x s."""
    h = s / 2
    if shape == "circle":
        return ("ellipse", [cx - h, cy - h, cx + h, cy + h])
    if shape == "square":
        return ("polygon", [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    if shape == "triangle":
        return ("polygon", [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    if shape == "cross":
        t = 0.18 * s  # half the arm width
        return ("polygon", [(cx - t, cy - h), (cx + t, cy - h), (cx + t, cy - t), (cx + h, cy - t), (cx + h, cy + t),
                            (cx + t, cy + t), (cx + t, cy + h), (cx - t, cy + h), (cx - t, cy + t), (cx - h, cy + t),
                            (cx - h, cy - t), (cx - t, cy - t)])
    if shape == "star":  # five points, upright; outer radius so the star spans the box's height
        r_out = s / (1 + math.cos(math.pi / 5))
        r_in = 0.45 * r_out
        top = cy - h
        c_y = top + r_out
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), c_y + r * math.sin(a)))
        return ("polygon", pts)
    raise ValueError(shape)


def render(scene, size=64, ss=4):
    """RGB PIL image of the scene, size x size, anti-aliased by ss x supersampling."""
    big = size * ss
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene["background"][0]])
    d = ImageDraw.Draw(img)
    if len(scene["background"]) == 2:
        d.rectangle([0, big // 2, big, big], fill=BACKGROUNDS[scene["background"][1]])
    for o in scene["objects"]:
        kind, pts = shape_polygon(o["shape"], o["cx"] * big, o["cy"] * big, o["side"] * big)
        if kind == "ellipse":
            d.ellipse(pts, fill=COLOURS[o["colour"]])
        else:
            d.polygon(pts, fill=COLOURS[o["colour"]])
    return img.resize((size, size), Image.BOX) if ss > 1 else img


# --- Clips: one shape moving in a straight line (the video demo model demo/shapes-video, docs/SHAPES.md) ---
# Caption: "a {size} {colour} {shape} moving {direction} on a {background} background". The shape keeps its
# colour, shape and size and moves at constant speed along one axis, covering TRAVEL of the image side over the
# clip; its whole path stays inside the frame (MARGIN). A clip is held out iff its (colour, shape) is a
# HELDOUT_PAIRS pair or its (shape, direction) a HELDOUT_MOTIONS pair: training sees every word, never these
# combinations.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
HELDOUT_MOTIONS = [("square", "up"), ("star", "left"), ("cross", "down")]
TRAVEL = (0.3, 0.45)  # distance covered from the first frame to the last, as a fraction of the image side
CLIP_FRAMES = 17      # 2 s at 8 fps; 4k+1 frames, as CogVideoX's causal VAE (temporal compression 4) wants


def clip_is_heldout(clip):
    return (clip["colour"], clip["shape"]) in HELDOUT_PAIRS or (clip["shape"], clip["direction"]) in HELDOUT_MOTIONS


def sample_clip(rng: random.Random, split="train"):
    """One clip dict of the split (rejection-sampled against the held-out rule): the object's colour, shape,
    size, box side, direction, travel and first-frame centre (x0, y0), and the background."""
    while True:
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        size, direction = rng.choice(sorted(SIZES)), rng.choice(sorted(DIRECTIONS))
        bg = [rng.choice(sorted(BACKGROUNDS))]
        if rng.random() < 0.4:
            bg.append(rng.choice([b for b in sorted(BACKGROUNDS) if b != bg[0]]))
        side, travel = rng.uniform(*SIZES[size]), rng.uniform(*TRAVEL)
        lo, hi = MARGIN + side / 2, 1 - MARGIN - side / 2
        start = []
        for d in DIRECTIONS[direction]:  # x then y: the whole path inside [lo, hi]
            start.append(rng.uniform(lo, hi) if d == 0 else rng.uniform(lo, hi - travel) if d > 0 else
                         rng.uniform(lo + travel, hi))
        clip = {"colour": colour, "shape": shape, "size": size, "side": round(side, 4), "direction": direction,
                "travel": round(travel, 4), "x0": round(start[0], 4), "y0": round(start[1], 4), "background": bg}
        if clip_is_heldout(clip) == (split == "heldout"):
            return clip


def clip_caption(clip):
    return (f"a {clip['size']} {clip['colour']} {clip['shape']} moving {clip['direction']} "
            f"on a {' over '.join(clip['background'])} background")


def clip_scene(clip, t):
    """The scene (sample_scene's form) of the clip at time t in [0, 1]."""
    dx, dy = DIRECTIONS[clip["direction"]]
    o = {k: clip[k] for k in ("colour", "shape", "size", "side")}
    o.update(cx=clip["x0"] + dx * clip["travel"] * t, cy=clip["y0"] + dy * clip["travel"] * t)
    return {"objects": [o], "relation": None, "background": clip["background"]}


def render_clip(clip, size=64, frames=CLIP_FRAMES):
    """The clip's frames: a list of RGB PIL images (render() of each time step, anti-aliased sub-pixel motion)."""
    return [render(clip_scene(clip, i / (frames - 1)), size) for i in range(frames)]


def write_dataset(out, n, split, seed, size=64, fmt="png"):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{split}:{seed}")
    rows, arrays = [], []
    for i in range(n):
        scene = sample_scene(rng, split)
        img = render(scene, size)
        row = {"file": f"{i:06d}.png", "caption": caption(scene), "scene": scene}
        if fmt == "png":
            (out / "images").mkdir(exist_ok=True)
            img.save(out / "images" / row["file"])
        else:
            import numpy as np
            arrays.append(np.asarray(img))
        rows.append(row)
    (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if fmt == "npz":
        import numpy as np
        np.savez_compressed(out / "images.npz", images=np.stack(arrays))
    (out / "meta.json").write_text(json.dumps({"n": n, "split": split, "seed": seed, "size": size, "format": fmt,
                                               "heldout_pairs": HELDOUT_PAIRS, "heldout_triples": HELDOUT_TRIPLES},
                                              indent=1))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset", help="write images + captions.jsonl (scene ground truth) to OUT")
    d.add_argument("out")
    s = sub.add_parser("sample", help="print captions")
    for p in (d, s):
        p.add_argument("--n", type=int, default=20000 if p is d else 5)
        p.add_argument("--split", choices=["train", "heldout"], default="train")
        p.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--format", choices=["png", "npz"], default="png")
    s.add_argument("--clips", action="store_true", help="print clip captions (the moving-shapes videos)")
    a = ap.parse_args(argv)
    if a.cmd == "dataset":
        write_dataset(a.out, a.n, a.split, a.seed, a.size, a.format)
        print(a.out)
    else:
        rng = random.Random(f"{a.split}:{a.seed}")
        for _ in range(a.n):
            print(clip_caption(sample_clip(rng, a.split)) if a.clips else caption(sample_scene(rng, a.split)))


if __name__ == "__main__":
    main()
