"""Goldens for the attention controls (controls/, docs/CONTROLS.md), CPU float32, tiny random models:

- PAG: diffusers' own StableDiffusion3PAGPipeline (PAGJointAttnProcessor2_0 / PAGCFG...) on a tiny SD3 without
  QK-norm: CFG on, off, and with the adaptive scale.
- SoftPAG (per-head): HeadHunter (cvlab-kaist/HeadHunter @ 3828d1c). Its repository cannot be fetched here (only
  single files can be read), and its code is a fork of diffusers; so the exact pieces are ported below:
  `skip_attention` with perturb_type "[PROB_PERTURB]attention_identity@scale=u" and the selected heads, its
  JointAttnProcessor2_0 (QK-norm applied to the image stream only, as theirs), and its pipeline's guidance loop
  (cond, uncond and perturbed passes; pred = CFG + w (cond - perturbed)).
- Skip-layer guidance on FLUX (CFG off, a double and a single block) and on CogVideoX: diffusers' FluxPipeline and
  CogVideoXPipeline with the transformer wrapped so that each step's prediction becomes cond + s (cond - skipped),
  the skipped blocks replaced by the identity, in diffusers' strict step window.
- APG and CFG-Zero*: diffusers' guider formulas on recorded random predictions over three steps.
- --text-scale: the tiny SD3 and FLUX transformers with the text stream entering chosen blocks multiplied.
- Attention maps: explicit softmax probabilities (an attention processor that materialises them; fine at this
  size) of the image->text block, averaged over heads, layers and steps of the cond branch, through the whole
  StableDiffusion3Pipeline.

Writes cases.json: name, model folder, the `mmdit generate` arguments and the expected images (PNG).
"""
import inspect
import json
import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from _tiny_cogvideox import build_pipeline as build_cogvideox
from _tiny_flux import build_flux_pipeline
from _tiny_sd3 import build_pipeline as build_sd3

PROMPT = "a small red circle above a blue square"


def save_images(out, name, images):
    files = []
    for i, img in enumerate(images):
        arr = (img * 255).round().astype(np.uint8)
        f = f"{name}-{i:03d}.png" if len(images) > 1 else f"{name}.png"
        Image.fromarray(arr).save(out / f)
        files.append(f)
    return files


# --- PAG: diffusers' StableDiffusion3PAGPipeline -------------------------------------------------------------

def pag_cases(out, sd3):
    from diffusers import StableDiffusion3PAGPipeline
    params = inspect.signature(StableDiffusion3PAGPipeline.__init__).parameters
    comps = {k: v for k, v in sd3.components.items() if k in params}
    pipe = StableDiffusion3PAGPipeline(**comps, pag_applied_layers=["blocks.1"])
    cases = []
    for name, cfg, pag, adaptive, seed in [("pag_sd3_cfg", 5.0, 3.0, 0.0, 11), ("pag_sd3_nocfg", 1.0, 2.0, 0.0, 12),
                                           ("pag_sd3_adaptive", 4.0, 4.0, 0.008, 13)]:
        gen = torch.Generator("cpu").manual_seed(seed)
        images = pipe(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=4, guidance_scale=cfg,
                      pag_scale=pag, pag_adaptive_scale=adaptive, width=128, height=128, generator=gen,
                      output_type="np").images
        args = (f"--prompt '{PROMPT}' --negative-prompt blurry --steps 4 --cfg {cfg} --width 128 --height 128 "
                f"--seed {seed} --pag-scale {pag} --pag-layers 1 --pag-mode image")
        if adaptive:
            args += f" --pag-adaptive-scale {adaptive}"
        cases.append({"name": name, "model": "tiny-sd3", "args": args, "images": save_images(out, name, images)})
    return cases


# --- HeadHunter SoftPAG: ported from cvlab-kaist/HeadHunter @ 3828d1c ----------------------------------------

def headhunter_skip_attention(query, key, value, perturb_heads, u):
    """skip_attention(..., perturb_type="[PROB_PERTURB]attention_identity@scale=u", perturb_heads) as written
    there (diffusers/src/diffusers/models/attention_processor.py): the explicit map, identity on the heads."""
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1 / math.sqrt(query.size(-1))
    attn_bias = torch.zeros(L, S, dtype=query.dtype, device=query.device)
    attn_weight = query @ key.transpose(-2, -1) * scale_factor
    attn_weight = attn_weight + attn_bias
    attn_weight = torch.softmax(attn_weight, dim=-1)
    B, H, L, S = attn_weight.shape
    perturbed_attn_weight = torch.eye(L, S, dtype=query.dtype, device=query.device).repeat(B, H, 1, 1)
    perturbed_attn_weight = (1 - u) * attn_weight + u * perturbed_attn_weight
    perturb_head_indices = [i for i in range(H) if i in perturb_heads]
    attn_weight[:, perturb_head_indices, :, :] = perturbed_attn_weight[:, perturb_head_indices, :, :]
    return attn_weight @ value


class HeadHunterJointAttnProcessor:
    """HeadHunter's JointAttnProcessor2_0 for a perturbed layer (norm_q/norm_k on the image stream; the added
    norms are commented out there, and the tiny SD3 has none)."""

    def __init__(self, heads, u):
        self.heads, self.u = heads, u

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        split = lambda x: x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            query = torch.cat([query, split(attn.add_q_proj(encoder_hidden_states))], dim=2)
            key = torch.cat([key, split(attn.add_k_proj(encoder_hidden_states))], dim=2)
            value = torch.cat([value, split(attn.add_v_proj(encoder_hidden_states))], dim=2)
        hidden_states = headhunter_skip_attention(query, key, value, self.heads, self.u)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :residual.shape[1]], hidden_states[:, residual.shape[1]:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        return (hidden_states, encoder_hidden_states) if encoder_hidden_states is not None else hidden_states


def headhunter_generate(pipe, prompt, negative, steps, cfg, scale, perturb_heads, u, size, seed):
    """HeadHunter's StableDiffusion3Pipeline.__call__ loop: separate cond / uncond / perturbed transformer calls,
    noise_pred = uncond + cfg (cond - uncond) [or cond] + scale (cond - perturbed)."""
    pe, npe, pp, npp = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative,
                                          do_classifier_free_guidance=cfg > 1, max_sequence_length=256)
    gen = torch.Generator("cpu").manual_seed(seed)
    latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, size, size, pe.dtype, "cpu", gen)
    pipe.scheduler.set_timesteps(steps)
    normal = dict(pipe.transformer.attn_processors)
    perturbed = dict(normal)
    for layer in sorted({l for l, _ in perturb_heads}):
        heads = [h for l, h in perturb_heads if l == layer]
        perturbed[f"transformer_blocks.{layer}.attn.processor"] = HeadHunterJointAttnProcessor(heads, u)
    for t in pipe.scheduler.timesteps:
        ts = t.expand(1)
        run = lambda e, p: pipe.transformer(hidden_states=latents, timestep=ts, encoder_hidden_states=e,
                                            pooled_projections=p, return_dict=False)[0]
        cond = run(pe, pp)
        if cfg > 1:
            uncond = run(npe, npp)
            pred = uncond + cfg * (cond - uncond)
        else:
            pred = cond
        pipe.transformer.set_attn_processor(dict(perturbed))
        ptb = run(pe, pp)
        pipe.transformer.set_attn_processor(dict(normal))
        pred = pred + scale * (cond - ptb)
        latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    image = pipe.vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")


def softpag_cases(out, sd3):
    cases = []
    for name, cfg, scale, heads, u, seed in [("softpag_sd3_cfg", 4.0, 2.0, [(0, 1), (1, 0), (2, 1)], 0.5, 21),
                                             ("softpag_sd3_nocfg", 1.0, 3.0, [(1, 1)], 1.0, 22)]:
        images = headhunter_generate(sd3, PROMPT, "blurry", 4, cfg, scale, heads, u, 128, seed)
        spec = ",".join(f"{l}:{h}" for l, h in heads)
        args = (f"--prompt '{PROMPT}' --negative-prompt blurry --steps 4 --cfg {cfg} --width 128 --height 128 "
                f"--seed {seed} --pag-scale {scale} --pag-heads {spec} --pag-u {u} --pag-mode full")
        cases.append({"name": name, "model": "tiny-sd3", "args": args, "images": save_images(out, name, images)})
    return cases


# --- skip-layer guidance on FLUX and CogVideoX: the pipelines with a wrapped transformer -----------------------

class SkipLayerWrapper:
    """Replaces transformer.forward: pred -> pred + scale (pred - pred with `layers` as identity blocks), in
    diffusers' strict window steps * start < i < steps * stop. `blocks` lists the block stacks in call order."""

    def __init__(self, transformer, blocks, layers, scale, steps, start, stop, video_first):
        self.t, self.blocks, self.layers, self.scale = transformer, blocks, layers, scale
        self.video_first = video_first  # CogVideoXBlock returns (hidden, encoder); SD3/FLUX blocks (encoder, hidden)
        self.steps, self.start, self.stop, self.calls = steps, start, stop, 0
        self.forward = transformer.forward
        transformer.forward = self

    def __call__(self, *args, **kwargs):
        i = self.calls
        self.calls += 1
        pred = self.forward(*args, **kwargs)[0]
        if not (i > self.steps * self.start and i < self.steps * self.stop):
            return (pred,)
        saved = {}
        for l in self.layers:
            saved[l] = self.blocks[l].forward
            self.blocks[l].forward = lambda hidden_states, encoder_hidden_states, **kw: (
                (hidden_states, encoder_hidden_states) if self.video_first else (encoder_hidden_states, hidden_states))
        skipped = self.forward(*args, **kwargs)[0]
        for l, f in saved.items():
            self.blocks[l].forward = f
        return (pred + self.scale * (pred - skipped),)

    def remove(self):
        self.t.forward = self.forward


def slg_cases(out, flux, cog):
    cases = []
    # FLUX.1-dev-like, no CFG: a double block (1) and a single block (layer 3 = single block 1).
    blocks = list(flux.transformer.transformer_blocks) + list(flux.transformer.single_transformer_blocks)
    w = SkipLayerWrapper(flux.transformer, blocks, [1, 3], 2.5, 4, 0.1, 0.9, False)
    gen = torch.Generator("cpu").manual_seed(31)
    images = flux(prompt=PROMPT, num_inference_steps=4, guidance_scale=3.5, width=128, height=128, generator=gen,
                  output_type="np").images
    w.remove()
    args = (f"--prompt '{PROMPT}' --steps 4 --guidance 3.5 --width 128 --height 128 --seed 31 "
            "--slg-scale 2.5 --slg-layers 1,3 --slg-start 0.1 --slg-stop 0.9")
    cases.append({"name": "slg_flux", "model": "tiny-flux-dev", "args": args, "images": save_images(out, "slg_flux", images)})
    # CogVideoX-2B-like, CFG off.
    w = SkipLayerWrapper(cog.transformer, list(cog.transformer.transformer_blocks), [1], 1.5, 4, 0.0, 1.0, True)
    gen = torch.Generator("cpu").manual_seed(32)
    frames = cog(prompt=PROMPT, num_inference_steps=4, guidance_scale=1.0, num_frames=9, width=48, height=64,
                 generator=gen, output_type="np", max_sequence_length=16).frames[0]
    w.remove()
    args = (f"--prompt '{PROMPT}' --steps 4 --cfg 1 --frames 9 --width 48 --height 64 --seed 32 "
            "--max-sequence-length 16 --slg-scale 1.5 --slg-layers 1 --slg-start 0 --slg-stop 1")
    cases.append({"name": "slg_cogvideox", "model": "tiny-cogvideox-2b", "args": args, "video": True,
                  "images": save_images(out, "slg_cogvideox", list(frames))})
    return cases


# --- APG and CFG-Zero*: diffusers' guiders on recorded predictions ---------------------------------------------

def guider_goldens(out):
    from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeZeroStarGuidance
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer
    g = torch.Generator().manual_seed(41)
    t = {}
    steps = 3
    apg = AdaptiveProjectedGuidance(guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5,
                                    adaptive_projected_guidance_rescale=2.0, eta=0.3)
    zero = ClassifierFreeZeroStarGuidance(guidance_scale=4.0, zero_init_steps=1)
    for i in range(steps):
        cond, uncond = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
        t[f"cond_{i}"], t[f"uncond_{i}"] = cond, uncond
        for guider in (apg, zero):
            guider.set_state(step=i, num_inference_steps=steps, timestep=torch.tensor(999 - 300 * i))
        if i == 0:  # what AdaptiveProjectedGuidance.prepare_inputs does at step 0
            apg.momentum_buffer = MomentumBuffer(apg.adaptive_projected_guidance_momentum)
        t[f"apg_{i}"] = apg.forward(cond, uncond).pred
        t[f"zero_{i}"] = zero.forward(cond, uncond).pred
    save_file({k: v.contiguous() for k, v in t.items()}, str(out / "guiders.safetensors"))


# --- --text-scale on the transformers ---------------------------------------------------------------------------

def scale_text_entering(blocks, layers, factor):
    saved = {}
    for l in layers:
        f = blocks[l].forward
        saved[l] = f
        blocks[l].forward = lambda *a, _f=f, **kw: _f(*a, **{**kw, "encoder_hidden_states": kw["encoder_hidden_states"] * factor})
    return saved


def text_scale_goldens(out, sd3, flux):
    g = torch.Generator().manual_seed(51)
    t = {}
    m = sd3.transformer
    x = torch.randn(2, 16, 16, 16, generator=g)
    ctx = torch.randn(2, 20, m.config.joint_attention_dim, generator=g)
    pooled = torch.randn(2, m.config.pooled_projection_dim, generator=g)
    ts = torch.tensor([900.0, 250.0])
    saved = scale_text_entering(m.transformer_blocks, [0, 2], 1.7)
    with torch.no_grad():
        t["sd3_out"] = m(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=ts, return_dict=False)[0]
    for l, f in saved.items():
        m.transformer_blocks[l].forward = f
    t.update(sd3_hidden_states=x, sd3_encoder_hidden_states=ctx, sd3_pooled=pooled, sd3_timestep=ts)
    m = flux.transformer
    blocks = list(m.transformer_blocks) + list(m.single_transformer_blocks)
    x = torch.randn(1, 16, 64, generator=g)
    ctx = torch.randn(1, 8, m.config.joint_attention_dim, generator=g)
    pooled = torch.randn(1, m.config.pooled_projection_dim, generator=g)
    img_ids = torch.zeros(16, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    txt_ids = torch.zeros(8, 3)
    saved = scale_text_entering(blocks, [0, 3], 0.5)
    with torch.no_grad():
        t["flux_out"] = m(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=torch.tensor([0.7]),
                          img_ids=img_ids, txt_ids=txt_ids, guidance=torch.tensor([3.5]), return_dict=False)[0]
    for l, f in saved.items():
        blocks[l].forward = f
    t.update(flux_hidden_states=x, flux_encoder_hidden_states=ctx, flux_pooled=pooled, flux_img_ids=img_ids,
             flux_txt_ids=txt_ids)
    save_file({k: v.contiguous() for k, v in t.items()}, str(out / "text_scale.safetensors"))


# --- attention maps: explicit probabilities through the SD3 pipeline ------------------------------------------

class RecordingProcessor:
    """diffusers' JointAttnProcessor2_0 computed with an explicit softmax, recording the cond rows' image->text
    probabilities of `cols`, averaged over heads."""

    def __init__(self, cols, cond_rows, record):
        self.cols, self.cond_rows, self.record = cols, cond_rows, record

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n = hidden_states.shape[:2]
        head_dim = attn.to_q.out_features // attn.heads
        split = lambda x: x.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq, ck, cv = (split(p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        self.record.append(p[self.cond_rows, :, :n, n + torch.tensor(self.cols)].mean(1))
        o = (p @ v).transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
        o, c = o[:, :n], o[:, n:]
        if not attn.context_pre_only:
            c = attn.to_add_out(c)
        return attn.to_out[0](o), c


def attention_map_cases(out, sd3):
    tok = sd3.tokenizer
    ids = tok(PROMPT).input_ids  # BOS, tokens, EOS
    cols = list(range(1, len(ids) - 1))
    record = []
    normal = dict(sd3.transformer.attn_processors)
    sd3.transformer.set_attn_processor(RecordingProcessor(cols, slice(1, 2), record))  # rows [uncond, cond]
    gen = torch.Generator("cpu").manual_seed(61)
    images = sd3(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=3, guidance_scale=4.0, width=128,
                 height=128, generator=gen, output_type="np").images
    sd3.transformer.set_attn_processor(normal)
    layers = sd3.transformer.config.num_layers
    maps = torch.stack(record).mean(0)[0]  # [N, tokens]: 3 steps x layers calls
    assert len(record) == 3 * layers
    grid = 128 // 8 // 2
    maps = maps.t().reshape(len(cols), 1, grid, grid)
    words = [[c, tok.convert_ids_to_tokens(ids[c]).replace("</w>", "")] for c in cols]
    save_file({"maps": maps.contiguous()}, str(out / "attention_maps.safetensors"), metadata={"tokens": json.dumps(words)})
    args = (f"--prompt '{PROMPT}' --negative-prompt blurry --steps 3 --cfg 4.0 --width 128 --height 128 --seed 61 "
            "--attention-maps MAPS")
    return [{"name": "attention_maps_sd3", "model": "tiny-sd3", "args": args,
             "images": save_images(out, "attention_maps_sd3", images), "maps": "attention_maps.safetensors"}]


def main(out: pathlib.Path):
    torch.manual_seed(0)
    sd3 = build_sd3(out / "tiny-sd3", "sd3", seed=0)
    flux = build_flux_pipeline(out / "tiny-flux-dev", "dev", seed=0)
    cog = build_cogvideox(out / "tiny-cogvideox-2b", "2b", seed=0)
    with torch.no_grad():
        cases = pag_cases(out, sd3) + softpag_cases(out, sd3) + slg_cases(out, flux, cog) + attention_map_cases(out, sd3)
        guider_goldens(out)
        text_scale_goldens(out, sd3, flux)
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
