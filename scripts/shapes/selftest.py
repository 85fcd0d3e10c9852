#!/usr/bin/env python3
"""Self-test of the shapes checker on the world's own renders (ground truth).

    selftest.py [--n 500] [--size 64] [--seed 0] [--clips 0]

Renders n random scenes (half train, half held-out split), scores the true captions (colour+shape and
position must be >= 99%), then wrong captions made from the truth by swapping or replacing colours, shapes,
relations (inverse and orthogonal) and sizes (each must score <= 2%). Also prints, for information only, the
scores on degraded renders (blur + noise), a rough guide to how the checker copes with generated images.
With --clips N it also renders N clips (world.render_clip, half train, half held-out) and checks the clip
scoring: true captions (colour+shape, direction, background >= 99%), wrong colours, shapes, sizes and
directions (inverse and orthogonal, each <= 2%), a clip that stands still (direction 0%), and the clip split.
Exits 1 on failure.
"""
import argparse
import json
import pathlib
import random
import sys
import time

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import checker  # noqa: E402
import world  # noqa: E402

ORTHO = {"above": "left of", "below": "right of", "left of": "below", "right of": "above"}


def wrong(scene, kind, rng):
    s = json.loads(json.dumps(scene))
    objs = s["objects"]
    if kind == "colour":
        if len(objs) == 2 and objs[0]["shape"] != objs[1]["shape"]:
            objs[0]["colour"], objs[1]["colour"] = objs[1]["colour"], objs[0]["colour"]
        else:
            unused = [c for c in sorted(world.COLOURS) if c not in {o["colour"] for o in objs}]
            for o, c in zip(objs, rng.sample(unused, len(objs))):
                o["colour"] = c
    elif kind == "shape":
        for o in objs:
            o["shape"] = rng.choice([x for x in world.SHAPES if x != o["shape"]])
    elif kind == "size":
        for o in objs:
            o["size"] = "small" if o["size"] == "large" else "large"
    elif kind in ("relation", "relation_ortho"):
        s["relation"] = (world.INVERSE if kind == "relation" else ORTHO)[s["relation"]]
    return world.caption(s)


def degrade(img, rng):
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    a = np.asarray(img).astype(np.float64) + np.random.default_rng(rng.randrange(1 << 30)).normal(0, 20, (img.height, img.width, 3))
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def check_split(seed, n=2000):
    """Train scenes never hold a held-out pair or triple (in either phrasing); held-out scenes hold each."""
    rng = random.Random(seed)
    train = [world.sample_scene(rng, "train") for _ in range(n)]
    held = [world.sample_scene(rng, "heldout") for _ in range(n)]
    pairs = lambda sc: {(o["colour"], o["shape"]) for o in sc["objects"]}  # noqa: E731
    triples = lambda sc: ({(sc["objects"][0]["shape"], sc["relation"], sc["objects"][1]["shape"]),  # noqa: E731
                           (sc["objects"][1]["shape"], world.INVERSE[sc["relation"]], sc["objects"][0]["shape"])}
                          if sc["relation"] else set())
    leak = sum(bool(pairs(sc) & set(world.HELDOUT_PAIRS) or triples(sc) & set(world.HELDOUT_TRIPLES)) for sc in train)
    seen_pairs = set().union(*map(pairs, held)) & set(world.HELDOUT_PAIRS)
    seen_triples = set().union(*map(triples, held)) & set(world.HELDOUT_TRIPLES)
    train_vocab = {w for sc in train for w in world.caption(sc).split()}
    missing = {w for c in [world.caption(sc) for sc in held] for w in c.split()} - train_vocab
    print(f"split: {leak} of {n} train scenes hold a held-out combination; held-out scenes cover "
          f"{len(seen_pairs)}/{len(world.HELDOUT_PAIRS)} pairs, {len(seen_triples)}/{len(world.HELDOUT_TRIPLES)} "
          f"triples; held-out words unseen in training: {sorted(missing)}")
    return leak == 0 and len(seen_pairs) == len(world.HELDOUT_PAIRS) and \
        len(seen_triples) == len(world.HELDOUT_TRIPLES) and not missing


def wrong_clip(clip, kind, rng):
    c = dict(clip)
    if kind == "colour":
        c["colour"] = rng.choice([x for x in sorted(world.COLOURS) if x != clip["colour"]])
    elif kind == "shape":
        c["shape"] = rng.choice([x for x in world.SHAPES if x != clip["shape"]])
    elif kind == "size":
        c["size"] = "small" if clip["size"] == "large" else "large"
    elif kind == "direction":
        c["direction"] = {"left": "right", "right": "left", "up": "down", "down": "up"}[clip["direction"]]
    elif kind == "direction_ortho":
        c["direction"] = {"left": "up", "right": "down", "up": "right", "down": "left"}[clip["direction"]]
    return world.clip_caption(c)


def check_clips(n, seed, size):
    """The clip checker on true clips, wrong captions and still clips; the clip split. True if all pass."""
    rng = random.Random(f"clips:{seed}")
    clips = [world.sample_clip(rng, "train" if i % 2 == 0 else "heldout") for i in range(n)]
    true, still = [], []
    bad = {k: [] for k in ("colour", "shape", "size", "direction", "direction_ortho")}
    for c in clips:
        frames = world.render_clip(c, size)
        r = checker.score_clip(frames, world.clip_caption(c))
        true.append(r)
        if not (checker.shows_clip(r) and r["background"]):
            print("FAILED:", json.dumps(r))
        for kind in bad:  # one wrong caption of each kind, scored on the same frames
            bad[kind].append(checker.score_clip(frames, wrong_clip(c, kind, rng)))
        if len(still) < 20:
            still.append(checker.score_clip([frames[len(frames) // 2]] * len(frames), world.clip_caption(c)))
    s = checker.summarize_clips(true)
    print(f"true clip captions ({n} clips, {size}x{size}, {world.CLIP_FRAMES} frames, train+heldout): " + json.dumps(s))
    ok = s["colour_shape"] >= 0.99 and s["direction"] >= 0.99 and s["background"] >= 0.99 and s["colour_shape_frames"] >= 0.99
    for kind, metric in {"colour": "colour_shape", "shape": "colour_shape", "size": "size", "direction": "direction",
                         "direction_ortho": "direction"}.items():
        v = checker.summarize_clips(bad[kind])[metric]
        print(f"wrong clip {kind:15s} -> {metric} {v}")
        ok &= v <= 0.02
    v = checker.summarize_clips(still)["direction"]
    print(f"still clips ({len(still)}) -> direction {v}")
    ok &= v == 0.0
    # the split: no training clip holds a held-out combination; held-out clips cover each one and every shape
    rng = random.Random(f"clips:split:{seed}")
    train = [world.sample_clip(rng, "train") for _ in range(2000)]
    held = [world.sample_clip(rng, "heldout") for _ in range(2000)]
    leak = sum(world.clip_is_heldout(c) for c in train)
    pairs = {(c["colour"], c["shape"]) for c in held} & set(world.HELDOUT_PAIRS)
    motions = {(c["shape"], c["direction"]) for c in held} & set(world.HELDOUT_MOTIONS)
    train_vocab = {w for c in train for w in world.clip_caption(c).split()}
    missing = {w for c in held for w in world.clip_caption(c).split()} - train_vocab
    shapes = {c["shape"] for c in held}
    print(f"clip split: {leak} of 2000 train clips hold a held-out combination; held-out clips cover {len(pairs)}/"
          f"{len(world.HELDOUT_PAIRS)} pairs, {len(motions)}/{len(world.HELDOUT_MOTIONS)} motions, {len(shapes)}/"
          f"{len(world.SHAPES)} shapes; held-out words unseen in training: {sorted(missing)}")
    return ok and leak == 0 and len(pairs) == len(world.HELDOUT_PAIRS) and \
        len(motions) == len(world.HELDOUT_MOTIONS) and len(shapes) == len(world.SHAPES) and not missing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", type=int, default=0, help="also check the clip (video) scoring on this many clips")
    a = ap.parse_args(argv)
    t0 = time.time()
    ok = True
    if a.clips:
        ok &= check_clips(a.clips, a.seed, a.size)
    if a.n == 0:  # clips only
        print(f"{'PASS' if ok else 'FAIL'} in {time.time() - t0:.1f} s")
        return 0 if ok else 1
    rng = random.Random(a.seed)
    scenes = [world.sample_scene(rng, "train" if i % 2 == 0 else "heldout") for i in range(a.n)]
    true, bad, degraded = [], {k: [] for k in ("colour", "shape", "size", "relation", "relation_ortho")}, []
    failures = []
    for sc in scenes:
        img = world.render(sc, a.size)
        seen = (checker.detect(img), checker.background(img))  # once per image, for every caption below
        r = checker.score(img, world.caption(sc), seen)
        true.append(r)
        if not (r["colour_shape"] and r.get("position", True) and r["background"]):
            failures.append(r)
        for kind in bad:
            if kind.startswith("relation") and len(sc["objects"]) == 1:
                continue
            bad[kind].append(checker.score(img, wrong(sc, kind, rng), seen))
        degraded.append(checker.score(degrade(img, rng), world.caption(sc)))
    s = checker.summarize(true)
    print(f"true captions ({a.n} scenes, {a.size}x{a.size}, train+heldout): " + json.dumps(s))
    ok &= s["colour_shape"] >= 0.99 and s["position"] >= 0.99
    checks = {"colour": "colour_shape", "shape": "colour_shape", "size": "size", "relation": "position",
              "relation_ortho": "position"}
    for kind, metric in checks.items():
        v = checker.summarize(bad[kind])[metric]
        print(f"wrong {kind:15s} -> {metric} {v}")
        ok &= v <= 0.02
    print("degraded renders (blur 1.0 + noise 20, information only): " + json.dumps(checker.summarize(degraded)))
    for r in failures[:5]:
        print("FAILED:", json.dumps(r))
    ok &= check_split(a.seed)
    print(f"{'PASS' if ok else 'FAIL'} in {time.time() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
