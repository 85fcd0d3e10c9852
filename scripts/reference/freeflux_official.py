#!/usr/bin/env python3
"""Makes tests/data/freeflux/: FreeFlux edits from its own code (wtybest/FreeFlux @ 98f17b1: editing/non_rigid and
editing/add_object, their FluxPipeline and FluxTransformer2DModel copies and attention processors), run on the tiny
FLUX of the goldens, CPU float32.

The official code is not in this repository and cannot be fetched in CI, so its outputs are kept in
tests/data/freeflux/ and CTest compares mmdit against them. Re-make them with a checkout (or a git mirror) of the
repository (it needs scipy, which the project's requirements leave out: pip install scipy):

    .venv/bin/python scripts/reference/freeflux_official.py PATH_TO_REPO build/goldens/controls/tiny-flux-dev

What differs from the notebooks, and why: 4 steps at 128x128 instead of 50 at 1024x1024; the tiny FLUX has 2 double
and 2 single blocks, so the processors count 4 layers and the layer lists are FLUX.1's mapped proportionally within
the double and the single blocks (as mmdit maps them: non-rigid [0..3], add-object [0, 2, 3], the mask's single
blocks 40-43 -> [3]), and the mask's step 7 of 50 becomes step 1 of 4. The pipeline method that derives the
add-object mask has its block list hard-coded, so it is called with the mapped list through a copy of the method
that differs only in that list. cv2 and matplotlib, imported at the top but unused on these paths, are stubbed.
Background replacement is not run: its mask needs SAM2.
"""
import importlib.machinery
import json
import pathlib
import sys
import types

import numpy as np
import torch
from PIL import Image

STEPS, SIZE, SEED = 4, 128, 93
CASES = [
    # name, source, target, added word (add only)
    ("nonrigid", "a small red circle above a blue square", "a small red circle beside a blue square", None),
    ("add", "a small red circle above a blue square", "a small red circle with a hat above a blue square", "hat"),
]
LAYERS = {"nonrigid": [0, 1, 2, 3], "add": [0, 2, 3]}
MASK_BLOCKS, DERIVE_STEP = [3], 1


def main():
    repo, model = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "freeflux"
    out.mkdir(parents=True, exist_ok=True)
    for name in ["cv2", "matplotlib", "matplotlib.pyplot"]:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stub
    sys.path[:0] = [str(repo / "editing"), str(repo / "editing" / "add_object"), str(repo / "editing" / "non_rigid")]
    from pipeline_flux_add_object import FluxPipeline
    from transformer_flux_add_object import FluxTransformer2DModel
    from add_object_attn_utils import register_reasoning_attention_control, register_add_object_attention_control
    from non_rigid_attn_utils import register_non_rigid_attention_control
    from utils import get_index_from_subject
    import pipeline_flux_add_object as pfa

    # derive_add_mask_from_attn with the mapped block list (the rest is the official method's text).
    src = pathlib.Path(pfa.__file__).read_text()
    start = src.index("    def derive_add_mask_from_attn")
    end = src.index("    def check_inputs", start)
    body = src[start:end].replace("target_block_list = [40,41,42,43]", f"target_block_list = {MASK_BLOCKS}")
    scope = dict(vars(pfa))
    exec("class _Patch:\n" + body, scope)
    FluxPipeline.derive_add_mask_from_attn = scope["_Patch"].derive_add_mask_from_attn

    pipe = FluxPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    pipe.transformer = FluxTransformer2DModel.from_pretrained(str(model), subfolder="transformer",
                                                              torch_dtype=torch.float32)
    cases = []
    for name, source, target, word in CASES:
        args = {"start_step": 0, "start_layer": 0, "layer_idx": LAYERS[name], "step_idx": list(range(STEPS)),
                "total_layers": 4, "total_steps": STEPS}
        gen = torch.Generator("cpu").manual_seed(SEED)
        latents = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=gen).expand(2, -1, -1, -1)
        latents = pipe._pack_latents(latents, 2, 16, SIZE // 8, SIZE // 8)
        common = dict(prompt=[source, target], height=SIZE, width=SIZE, guidance_scale=3.5, num_inference_steps=STEPS,
                      max_sequence_length=512, latents=latents)
        entry = {"name": name, "model": model.name, "source": f"{name}-source.png", "target": f"{name}-target.png"}
        with torch.no_grad():
            if word is None:
                register_non_rigid_attention_control(pipe, **args)
                images = pipe(**common, output_type="np").images
            else:
                idx = get_index_from_subject(pipe, target, word)
                register_reasoning_attention_control(pipe, **args)
                derived = pipe(**common, subject_idx_list=idx, derive_step=DERIVE_STEP)
                register_add_object_attention_control(pipe, **args)
                images = pipe(**common, derive_idx_list=derived, output_type="np").images
                grid = np.zeros(((SIZE // 16) ** 2,), np.uint8)
                grid[[i - 512 for i in derived]] = 255
                Image.fromarray(grid.reshape(SIZE // 16, SIZE // 16)).save(out / f"{name}-mask.png")
                entry.update({"mask": f"{name}-mask.png", "tokens": idx})
        for role, img in zip(("source", "target"), images):
            Image.fromarray((img * 255).round().astype(np.uint8)).save(out / entry[role])
        entry["args"] = (f"--source-prompt '{source}' --prompt '{target}' --edit-method freeflux-{name} "
                         + (f"--edit-words {word} " if word else "")
                         + f"--steps {STEPS} --width {SIZE} --height {SIZE} --seed {SEED}")
        cases.append(entry)
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
