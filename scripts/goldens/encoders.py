"""Goldens for the text encoders (models/clip_text, models/t5_encoder).

Tiny random CLIPTextModel(WithProjection) and T5EncoderModel models from transformers, saved in the real
folder layout, run in float32 on CPU on fixed token batches. Writes per model NAME/ (the model folder) and
NAME_io.safetensors (inputs and outputs). Also a F8_E4M3 copy of the T5 weights (t5_fp8/, with reference
outputs of the upcast weights) and a sharded copy (t5_sharded/).
"""
import pathlib
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

VOCAB = 1000
BOS, EOS = 998, 999


def clip_ids(lengths, total, pad, eos=EOS, high_word=None):
    """[BOS, random words..., EOS, pad...] rows, like CLIPTokenizer(padding="max_length"). high_word: an
    id above eos put among the words, so pooling at argmax(ids) and at the first EOS differ."""
    g = torch.Generator().manual_seed(sum(lengths) + total)
    rows, mask = [], []
    for n in lengths:
        words = torch.randint(2, min(BOS, eos), (n,), generator=g).tolist()
        if high_word is not None:
            words[n // 2] = high_word
        row = [BOS] + words + [eos]
        mask.append([1] * len(row) + [0] * (total - len(row)))
        rows.append(row + [pad] * (total - len(row)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def run_clip(out, name, model, ids, mask):
    model.eval()
    model.save_pretrained(out / name, safe_serialization=True)
    with torch.no_grad():
        o = model(ids, output_hidden_states=True)
        om = model(ids, attention_mask=mask, output_hidden_states=True)
    t = {
        "input_ids": ids,
        "attention_mask": mask,
        "last_hidden_state": o.last_hidden_state,
        "penultimate": o.hidden_states[-2],
        "masked_last_hidden_state": om.last_hidden_state,
    }
    for i, h in enumerate(o.hidden_states):
        t[f"hidden_states.{i}"] = h
    if hasattr(o, "text_embeds"):
        t["text_embeds"] = o.text_embeds
        # pooled = the hidden state the projection saw; recompute it the way transformers picks the token.
        inner = model.text_model
        with torch.no_grad():
            t["pooler_output"] = inner(ids).pooler_output
    else:
        t["pooler_output"] = o.pooler_output
    save_file({k: v.contiguous().clone() for k, v in t.items()}, str(out / f"{name}_io.safetensors"))


def t5_ids():
    g = torch.Generator().manual_seed(5)
    long = torch.randint(2, 300, (2, 160), generator=g)  # > max_distance: exercises the log buckets
    long[0, 150] = 1  # EOS
    long[0, 151:] = 0  # padding
    long[1, -1] = 1
    mask = (torch.arange(160)[None, :] <= torch.tensor([[150], [159]])).long()
    return long, mask


def run_t5(model, ids, mask):
    with torch.no_grad():
        return model(ids).last_hidden_state, model(ids, attention_mask=mask).last_hidden_state


def main(out_dir):
    out = pathlib.Path(out_dir)
    torch.manual_seed(0)

    # CLIP-L-like: quick_gelu, projection, legacy eos_token_id == 2 (pooled at the highest token id),
    # padded with EOS like the CLIP-L tokenizer.
    cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=24, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    ids, mask = clip_ids([5, 20, 75], 77, pad=EOS)
    run_clip(out, "clip_l", CLIPTextModelWithProjection(cfg), ids, mask)

    # bigG-like: gelu, projection, eos_token_id != 2 (pooled at the first EOS), padded with 0. Its EOS
    # (900) is not the highest id in the rows, so the legacy argmax rule would pick another token.
    cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=40, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=5, max_position_embeddings=77, hidden_act="gelu",
                         projection_dim=32, bos_token_id=BOS, eos_token_id=900, pad_token_id=0)
    ids, mask = clip_ids([3, 9, 18], 20, pad=0, eos=900, high_word=950)
    run_clip(out, "clip_g", CLIPTextModelWithProjection(cfg), ids, mask)

    # CLIPTextModel without projection; pad == eos, so only the first EOS is the pooled token.
    cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, hidden_act="quick_gelu",
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    ids, mask = clip_ids([4, 12], 16, pad=EOS)
    run_clip(out, "clip_plain", CLIPTextModel(cfg), ids, mask)

    # T5 v1.1 encoder.
    cfg = T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                   relative_attention_max_distance=128, is_encoder_decoder=False, use_cache=False)
    t5 = T5EncoderModel(cfg).eval()
    t5.save_pretrained(out / "t5", safe_serialization=True)
    ids, mask = t5_ids()
    short = ids[:, :7].clone()
    last, masked = run_t5(t5, ids, mask)
    with torch.no_grad():
        last_short = t5(short).last_hidden_state
    # float16 as from_pretrained gives it (wo kept in float32, f16 clamps).
    t5h = T5EncoderModel.from_pretrained(out / "t5", dtype=torch.float16).eval()
    with torch.no_grad():
        last_f16 = t5h(ids).last_hidden_state.float()
    save_file({"input_ids": ids, "attention_mask": mask, "last_hidden_state": last,
               "masked_last_hidden_state": masked, "short_input_ids": short, "short_last_hidden_state": last_short,
               "f16_last_hidden_state": last_f16},
              str(out / "t5_io.safetensors"))

    # Sharded copy of the same weights.
    shutil.rmtree(out / "t5_sharded", ignore_errors=True)
    t5.save_pretrained(out / "t5_sharded", safe_serialization=True, max_shard_size="20KB")

    # F8_E4M3 copy, with the outputs of its upcast weights.
    shutil.rmtree(out / "t5_fp8", ignore_errors=True)
    (out / "t5_fp8").mkdir()
    shutil.copy(out / "t5" / "config.json", out / "t5_fp8" / "config.json")
    sd = load_file(str(out / "t5" / "model.safetensors"))
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
    save_file(fp8, str(out / "t5_fp8" / "model.safetensors"))
    up = T5EncoderModel(cfg).eval()
    up.load_state_dict({k: v.float() for k, v in fp8.items()}, strict=False)
    up.encoder.embed_tokens.weight = up.shared.weight
    last8, _ = run_t5(up, ids, mask)
    save_file({"input_ids": ids, "last_hidden_state": last8}, str(out / "t5_fp8_io.safetensors"))
