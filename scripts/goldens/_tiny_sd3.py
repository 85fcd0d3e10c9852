"""Builds tiny random-weight SD3 pipelines in the real diffusers folder layout, with tokenizers the
project makes itself (a byte-level BPE vocabulary for the two CLIPs, a sentencepiece unigram model for
T5), so nothing is fetched. Used by the goldens and by the README's demo command.

    build_pipeline(out_dir, variant="sd3" | "sd35m", seed=0) -> StableDiffusion3Pipeline
"""
import json
import pathlib
import random
import tempfile

import torch

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "brown", "grey", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "ring", "cross", "heart", "diamond", "moon"]
PLACES = ["above", "below", "left of", "right of", "next to", "inside", "behind", "in front of"]
EXTRA = ("a photo of an astronaut riding a horse on mars, highly detailed, 4k. the quick brown fox jumps over "
         "the lazy dog! café, naïve, 東京, emoji 🙂 numbers 1 2 3 42 1024. it's a cat's toy; they're here.")


def corpus(n=400, seed=0):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.sample(COLOURS, 2)
        s, t = rng.sample(SHAPES, 2)
        size = rng.choice(["small", "large", "tiny", "big"])
        lines.append(f"a {size} {a} {s} {rng.choice(PLACES)} a {b} {t} on a {rng.choice(COLOURS)} background")
    lines.append(EXTRA)
    return lines


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(folder: pathlib.Path, pad_token: str, num_merges=300, lines=None):
    """CLIP-style vocab: 256 byte symbols, the same with </w>, learned merges, then the two specials.
    The merges are learned on `lines` (default: corpus())."""
    import re
    b2u = bytes_to_unicode()
    base = list(b2u.values())
    vocab = {c: i for i, c in enumerate(base)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(base)})
    words = {}
    for line in (corpus() if lines is None else lines):
        for w in re.findall(r"[a-z]+", line.lower()):
            syms = tuple("".join(b2u[b] for b in ch.encode()) for ch in w)
            syms = syms[:-1] + (syms[-1] + "</w>",)
            words[syms] = words.get(syms, 0) + 1
    merges = []
    for _ in range(num_merges):  # plain BPE training: merge the most frequent adjacent pair
        pairs = {}
        for syms, f in words.items():
            for p in zip(syms, syms[1:]):
                pairs[p] = pairs.get(p, 0) + f
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        new = {}
        for syms, f in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + f
        words = new
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), pad_token=pad_token,
                        model_max_length=77)
    return tok


def write_t5_tokenizer(folder: pathlib.Path, vocab_size=96):
    import sentencepiece as spm
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = pathlib.Path(tmp) / "corpus.txt"
        text.write_text("\n".join(corpus()))
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spiece"), vocab_size=vocab_size,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       num_threads=1, character_coverage=1.0, minloglevel=2)
    (folder / "spiece.vocab").unlink()
    from transformers import T5TokenizerFast
    # from_pretrained converts spiece.model (the constructor's vocab_file path does not, in transformers 5)
    return T5TokenizerFast.from_pretrained(str(folder), extra_ids=0, model_max_length=512)


def randomize(module: torch.nn.Module, gen: torch.Generator, std=0.05):
    """Overwrite every parameter (diffusers zero-inits some output layers) so tests can fail."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + std * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def build_pipeline(out_dir: pathlib.Path, variant: str = "sd3", seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tmp = pathlib.Path(tempfile.mkdtemp())
    tok_l = write_clip_tokenizer(tmp / "tokenizer", pad_token="<|endoftext|>")
    tok_g = write_clip_tokenizer(tmp / "tokenizer_2", pad_token="!")
    tok_t5 = write_t5_tokenizer(tmp / "tokenizer_3")
    vocab = len(tok_l.get_vocab())

    def clip(hidden, act, layers):
        cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=4, max_position_embeddings=77, hidden_act=act, projection_dim=hidden,
                             bos_token_id=tok_l.bos_token_id, eos_token_id=tok_l.eos_token_id, pad_token_id=1)
        m = CLIPTextModelWithProjection(cfg).eval()
        randomize(m, gen, 0.1)
        return m

    text_encoder = clip(32, "quick_gelu", 3)
    text_encoder_2 = clip(32, "gelu", 3)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok_t5), d_model=128, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
    randomize(t5, gen, 0.1)
    # Head size 64 and the VAE's 32 norm groups as in every real SD3: single-file loading infers the
    # config from tensor shapes and cannot see those two.
    tcfg = dict(sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=64, num_attention_heads=2,
                joint_attention_dim=128, caption_projection_dim=128, pooled_projection_dim=64, out_channels=16,
                pos_embed_max_size=24)
    if variant == "sd35m":
        tcfg.update(qk_norm="rms_norm", dual_attention_layers=(0, 1))
    transformer = SD3Transformer2DModel(**tcfg).eval()
    randomize(transformer, gen, 0.08)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=32,
                        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                        use_post_quant_conv=False).eval()
    randomize(vae, gen, 0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                    tokenizer=tok_l, text_encoder_2=text_encoder_2, tokenizer_2=tok_g,
                                    text_encoder_3=t5, tokenizer_3=tok_t5)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; real repos also carry the slow files, which mmdit reads.
    import shutil
    for sub, names in {"tokenizer": ["vocab.json", "merges.txt"], "tokenizer_2": ["vocab.json", "merges.txt"],
                       "tokenizer_3": ["spiece.model"]}.items():
        for n in names:
            shutil.copy(tmp / sub / n, pathlib.Path(out_dir) / sub / n)
    shutil.rmtree(tmp)
    # The pipeline must load back from its folder exactly as users' folders do.
    return StableDiffusion3Pipeline.from_pretrained(out_dir, torch_dtype=torch.float32)
