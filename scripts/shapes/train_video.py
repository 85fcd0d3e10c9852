#!/usr/bin/env python3
"""Trains the video demo model demo/shapes-video: a tiny CogVideoX pipeline in the real diffusers layout (2B-like:
3D sin-cos positions, the DDIM scheduler of CogVideoX-2b), trained on world.py's clips of one shape moving along
one axis, with diffusers and transformers classes, and saved with save_pretrained (the T5 sentencepiece tokenizer
learned from the captions).

    train_video.py OUT [--n 20000] [--vae-steps N] [--dit-steps N] [--batch B] [--time-budget S] ...
    train_video.py OUT --smoke                      # a few CPU steps end to end, then load + generate one clip
    train_video.py OUT --vae-from DIR ...           # a new DiT and T5 on DIR's VAE
    train_video.py OUT --vae-from DIR --text-from DIR --patch-size 1  # a new DiT on DIR's VAE, tokenizer and T5
    train_video.py OUT --resume DIR --vae-steps 0   # continue DIR's DiT and T5
    train_video.py OUT --eval-only --eval 64        # generate held-out captions x 2 seeds with diffusers, score

Stages (seeded):
1. AutoencoderKLCogVideoX, the causal 3D VAE: 3 blocks (4x spatial compression, 16x16 latents at 64x64),
   temporal compression 4 (17 frames -> 5 latent frames), 16 latent channels; L1 + MSE reconstruction + a small
   KL term, through diffusers' own encode/decode (their frame batching and causal caches, as at inference).
   scaling_factor is then --latent-scale / the latents' standard deviation (the CogVideoX pipelines use no shift).
2. With the VAE frozen: CogVideoXTransformer3DModel and the T5 encoder (T5EncoderModel, narrow) from scratch,
   trained jointly with v-prediction on the scheduler's alphas_cumprod (CogVideoXDDIMScheduler, snr_shift_scale
   --snr-shift, 3 by default, zero terminal SNR), timesteps uniform over 0..999: the loss of diffusers' examples/cogvideo
   (x0 error weighted by 1 / (1 - alphas_cumprod) is the v error). Captions are encoded as
   CogVideoXPipeline.encode_prompt does (padded to max_sequence_length, no attention mask); 10% are dropped to
   "" for CFG. bf16 autocast on the GPU; every draw of a step comes from one generator on the device.
Why --latent-scale and --snr-shift: the committed VAE keeps an object's shape in a small part of its latents'
variance (the spatial detail, see diagnose_video.py), so with scaling_factor at 1 / the std a wrong shape costs
the DiT's loss little, and it learned blobs. A larger scale makes the shape count (K = 3.8 gives the detail the
image demo's variance); the committed model's DiT was trained so, with snr_shift_scale 1.
--dit-object-weight, --dit-detail-weight and --t-logit-normal re-weight the loss (tried; docs/SHAPES.md).
--image-frac F trains that fraction of the DiT steps on the clips' first latent frames alone (single images, at
--image-batch), the rest on whole clips.
--checkpoint-every S saves the pipeline every S seconds of DiT training (and --checkpoint-tar writes it as a
tar.gz there too), so a run cut short still leaves a model. Weights are saved in float16 (--save-dtype), the T5's
in float32.

The recipe of the committed model, its step counts and scores are in docs/SHAPES.md (the video part);
scripts/shapes/reproduce_video.sh replays it.
"""
import argparse
import json
import math
import pathlib
import random
import shutil
import sys
import tarfile
import tempfile
import time

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "goldens"))  # appended: goldens/tokenizers.py must not shadow `tokenizers`
import world  # noqa: E402
from _tiny_cogvideox import SCHED_COMMON  # noqa: E402  (the real CogVideoX scheduler config)
from evaluate import image_seed as clip_seed  # noqa: E402  (seed = s * 100000 + caption index, as for images)
from train import log  # noqa: E402
from video_latents import detail, draw_timesteps, object_weights  # noqa: E402
from video_vae import (amp, encode_all, heldout_clips, new_vae, render_clips, score_clips_parallel,  # noqa: E402
                       train_vae)

MAX_TEXT_LEN = 32  # max_text_seq_length: the T5 tokens every caption is padded to (a caption takes 11-13)


def load_data(a):
    """(uint8 [n, frames, size, size, 3], captions): the first --n training clips of --seed; with --data-cache
    FILE.npy, read from there if it holds at least n clips, else rendered and saved there."""
    rng = random.Random(f"clips:train:{a.seed}")
    clips = [world.sample_clip(rng, "train") for _ in range(a.n)]  # drawn in order: a larger --n extends a smaller
    t0 = time.time()
    cache = pathlib.Path(a.data_cache) if a.data_cache else None
    if cache and cache.exists() and len(np.load(cache, mmap_mode="r")) >= a.n:
        vids = np.ascontiguousarray(np.load(cache, mmap_mode="r")[:a.n])
    else:
        vids = render_clips(clips, a.size)
        if cache:
            np.save(cache.with_name(cache.name + ".part.npy"), vids)
            cache.with_name(cache.name + ".part.npy").rename(cache)
    log(f"data: {len(vids)} clips of {vids.shape[1]} frames {vids.shape[2]}x{vids.shape[3]} in {time.time() - t0:.0f} s")
    return vids, [world.clip_caption(c) for c in clips]


def vocabulary_lines(captions):
    words = (list(world.COLOURS) + world.SHAPES + list(world.DIRECTIONS) + list(world.SIZES) + list(world.BACKGROUNDS)
             + ["a", "moving", "on", "over", "background"])
    return captions[:5000] + [" ".join(words)]


def write_t5_tokenizer(folder, lines, vocab_size=40):
    """A sentencepiece unigram model (T5's special ids: pad 0, eos 1, unk 2) learned on the captions, plus one
    piece for every word of the grammar (scored above any split of it, so each word is one token: a caption
    takes about 13 of MAX_TEXT_LEN). sentencepiece's trainer alone keeps at most 45 pieces on so small a
    language, mostly word fragments. Saved as spiece.model; returns the T5TokenizerFast from_pretrained makes."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import T5TokenizerFast
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = pathlib.Path(tmp) / "corpus.txt"
        text.write_text("\n".join(lines))
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spiece"), vocab_size=vocab_size,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
                                       character_coverage=1.0, minloglevel=2)
    (folder / "spiece.vocab").unlink()
    m = pb.ModelProto()
    m.ParseFromString((folder / "spiece.model").read_bytes())
    have = {p.piece for p in m.pieces}
    for w in sorted({w for line in lines for w in line.split()}):
        if "\u2581" + w not in have:
            p = m.pieces.add()
            p.piece, p.score, p.type = "\u2581" + w, -1.0, pb.ModelProto.SentencePiece.NORMAL
    (folder / "spiece.model").write_bytes(m.SerializeToString())
    return T5TokenizerFast.from_pretrained(str(folder), extra_ids=0, model_max_length=512)


def new_transformer(a, vae_blocks):
    from diffusers import CogVideoXTransformer3DModel
    s = a.size // 2 ** (vae_blocks - 1)
    return CogVideoXTransformer3DModel(num_attention_heads=a.heads, attention_head_dim=64, in_channels=16,
                                       out_channels=16, time_embed_dim=a.time_dim, text_embed_dim=a.t5_dim,
                                       num_layers=a.layers, sample_width=s, sample_height=s,
                                       sample_frames=world.CLIP_FRAMES, patch_size=a.patch_size,
                                       temporal_compression_ratio=4, max_text_seq_length=MAX_TEXT_LEN,
                                       use_rotary_positional_embeddings=False)


def new_t5(a, vocab):
    from transformers import T5Config, T5EncoderModel
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=a.t5_dim, d_kv=32, d_ff=2 * a.t5_dim,
                                   num_layers=a.t5_layers, num_heads=a.t5_dim // 32, relative_attention_num_buckets=16,
                                   relative_attention_max_distance=MAX_TEXT_LEN, feed_forward_proj="gated-gelu",
                                   dense_act_fn="gelu_new", is_encoder_decoder=False, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1))


def build(a, captions, tmp):
    """(tokenizer, text_encoder, transformer, vae), new or from --resume / --vae-from."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5EncoderModel, T5TokenizerFast
    f32 = dict(torch_dtype=torch.float32)
    if a.resume:
        r = pathlib.Path(a.resume)
        shutil.copytree(r / "tokenizer", tmp / "tokenizer")
        return (T5TokenizerFast.from_pretrained(str(tmp / "tokenizer")), T5EncoderModel.from_pretrained(r / "text_encoder", **f32),
                CogVideoXTransformer3DModel.from_pretrained(r / "transformer", **f32),
                AutoencoderKLCogVideoX.from_pretrained(r / "vae", **f32))
    if a.text_from:  # a new DiT (say at another patch size) on a trained model's tokenizer and T5
        shutil.copytree(pathlib.Path(a.text_from) / "tokenizer", tmp / "tokenizer")
        tok = T5TokenizerFast.from_pretrained(str(tmp / "tokenizer"))
        t5 = T5EncoderModel.from_pretrained(pathlib.Path(a.text_from) / "text_encoder", **f32)
    else:
        tok = write_t5_tokenizer(tmp / "tokenizer", vocabulary_lines(captions))
        t5 = new_t5(a, len(tok))
    if a.vae_from:
        vae = AutoencoderKLCogVideoX.from_pretrained(pathlib.Path(a.vae_from) / "vae", **f32)
        a.vae_channels = ",".join(str(c) for c in vae.config.block_out_channels)
        vae.register_to_config(scaling_factor=vae.config.scaling_factor * a.latent_scale)
    else:
        vae = new_vae(a)
    return tok, t5, new_transformer(a, len(vae.config.block_out_channels)), vae


def tokenize(tok, prompts):
    """The ids CogVideoXPipeline._get_t5_prompt_embeds feeds its T5 (padded to MAX_TEXT_LEN, truncated)."""
    return tok(prompts, padding="max_length", max_length=MAX_TEXT_LEN, truncation=True, add_special_tokens=True,
               return_tensors="pt").input_ids


def train_dit(parts, vids, caps, a, dev, save_checkpoint):
    from diffusers import CogVideoXDDIMScheduler
    tok, t5, transformer, vae = parts
    if a.dit_steps == 0:
        return
    sched = CogVideoXDDIMScheduler(**SCHED_COMMON, snr_shift_scale=a.snr_shift)
    ac = sched.alphas_cumprod.to(dev, torch.float32)
    t_enc = time.time()
    mean, std = encode_all(vae, vids, dev)
    log(f"latents of {len(mean)} clips cached in {time.time() - t_enc:.0f} s: {tuple(mean.shape[1:])}")
    scale = vae.config.scaling_factor
    weights = object_weights(vids, a.dit_object_weight, dev) if a.dit_object_weight != 1 else None
    ids = tokenize(tok, list(caps) + [""]).to(dev)  # row len(caps): the dropped caption
    params = list(transformer.parameters()) + list(t5.parameters())
    fused = dict(fused=True) if dev.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4, **fused)
    gen = torch.Generator(dev).manual_seed(a.seed)
    t0 = time.time()
    last_ckpt = t0

    def lr_at(s):  # linear warm-up, then a cosine from --lr down to --lr-floor x --lr over the steps or the time budget
        p = (time.time() - t0) / a.time_budget if a.lr_schedule == "time" else s / max(a.dit_steps, 1)
        cos = 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
        return a.lr * min(1.0, (s + 1) / max(a.warmup, 1)) * (cos * (1 - a.lr_floor) + a.lr_floor)
    # image steps are every step but each image_every-th (0.75 -> 3 of every 4; none at 0)
    image_every = max(2, round(1 / (1 - a.image_frac))) if a.image_frac > 0 else 1
    transformer.train()
    t5.train()
    step = -1
    for step in range(a.dit_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        # An image step trains on the clips' first latent frames alone: with the causal VAE that latent frame is
        # frame 0 encoded by itself, and the 3D positions of one frame are those of a clip's first. A step then
        # costs about what an image model's does, so shapes get more samples in the same time.
        image = step % image_every != 0
        batch = a.image_batch if image else a.batch
        idx = torch.randint(len(mean), (batch,), generator=gen, device=dev)
        drop = torch.rand((batch,), generator=gen, device=dev) < a.drop
        cap_idx = torch.where(drop, len(caps), idx)
        m, sd = (mean[idx, :, :1], std[idx, :, :1]) if image else (mean[idx], std[idx])
        x0 = (m + sd * torch.randn(m.shape, generator=gen, device=dev)) * scale
        x0 = x0.permute(0, 2, 1, 3, 4)  # [B, F, C, h, w], the transformer's layout
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        t = draw_timesteps(a, batch, sched.config.num_train_timesteps, gen, dev)
        s_a, s_n = ac[t].sqrt().view(-1, 1, 1, 1, 1), (1 - ac[t]).sqrt().view(-1, 1, 1, 1, 1)
        xt = s_a * x0 + s_n * noise
        target = s_a * noise - s_n * x0  # v
        with amp(dev):
            emb = t5(ids[cap_idx])[0]
            pred = transformer(hidden_states=xt, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
        err = pred.float() - target
        if weights is None:
            loss = err.pow(2).mean()
        else:  # latent positions at the shape count --dit-object-weight times (per sample, normalised)
            w = (weights[idx, :1] if image else weights[idx]).unsqueeze(2)  # [B, F, 1, h, w]
            loss = ((w * err ** 2).mean((1, 2, 3, 4)) / w.mean((1, 2, 3, 4))).mean()
        if a.dit_detail_weight:
            loss = loss + a.dit_detail_weight * detail(err).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 200 == 0 or step == a.dit_steps - 1:
            log(f"dit step {step} loss {loss.item():.4f} lr {lr_at(step):.2e} ({(step + 1) / (time.time() - t0):.2f} steps/s)")
        if a.checkpoint_every and time.time() - last_ckpt > a.checkpoint_every:
            a.dit_steps_done = step + 1
            save_checkpoint()
            last_ckpt = time.time()
        if a.time_budget and time.time() - t0 > a.time_budget:
            log(f"dit: time budget {a.time_budget} s reached after {step + 1} of {a.dit_steps} steps")
            break
    a.dit_steps_done = step + 1
    a.dit_seconds = round(time.time() - t0)
    for m in (transformer, t5):
        m.eval().requires_grad_(False)


def save(parts, out, a, tmp):
    import diffusers
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline
    diffusers.utils.logging.set_verbosity_error()  # (its warnings on a float16 pipeline on the CPU: only saved here)
    tok, t5, transformer, vae = parts
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[a.save_dtype]
    training = [m for m in (t5, transformer, vae) if m.training]
    pipe = CogVideoXPipeline(tokenizer=tok, text_encoder=t5, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**SCHED_COMMON, snr_shift_scale=a.snr_shift))
    out = pathlib.Path(out)
    part = out.with_name(out.name + ".saving")
    shutil.rmtree(part, ignore_errors=True)
    # a float16 copy on the CPU; the training models stay as they are
    import copy
    cpu = copy.deepcopy(pipe)
    cpu.to("cpu", dtype)
    # The T5 (0.3 M parameters) stays float32: from_pretrained without a dtype then gives float32 everywhere
    # (transformers would load a float16 T5 as float16 beside diffusers' float32 models, and the call would fail).
    cpu.text_encoder.to(torch.float32)
    cpu.save_pretrained(part, safe_serialization=True)
    for cfg in part.glob("*/config.json"):  # a resumed model's configs name the folder it came from: not ours to keep
        c = json.loads(cfg.read_text())
        if c.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    shutil.copy(tmp / "tokenizer" / "spiece.model", part / "tokenizer" / "spiece.model")  # mmdit reads it
    before = json.loads((pathlib.Path(a.resume) / "shapes_video.json").read_text()) if a.resume else None
    keys = ("size", "seed", "n", "vae_steps", "vae_batch", "vae_lr", "vae_channels", "kl", "decoder_only", "object_weight", "vae_time_budget", "vae_lr_schedule",
            "dit_steps", "batch", "image_frac", "image_batch", "lr", "lr_floor", "lr_schedule", "warmup", "drop", "time_budget", "layers", "heads",
            "patch_size", "time_dim", "t5_dim", "t5_layers", "resume", "vae_from", "text_from", "dit_object_weight",
            "dit_detail_weight", "t_logit_normal",
            "latent_scale", "snr_shift")
    info = {"resumed_from_run": before, **{k: getattr(a, k) for k in keys},
            "vae_steps_done": getattr(a, "vae_steps_done", 0), "dit_steps_done": getattr(a, "dit_steps_done", 0),
            "dit_seconds": getattr(a, "dit_seconds", None), "train_seconds": round(time.time() - a.t0),
            "frames": world.CLIP_FRAMES, "max_text_seq_length": MAX_TEXT_LEN,
            "heldout_pairs": world.HELDOUT_PAIRS, "heldout_motions": world.HELDOUT_MOTIONS}
    (part / "shapes_video.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)
    for m in training:
        m.train()
    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2 ** 20
    log(f"saved {out} ({mb:.2f} MB, DiT step {info['dit_steps_done']})")
    if a.checkpoint_tar:
        tmp_tar = pathlib.Path(a.checkpoint_tar + ".part")
        with tarfile.open(tmp_tar, "w:gz") as tf:
            tf.add(out, arcname=out.name)
        tmp_tar.rename(a.checkpoint_tar)


def heldout_clip_captions(n, seed=0):
    return [world.clip_caption(c) for c in heldout_clips(n, seed)]


def strip(frames_list, path, every=4, scale=1, gap=0):
    """A picture: one row per clip (frames as HxWx3 arrays), frames 0, every, 2 every, ... side by side, each
    enlarged scale x (nearest); gap white pixels between rows, gap // 2 between frames."""
    from PIL import Image
    rows = [[Image.fromarray(np.asarray(f)) for f in frames[::every]] for frames in frames_list]
    w, h = rows[0][0].width * scale, rows[0][0].height * scale
    img = Image.new("RGB", (len(rows[0]) * (w + gap // 2) - gap // 2, len(rows) * (h + gap) - gap), (255, 255, 255))
    for y, row in enumerate(rows):
        for x, f in enumerate(row):
            img.paste(f.resize((w, h), Image.NEAREST), (x * (w + gap // 2), y * (h + gap)))
    img.save(path)


def evaluate(out, a, dev):
    """n held-out captions x 2 seeds with diffusers' CogVideoXPipeline (float32 on the device), scored."""
    import checker
    from diffusers import CogVideoXPipeline
    pipe = CogVideoXPipeline.from_pretrained(out, torch_dtype=torch.float32).to(dev)
    pipe.set_progress_bar_config(disable=True)
    caps = heldout_clip_captions(a.eval, a.seed)
    edir = pathlib.Path(out) / "eval"
    edir.mkdir(exist_ok=True)
    all_frames, all_caps, files = [], [], []
    t0 = time.time()
    for s in (0, 1):
        for i in range(0, len(caps), 32):
            batch = caps[i:i + 32]
            gens = [torch.Generator().manual_seed(clip_seed(s, i + j)) for j in range(len(batch))]
            v = pipe(batch, num_inference_steps=a.eval_steps, guidance_scale=a.cfg, generator=gens, output_type="np",
                     max_sequence_length=MAX_TEXT_LEN).frames
            all_frames += [(f * 255).round().astype(np.uint8) for f in v]
            all_caps += batch
            files += [f"{i + j:04d}_s{s}" for j in range(len(batch))]
    gen_s = time.time() - t0
    results = score_clips_parallel(all_frames, all_caps)
    for r, f in zip(results, files):
        r["file"] = f
    summary = checker.summarize_clips(results)
    summary.update(generate_seconds=round(gen_s, 1), steps=a.eval_steps, cfg=a.cfg)
    strip(all_frames[:16], edir / "strip.png")
    np.savez_compressed(edir / "first16.npz", frames=np.stack(all_frames[:16]))
    (edir / "results.json").write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    log("held-out eval: " + json.dumps(summary))
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--data-cache", help="a .npy of rendered training clips, read if there, else written")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-channels", default="32,64,64", help="VAE block_out_channels; n entries: 2^(n-1)x spatial")
    ap.add_argument("--vae-groups", type=int, default=32, help="VAE norm_num_groups (divides every channel count)")
    ap.add_argument("--vae-time-budget", type=float, default=0)
    ap.add_argument("--vae-lr-schedule", choices=["constant", "steps", "time"], default="constant")
    ap.add_argument("--kl", type=float, default=1e-6)
    ap.add_argument("--decoder-only", action="store_true", help="the VAE stage trains the decoder alone")
    ap.add_argument("--encoder-only", action="store_true", help="the VAE stage trains the encoder alone")
    ap.add_argument("--latent-anchor", type=float, default=0.0,
                    help="with --resume: weight of the encoder's drift from the resumed latents (video_vae.py)")
    ap.add_argument("--object-weight", type=float, default=1.0,
                    help="VAE loss weight of the shape's pixels (and their neighbours) against the background's")
    ap.add_argument("--vae-from", help="train a new DiT and T5 on this saved pipeline's VAE (no VAE stage)")
    ap.add_argument("--text-from", help="with --vae-from: start from this saved pipeline's tokenizer and T5 (new DiT)")
    ap.add_argument("--resume", help="continue from a saved pipeline (with --vae-steps 0 its VAE stays)")
    ap.add_argument("--dit-steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-floor", type=float, default=0.05)
    ap.add_argument("--lr-schedule", choices=["steps", "time"], default="steps")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--drop", type=float, default=0.1, help="caption dropout (to '') for CFG")
    ap.add_argument("--image-frac", type=float, default=0,
                    help="this fraction of the DiT steps trains on first latent frames alone (single images)")
    ap.add_argument("--image-batch", type=int, default=1024, help="the batch of those image steps")
    ap.add_argument("--dit-object-weight", type=float, default=1.0,
                    help="the DiT loss at latent positions of the shape counts this many times")
    ap.add_argument("--latent-scale", type=float, default=1.0,
                    help="a new DiT's latents: the VAE's scaling_factor (1 / the latents' std) times this")
    ap.add_argument("--snr-shift", type=float, help="the scheduler's snr_shift_scale (default: the resumed model's, "
                    "else 3, CogVideoX-2b's; CogVideoX-5b's is 1)")
    ap.add_argument("--dit-detail-weight", type=float, default=0.0,
                    help="add this times the squared error of the prediction's spatial detail (z - its 3x3 mean)")
    ap.add_argument("--t-logit-normal", type=float, help="draw timesteps as sigmoid(N(M, 1)) x 1000, not uniform")
    ap.add_argument("--time-budget", type=float, default=0, help="end the DiT stage after this many seconds")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=3, help="attention heads of 64")
    ap.add_argument("--patch-size", type=int, default=2)
    ap.add_argument("--time-dim", type=int, default=128)
    ap.add_argument("--t5-dim", type=int, default=128)
    ap.add_argument("--t5-layers", type=int, default=2)
    ap.add_argument("--save-dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--checkpoint-every", type=float, default=0, help="save the pipeline every S seconds of DiT")
    ap.add_argument("--checkpoint-tar", help="and write it as this tar.gz each time")
    ap.add_argument("--eval", type=int, default=0, help="then generate this many held-out captions x 2 seeds, score")
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=6.0)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: 32 clips, 2+2 steps, load, generate one")
    ap.add_argument("--recon-n", type=int, default=100, help="evaluation clips the VAE's round trips are scored on")
    ap.add_argument("--render-only", action="store_true", help="render the --n clips into --data-cache, nothing else")
    a = ap.parse_args(argv)
    if a.smoke:  # a stage asked for no VAE (or DiT) steps keeps none: a resumed VAE keeps its latents' scale
        a.n, a.batch, a.vae_batch, a.warmup, a.device = 32, 2, 2, 1, "cpu"
        a.vae_steps, a.dit_steps = min(a.vae_steps, 2), min(a.dit_steps, 2)
    if a.vae_from:
        a.vae_steps = 0
    if not 0 <= a.image_frac < 1:
        ap.error("--image-frac: must be in [0, 1) (clip steps teach the motion)")
    if a.encoder_only and a.decoder_only:
        ap.error("--encoder-only, --decoder-only: give one (neither trains the whole VAE)")
    if a.latent_anchor and (not a.resume or a.decoder_only):
        ap.error("--latent-anchor: only when a resumed encoder trains (--resume, not --decoder-only)")
    if a.resume and a.latent_scale != 1:
        ap.error("--latent-scale: only for a new DiT (its latents' scale is the resumed DiT's)")
    if a.snr_shift is None:  # the resumed model's, else CogVideoX-2b's
        a.snr_shift = (json.loads((pathlib.Path(a.resume) / "scheduler" / "scheduler_config.json").read_text())
                       .get("snr_shift_scale", 3.0) if a.resume else 3.0)
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # the VAE's 3D convolutions: fixed shapes
    dev = torch.device(a.device)
    a.t0 = time.time()
    if a.render_only:
        load_data(a)
        return
    if not a.eval_only:
        vids_np, caps = load_data(a)
        vids = torch.from_numpy(vids_np)
        if dev.type == "cuda":
            vids = vids.to(dev)  # 0.2 MB a clip: all of them on the GPU
        tmp = pathlib.Path(tempfile.mkdtemp())
        parts = build(a, caps, tmp)
        for name, m in zip(("text_encoder", "transformer", "vae"), parts[1:]):
            m.to(dev)
            log(f"{name}: {sum(p.numel() for p in m.parameters()) / 1e6:.3f} M parameters")
        gen = torch.Generator(dev).manual_seed(a.seed)  # VAE batches drawn on the device
        train_vae(parts[3], vids, a, dev, gen)
        train_dit(parts, vids, caps, a, dev, lambda: save(parts, a.out, a, tmp))
        save(parts, a.out, a, tmp)
        shutil.rmtree(tmp)
        log(f"trained in {time.time() - a.t0:.0f} s")
    if a.smoke:
        import checker
        from diffusers import CogVideoXPipeline
        pipe = CogVideoXPipeline.from_pretrained(a.out, torch_dtype=torch.float32)
        cap = "a small red circle moving left on a white background"
        v = pipe(cap, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np",
                 max_sequence_length=MAX_TEXT_LEN).frames[0]
        frames = (v * 255).round().astype(np.uint8)
        strip([frames], pathlib.Path(a.out) / "smoke.png")
        log(f"generated {frames.shape} -> {a.out}/smoke.png; checker: " +
            json.dumps({k: v for k, v in checker.score_clip(list(frames), cap).items() if k != "detected"}))
    if a.eval:
        evaluate(a.out, a, dev)


if __name__ == "__main__":
    main()
