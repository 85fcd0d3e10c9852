#!/usr/bin/env python3
"""Makes tests/data/consistedit/: ConsistEdit images and masks from its own code (zxYin/ConsistEdit_Code @ 0b73d6a:
consistEdit/attention_control.py regiter_attention_editor_diffusers_sd3_mask, attention_map_controller.py,
solver.py register_sd3_solver, and run_synthesis_sd3.py's consistent_synthesis), run on the tiny SD3 of the
goldens, CPU float32.

The official code is not in this repository and cannot be fetched in CI, so its outputs are kept in
tests/data/consistedit/ (cases.json, source/target images, masks) and CTest compares mmdit against them. Re-make
them with a checkout (or a git mirror) of the repository:

    .venv/bin/python scripts/reference/consistedit_official.py PATH_TO_REPO build/goldens/controls/tiny-sd3

It also runs run_real_sd3.py's inversion of a given image (UniInvEulerScheduler, pipe.invert) on the colour case's
source image and keeps the start latent in inversion.safetensors.

What differs from run_synthesis_sd3.py, and why: the start noise comes from a seeded CPU generator (as mmdit's
does) instead of the global CUDA generator; float32 on the CPU instead of float16 autocast on CUDA; 4 steps and
the tiny model's 128x128 instead of 28 steps at 1024x1024 (the token grid, GlobalVars.WIDTH/HEIGHT, follows the
size as in the script); the modules the SD3 path does not use but consistEdit/utils.py imports at the top
(imageio, cv2) are stubbed when absent. The attention editor, the mask pass and the edit pass run unchanged.
"""
import importlib
import json
import pathlib
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
from PIL import Image

CASES = [
    # name, source prompt, target prompt, edit word, alpha, cfg, seed
    ("consistedit_colour", "a small red circle above a blue square", "a small green circle above a blue square",
     "circle", 1.0, 5.0, 91),
    ("consistedit_shape", "a small red circle above a blue square", "a small red star above a blue square",
     "circle", 0.25, 5.0, 92),
]
STEPS, SIZE = 4, 128


def load(repo: pathlib.Path):
    tmp = pathlib.Path(tempfile.mkdtemp())
    (tmp / "consistEdit").mkdir()
    for name in ["__init__.py", "attention_control.py", "attention_map_controller.py", "global_var.py", "scheduler.py",
                 "solver.py", "utils.py"]:
        src = repo / "consistEdit" / name
        text = src.read_text() if src.exists() else subprocess.run(
            ["git", "-C", str(repo), "show", f"HEAD:consistEdit/{name}"], check=True, capture_output=True, text=True).stdout
        (tmp / "consistEdit" / name).write_text(text)
    import diffusers  # noqa: F401  (before the stubs: its own import checks must see the real environment)
    import importlib.machinery
    for missing in ["imageio", "imageio.v3", "cv2"]:
        try:
            importlib.import_module(missing)
        except ImportError:
            stub = types.ModuleType(missing)
            stub.__spec__ = importlib.machinery.ModuleSpec(missing, None)
            sys.modules[missing] = stub
    sys.modules["imageio"].v3 = sys.modules.get("imageio.v3")
    sys.path.insert(0, str(tmp))
    from consistEdit import attention_control, solver, utils
    from consistEdit.global_var import GlobalVars
    return attention_control, solver, utils, GlobalVars


def main():
    repo, model = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "consistedit"
    out.mkdir(parents=True, exist_ok=True)
    attention_control, solver, utils, GlobalVars = load(repo)
    from diffusers import StableDiffusion3Pipeline
    cases = []
    for name, src, tgt, word, alpha, cfg, seed in CASES:
        pipe = StableDiffusion3Pipeline.from_pretrained(str(model), torch_dtype=torch.float32)
        solver.register_sd3_solver(pipe)
        prompts = [src, tgt]
        gen = torch.Generator("cpu").manual_seed(seed)
        start_code = torch.randn([1, 16, SIZE // 8, SIZE // 8], generator=gen).expand(len(prompts), -1, -1, -1)
        GlobalVars.WIDTH = SIZE // 8 // 2
        GlobalVars.HEIGHT = SIZE // 8 // 2
        attention_control.regiter_attention_editor_diffusers_sd3_mask(pipe, use_old_version=False)
        GlobalVars.TEST_QK_STEP = int(STEPS * alpha)
        clip_indices = utils.get_clip_token_indices(pipe, prompts[0], word, str(model / "tokenizer"))
        t5_indices = [x + 77 for x in utils.get_t5_token_indices(pipe, prompts[0], word)]
        GlobalVars.TOKEN_IDS = clip_indices + t5_indices
        GlobalVars.GENERATE_MASK = True
        GlobalVars.MASK_OUTPUT_PATH = str(out / f"{name}-mask.png")
        with torch.no_grad():
            pipe.denoise(prompts[:1], latents=start_code[:1], guidance_scale=cfg, num_inference_steps=STEPS,
                         height=SIZE, width=SIZE)
            GlobalVars.GENERATE_MASK = False
            images = pipe.denoise(prompts, latents=start_code, guidance_scale=cfg, num_inference_steps=STEPS,
                                  height=SIZE, width=SIZE, output_type="np").images
        files = []
        for role, img in zip(("source", "target"), images):
            fn = f"{name}-{role}.png"
            Image.fromarray((img * 255).round().astype(np.uint8)).save(out / fn)
            files.append(fn)
        args = (f"--source-prompt '{src}' --prompt '{tgt}' --edit-words {word} --strength {alpha} --cfg {cfg} "
                f"--steps {STEPS} --width {SIZE} --height {SIZE} --seed {seed}")
        cases.append({"name": name, "model": model.name, "args": args, "source": files[0], "target": files[1],
                      "mask": f"{name}-mask.png", "tokens": GlobalVars.TOKEN_IDS})
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")
    inversion_case(model, out, solver)


def inversion_case(model, out, solver):
    """run_real_sd3.py's inversion: the image's VAE mean latent, then pipe.invert with UniInvEulerScheduler, guidance 1,
    the source prompt; the attention editor only records during inversion, so it is left out. Input: the colour
    case's source image. Writes inversion.safetensors: the image latent, the prompt's embeddings, the start latent."""
    from diffusers import StableDiffusion3Pipeline
    from consistEdit.scheduler import UniInvEulerScheduler
    from safetensors.torch import save_file
    name, src = CASES[0][0], CASES[0][1]
    pipe = StableDiffusion3Pipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    solver.register_sd3_solver(pipe)
    pipe.scheduler = UniInvEulerScheduler.from_pretrained(str(model), subfolder="scheduler")
    image = Image.open(out / f"{name}-source.png").convert("RGB")
    with torch.no_grad():
        latent = pipe.vae.encode(pipe.image_processor.preprocess(image))["latent_dist"].mean
        latent = (latent - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        embeds, _, pooled, _ = pipe.encode_prompt(src, src, src, do_classifier_free_guidance=False)
        start = pipe.invert([src], latents=latent, guidance_scale=1, num_inference_steps=STEPS,
                            output_type="latent").images
    save_file({"image_latent": latent.contiguous(), "prompt_embeds": embeds.contiguous(),
               "pooled": pooled.contiguous(), "start_latent": start.contiguous()},
              str(out / "inversion.safetensors"),
              metadata={"image": f"{name}-source.png", "prompt": src, "steps": str(STEPS)})
    print("wrote inversion.safetensors")


if __name__ == "__main__":
    main()
