#!/usr/bin/env python3
"""Deterministic checker for the shapes world (plain image analysis, numpy + PIL): finds the coloured shapes
in an image and scores a caption of world.py's grammar against them.

    checker.py score IMAGES_DIR CAPTIONS.jsonl [--out RESULTS.json]   # rows {"file", "caption"}; prints JSON
    checker.py detect IMAGE [IMAGE...]                                 # what it sees
    checker.py score-clip FRAME_000.png ... CAPTION                    # a clip (frames in order); exit 1 unless shown
    checker.py score-clip CLIP.mp4 CAPTION [--frames 17 --fps 8 --size 64]  # an MP4 (read with ffmpeg), its format too

How it sees (any square or non-square size; units are the image's pixels):
1. Colour by hue. Palette colours are saturated and hue-separated, backgrounds neutral; mixing a colour with
   a neutral (anti-aliased edges, any background) keeps its hue and scales its saturation (max-min). A pixel
   with saturation >= SAT_MIN gets the palette colour of nearest hue (within HUE_TOL degrees); its coverage
   is saturation / the palette colour's saturation, clipped to 1.
2. Objects: 8-connected components of coverage >= 0.4 per colour, at least MIN_AREA_FRAC of the image;
   the largest component of a colour is that colour's object (two objects never share a colour).
3. Shape by template fit: for each shape, the world's outline with the component's (soft) area and centroid
   is rendered (8x supersampled) and compared with the component's coverage by soft IoU; the best wins.
   Size: the fitted box side, small below SIZE_SPLIT of the image side. Position: coverage-weighted centroid.
4. Background: the median of the low-saturation pixels of each half, nearest of white/black/grey.

Scores for a caption: colour_shape per mentioned object (an object of that colour exists and is that shape),
position per two-object caption (both colours found; the first's centroid lies in the named direction from
the second along the dominant axis: |offset along| > |offset across|), plus size, background and the count
of extra (unmentioned) colour objects.

Clips (world.render_clip: one shape moving along one axis) are scored frame by frame with the same detect():
score_clip() says whether the caption's colour and shape are there and whether the fitted path goes the named
way (its docstring has the rules); summarize_clips() sums a set of clips up.
"""
import argparse
import json
import math
import pathlib
import re
import sys
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import world  # noqa: E402

SAT_MIN = 20
HUE_TOL = 25.0
COVER_MIN = 0.4
MIN_AREA_FRAC = 0.004   # 16 px at 64x64; a small world shape is >= ~45 px
SIZE_SPLIT = 0.27       # between the small (0.18-0.22) and large (0.32-0.37) box sides
NAMES = sorted(world.COLOURS)


def _hue_sat(rgb):
    rgb = rgb.astype(np.float64)
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.where(sat > 0, sat, 1)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return h, sat


PAL_HUE, PAL_SAT = _hue_sat(np.array([world.COLOURS[c] for c in NAMES]))


def colour_maps(rgb):
    """(label HxW int, -1 = none; coverage HxW float) from an HxWx3 uint8 array."""
    h, sat = _hue_sat(rgb)
    dist = np.abs(h[..., None] - PAL_HUE)
    dist = np.minimum(dist, 360 - dist)
    lab = dist.argmin(-1)
    ok = (sat >= SAT_MIN) & (dist.min(-1) <= HUE_TOL)
    lab = np.where(ok, lab, -1)
    cov = np.where(ok, np.clip(sat / PAL_SAT[np.maximum(lab, 0)], 0, 1), 0.0)
    return lab, cov


def components(mask):
    """8-connected components of a boolean mask: list of (ys, xs) index arrays."""
    seen = np.zeros(mask.shape, bool)
    H, W = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pts = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pts.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        stack.append((yy, xx))
        p = np.array(pts)
        out.append((p[:, 0], p[:, 1]))
    return out


@lru_cache(maxsize=None)
def shape_stats(shape):
    """(area / side^2, centroid offset from the box centre / side) of the world's outline."""
    n, s = 1024, 800.0
    img = Image.new("L", (n, n), 0)
    kind, pts = world.shape_polygon(shape, n / 2, n / 2, s)
    (ImageDraw.Draw(img).ellipse if kind == "ellipse" else ImageDraw.Draw(img).polygon)(pts, fill=255)
    m = np.asarray(img) > 127
    ys, xs = np.nonzero(m)
    return m.sum() / s ** 2, (xs.mean() + 0.5 - n / 2) / s, (ys.mean() + 0.5 - n / 2) / s


def template(shape, cx, cy, side, x0, y0, w, h, ss=8):
    """Coverage (h x w) of the shape with box centre (cx, cy) and side, in the window at (x0, y0)."""
    img = Image.new("L", (w * ss, h * ss), 0)
    kind, pts = world.shape_polygon(shape, (cx - x0) * ss, (cy - y0) * ss, side * ss)
    (ImageDraw.Draw(img).ellipse if kind == "ellipse" else ImageDraw.Draw(img).polygon)(pts, fill=255)
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float64) / 255.0


def detect(img):
    """Objects in a PIL image or HxWx3 array: list of dicts (colour, shape, size, cx, cy (fractions), area
    (fraction), side (fraction), fit (soft IoU of the best shape), scores (per shape)), largest first."""
    rgb = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    H, W = rgb.shape[:2]
    lab, cov = colour_maps(rgb)
    found = []
    for k, name in enumerate(NAMES):
        ck = np.where(lab == k, cov, 0.0)
        comps = [c for c in components(ck >= COVER_MIN) if len(c[0]) >= MIN_AREA_FRAC * H * W]
        if not comps:
            continue
        ys, xs = max(comps, key=lambda c: len(c[0]))
        # window: the component's box grown by 2 px; coverage there counts only pixels near the component
        y0, y1, x0, x1 = max(ys.min() - 2, 0), min(ys.max() + 3, H), max(xs.min() - 2, 0), min(xs.max() + 3, W)
        near = np.zeros((H, W), bool)
        near[ys, xs] = True
        grown = near.copy()
        grown[1:] |= near[:-1]; grown[:-1] |= near[1:]; grown[:, 1:] |= near[:, :-1]; grown[:, :-1] |= near[:, 1:]  # noqa: E702
        c = np.where(grown, ck, 0.0)[y0:y1, x0:x1]
        area = c.sum()
        gy, gx = np.mgrid[y0:y1, x0:x1]
        mx, my = (c * (gx + 0.5)).sum() / area, (c * (gy + 0.5)).sum() / area
        scores = {}
        sides = {}
        for shape in world.SHAPES:
            a, dx, dy = shape_stats(shape)
            side = math.sqrt(area / a)
            t = template(shape, mx - dx * side, my - dy * side, side, x0, y0, x1 - x0, y1 - y0)
            scores[shape] = float(np.minimum(c, t).sum() / max(np.maximum(c, t).sum(), 1e-9))
            sides[shape] = side
        best = max(world.SHAPES, key=lambda s: scores[s])
        side = sides[best] / math.sqrt(H * W)
        found.append({"colour": name, "shape": best, "size": "small" if side < SIZE_SPLIT else "large",
                      "cx": round(mx / W, 4), "cy": round(my / H, 4), "area": round(area / (H * W), 5),
                      "side": round(side, 4), "fit": round(scores[best], 4),
                      "scores": {s: round(v, 4) for s, v in scores.items()}})
    found.sort(key=lambda o: -o["area"])
    return found


def background(img):
    rgb = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img).astype(np.float64)
    H = rgb.shape[0]
    _, sat = _hue_sat(rgb)
    out = []
    for part, s in ((rgb[: H // 2], sat[: H // 2]), (rgb[H // 2:], sat[H // 2:])):
        px = part[s < SAT_MIN]
        if len(px) == 0:
            out.append(None)
            continue
        med = np.median(px, axis=0)
        out.append(min(world.BACKGROUNDS, key=lambda b: np.abs(med - world.BACKGROUNDS[b]).sum()))
    return out


_OBJ = r"a (small|large) (" + "|".join(world.COLOURS) + r") (" + "|".join(world.SHAPES) + r")"
_CAPTION = re.compile(rf"^{_OBJ}(?: ({'|'.join(world.RELATIONS)}) {_OBJ})? on a ({'|'.join(world.BACKGROUNDS)})"
                      rf"(?: over ({'|'.join(world.BACKGROUNDS)}))? background$")


def parse_caption(text):
    """{"objects": [{"size", "colour", "shape"}...], "relation", "background": [..]}; ValueError if not the grammar."""
    m = _CAPTION.match(text.strip().lower())
    if not m:
        raise ValueError(f"caption not in the shapes grammar: {text!r}")
    g = m.groups()
    objs = [{"size": g[0], "colour": g[1], "shape": g[2]}]
    if g[3]:
        objs.append({"size": g[4], "colour": g[5], "shape": g[6]})
    return {"objects": objs, "relation": g[3], "background": [b for b in g[7:9] if b]}


def relation_holds(a, b, rel):
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]  # y grows downwards
    return bool({"above": -dy > abs(dx), "below": dy > abs(dx), "left of": -dx > abs(dy), "right of": dx > abs(dy)}[rel])


def score(img, text, seen=None):
    """Scores caption `text` against the image; `seen` = (detect(img), background(img)) if already known."""
    cap = parse_caption(text)
    det, bg = seen if seen is not None else (detect(img), background(img))
    by_colour = {o["colour"]: o for o in det}
    objs = []
    for o in cap["objects"]:
        d = by_colour.get(o["colour"])
        objs.append({"want": o, "found": d is not None,
                     "colour_shape": d is not None and d["shape"] == o["shape"],
                     "size": d is not None and d["shape"] == o["shape"] and d["size"] == o["size"]})
    res = {"caption": text, "objects": objs, "colour_shape": all(o["colour_shape"] for o in objs),
           "extra_objects": sum(1 for o in det if o["colour"] not in {c["colour"] for c in cap["objects"]})}
    if cap["relation"]:
        a, b = (by_colour.get(o["colour"]) for o in cap["objects"])
        res["position"] = a is not None and b is not None and relation_holds(a, b, cap["relation"])
    want = cap["background"] * 2 if len(cap["background"]) == 1 else cap["background"]
    res["background"] = bg == want
    res["detected"] = [{k: o[k] for k in ("colour", "shape", "size", "cx", "cy", "fit")} for o in det]
    return res


def shows(result):
    """Whether a score() result says the image shows its caption: every object's colour and shape, and the
    relation when there is one."""
    return result["colour_shape"] and result.get("position", True)


def summarize(results):
    objs = [o for r in results for o in r["objects"]]
    pos = [r["position"] for r in results if "position" in r]
    frac = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"images": len(results), "objects": len(objs), "relations": len(pos),
            "colour_shape": frac([o["colour_shape"] for o in objs]),
            "colour_shape_image": frac([r["colour_shape"] for r in results]),
            "position": frac(pos),
            "size": frac([o["size"] for o in objs]),
            "background": frac([r["background"] for r in results]),
            "extra_objects_per_image": round(sum(r["extra_objects"] for r in results) / max(len(results), 1), 4),
            # colour+shape by the wanted shape and size: where a model's misses are
            "by_shape": {f"{size} {shape}": frac([o["colour_shape"] for o in objs
                                                  if o["want"]["shape"] == shape and o["want"]["size"] == size])
                         for shape in sorted({o["want"]["shape"] for o in objs})
                         for size in sorted({o["want"]["size"] for o in objs})}}


# --- Clips (world.render_clip; the video demo model) ---
MIN_TRAVEL = 0.15  # the fitted path must cover at least this fraction of the image side (the world's: 0.3-0.45)
_CLIP = re.compile(rf"^{_OBJ} moving ({'|'.join(world.DIRECTIONS)}) on a ({'|'.join(world.BACKGROUNDS)})"
                   rf"(?: over ({'|'.join(world.BACKGROUNDS)}))? background$")


def parse_clip_caption(text):
    """{"size", "colour", "shape", "direction", "background": [..]}; ValueError if not the clip grammar."""
    m = _CLIP.match(text.strip().lower())
    if not m:
        raise ValueError(f"caption not in the shapes clip grammar: {text!r}")
    g = m.groups()
    return {"size": g[0], "colour": g[1], "shape": g[2], "direction": g[3], "background": [b for b in g[4:6] if b]}


def score_clip(frames, text):
    """Scores a clip caption against frames (PIL images or HxWx3 arrays, in order), frame by frame with detect():
    - colour: an object of the caption's colour is found in at least half the frames;
    - colour_shape: an object of the caption's colour is found in at least half the frames, and the shape
      detected most often in those frames is the caption's;
    - frames_right: the fraction of frames where that colour's object has the caption's shape;
    - direction: a straight line fitted (least squares) to that object's centroid over the frames where it is
      found moves, from the first frame to the last, in the named direction along the dominant axis
      (|along| > |across|) by at least MIN_TRAVEL of the image side;
    - size (when colour_shape holds: the size detected most often), background (first and last frames);
    - travel (along the named axis, fraction of the image side), wobble (RMS distance of the centroids from
      the fitted line, same unit) and extra_objects (other colours' objects, the most in one frame)."""
    cap = parse_clip_caption(text)
    found, extra = [], 0
    for f in frames:
        det = detect(f)
        found.append(next((o for o in det if o["colour"] == cap["colour"]), None))
        extra = max(extra, sum(1 for o in det if o["colour"] != cap["colour"]))
    hits = [(i, o) for i, o in enumerate(found) if o is not None]
    shapes = [o["shape"] for _, o in hits]
    top = max(set(shapes), key=lambda x: (shapes.count(x), x == cap["shape"])) if shapes else None
    colour_shape = 2 * len(hits) >= len(frames) and top == cap["shape"]
    sizes = [o["size"] for _, o in hits if o["shape"] == cap["shape"]]
    res = {"caption": text, "colour": 2 * len(hits) >= len(frames), "colour_shape": colour_shape,
           "frames_right": round(sum(o["shape"] == cap["shape"] for _, o in hits) / len(frames), 4),
           "size": colour_shape and max(set(sizes), key=sizes.count) == cap["size"],
           "direction": False, "travel": None, "wobble": None, "extra_objects": extra}
    if len(hits) >= 2:
        t = np.array([i / (len(frames) - 1) for i, _ in hits])
        xy = np.array([[o["cx"], o["cy"]] for _, o in hits])
        A = np.stack([np.ones_like(t), t], 1)
        coef, *_ = np.linalg.lstsq(A, xy, rcond=None)
        move = coef[1]  # displacement from t=0 to t=1 (x, y), fractions of the image; y grows downwards
        dx, dy = world.DIRECTIONS[cap["direction"]]
        along, across = move[0] * dx + move[1] * dy, abs(move[0] * dy) + abs(move[1] * dx)
        res.update(direction=bool(along > across and along >= MIN_TRAVEL), travel=round(float(along), 4),
                   wobble=round(float(np.sqrt(((A @ coef - xy) ** 2).sum(1).mean())), 4))
    want = cap["background"] * 2 if len(cap["background"]) == 1 else cap["background"]
    res["background"] = background(frames[0]) == want and background(frames[-1]) == want
    res["detected"] = [None if o is None else {k: o[k] for k in ("shape", "size", "cx", "cy")} for o in found]
    return res


def read_mp4(path):
    """(frames as HxWx3 uint8 arrays, frames per second) of a video file, decoded by the ffmpeg command."""
    import subprocess
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                       "stream=width,height,r_frame_rate", "-of", "json", str(path)],
                                      check=True, capture_output=True, text=True).stdout)["streams"][0]
    w, h = probe["width"], probe["height"]
    num, den = (int(x) for x in probe["r_frame_rate"].split("/"))
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return list(np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)), num / den


def shows_clip(result):
    """Whether a score_clip() result says the clip shows its caption: colour, shape and direction."""
    return result["colour_shape"] and result["direction"]


def summarize_clips(results):
    frac = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    by = lambda key: {v: frac([r["colour_shape"] and r["direction"] for r in results if parse_clip_caption(r["caption"])[key] == v])  # noqa: E731
                      for v in sorted({parse_clip_caption(r["caption"])[key] for r in results})}
    return {"clips": len(results),
            "colour": frac([r["colour"] for r in results]),
            "colour_shape": frac([r["colour_shape"] for r in results]),
            "direction": frac([r["direction"] for r in results]),
            "shows": frac([shows_clip(r) for r in results]),
            "size": frac([r["size"] for r in results]),
            "background": frac([r["background"] for r in results]),
            # colour+shape per frame: the fraction of all frames whose object has the caption's colour and shape
            "colour_shape_frames": mean([r["frames_right"] for r in results]),
            "travel": mean([r["travel"] for r in results if r["travel"] is not None]),
            "wobble": mean([r["wobble"] for r in results if r["wobble"] is not None]),
            "extra_objects_per_clip": mean([r["extra_objects"] for r in results]),
            # colour, shape and direction all right, by wanted shape and by wanted direction: where the misses are
            "shows_by_shape": by("shape"), "shows_by_direction": by("direction")}


def score_dir(images_dir, captions):
    images_dir = pathlib.Path(images_dir)
    results = []
    for line in pathlib.Path(captions).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        r = score(Image.open(images_dir / row["file"]), row["caption"])
        r["file"] = row["file"]
        results.append(r)
    return {"summary": summarize(results), "results": results}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score IMAGES_DIR/file against each caption of CAPTIONS.jsonl")
    s.add_argument("images_dir")
    s.add_argument("captions")
    s.add_argument("--out", help="write summary + per-image results here; stdout gets the summary only")
    o = sub.add_parser("score-one", help="score one image against one caption; exit 1 unless all of it holds")
    o.add_argument("image")
    o.add_argument("caption")
    c = sub.add_parser("score-clip", help="score a clip's frames (in order) against one clip caption; exit 1 unless "
                                         "colour, shape and direction hold")
    c.add_argument("frames", nargs="+", help="PNG frames in order, or one video file (.mp4)")
    c.add_argument("caption")
    c.add_argument("--frames", dest="n_frames", type=int, help="also require this many frames")
    c.add_argument("--fps", type=float, help="also require this frame rate (a video file)")
    c.add_argument("--size", type=int, help="also require square frames of this side")
    d = sub.add_parser("detect", help="print the objects found in images")
    d.add_argument("images", nargs="+")
    a = ap.parse_args(argv)
    if a.cmd == "score":
        out = score_dir(a.images_dir, a.captions)
        if a.out:
            pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
            print(json.dumps(out["summary"], indent=1))
        else:
            print(json.dumps(out, indent=1))
    elif a.cmd == "score-one":
        r = score(Image.open(a.image), a.caption)
        print(json.dumps({k: v for k, v in r.items() if k != "detected"}))
        if not shows(r):
            sys.exit(f"checker: {a.image} does not show {a.caption!r}")
    elif a.cmd == "score-clip":
        fps = None
        if len(a.frames) == 1 and not a.frames[0].lower().endswith(".png"):
            frames, fps = read_mp4(a.frames[0])
        else:
            frames = [np.asarray(Image.open(f).convert("RGB")) for f in a.frames]
        r = score_clip(frames, a.caption)
        h, w = frames[0].shape[:2]
        print(json.dumps({"video": {"frames": len(frames), "fps": fps, "width": w, "height": h},
                          **{k: v for k, v in r.items() if k != "detected"}}))
        wrong = [f"{what} {got}, not {want}" for what, got, want in (
            ("frames", len(frames), a.n_frames), ("fps", fps, a.fps), ("size", (w, h), a.size and (a.size, a.size)))
            if want is not None and got != want]
        if wrong:
            sys.exit(f"checker: {a.frames[0]}: " + "; ".join(wrong))
        if not shows_clip(r):
            sys.exit(f"checker: the {len(frames)} frames do not show {a.caption!r}")
    else:
        for p in a.images:
            print(json.dumps({"file": p, "background": background(Image.open(p)), "objects": detect(Image.open(p))}))


if __name__ == "__main__":
    main()
