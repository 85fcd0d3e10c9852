"""Goldens for the CLIP and T5 tokenizers (models/clip_tokenizer.cpp, models/t5_tokenizer.cpp).

Runs transformers' CLIPTokenizer on the SD3.5 CLIP-L and bigG folders and T5TokenizerFast on the SD3.5
T5 folder (spiece.model + tokenizer.json) and FLUX.1-dev's (tokenizer.json only), from the shared
model layouts, on the prompts below; writes OUT/tokenizers.json:
  {"prompts": [...], "cases": [{"name", "kind", "folder", "max_length", "ids": [[...] per prompt]}]}
"""
import json
import os
import pathlib
import sys

# make_goldens.py puts scripts/goldens/ on sys.path, where this file would shadow the `tokenizers`
# package that transformers imports: import transformers without that entry.
_here = str(pathlib.Path(__file__).resolve().parent)
_saved = list(sys.path)
sys.path[:] = [p for p in sys.path if p not in ("", ".", _here) and pathlib.Path(p).resolve() != pathlib.Path(_here)]
try:
    from transformers import CLIPTokenizer, T5TokenizerFast
finally:
    sys.path[:] = _saved

LONG = ("a highly detailed photograph of a majestic lion standing on a rocky cliff at sunset, golden hour "
        "lighting, dramatic clouds in the sky, the savanna stretching out below with acacia trees and a herd "
        "of zebras grazing peacefully, shot on a Canon EOS R5 with a 70-200mm lens, f/2.8, award-winning "
        "wildlife photography, ultra realistic, 8k resolution, sharp focus, bokeh background")
PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT",
    "Hello, world! How are you?",
    "It's a dog's life; they're here, we've seen it, I'm sure you'll agree, he'd say.",
    "rock'n'roll 'quoted' \"double quoted\" don't",
    "1234567890 3.14159 -42 1,000,000 2nd 100%",
    "café naïve résumé façade Ångström Über straße",
    "cafe\u0301 nai\u0308ve (decomposed accents)",
    "ΑΒΓ αβγ Ελληνικά ΟΔΟΣ",
    "Москва — столица России",
    "東京タワーの夜景、美しい桜",
    "北京烤鸭 한국어 텍스트 ภาษาไทย",
    "emoji 😀🎉🚀 and 👍🏽 and 👨‍👩‍👧 and 🇯🇵",
    "multiple   spaces    here",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\r carriage returns",
    "\t\n  \n",
    "MiXeD CaSe WoRdS aNd ACRONYMS like NASA",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;",
    "<b>html tags</b> <div class=\"x\">",
    "https://www.example.com/path?query=1&x=y#frag and user@example.com",
    "a cat <|endoftext|> a dog",
    "<|startoftext|>start <|ENDOFTEXT|> upper",
    "</s> and <pad> and <unk> and <extra_id_0> sentinel",
    "hello!!! what??? ...ellipsis… — em-dash – en-dash",
    "!!!",
    "hello!world",
    "punctuation: ;:,.(){}[]<>@#$%^&*_+=|\\/~`",
    "underscores_and-hyphens and CamelCaseWords",
    "ﬁ ligature ① circled ＦＵＬＬＷＩＤＴＨ ｶﾀｶﾅ ™ ½ x²",
    "non\u00a0breaking\u2009thin\u3000ideographic spaces",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "İstanbul ǅemal ﬃ ẞ",
    "▁already▁has▁metaspace ▁",
    "numbers123mixed456 v1.2.3 4k 1080p",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    LONG,
    " ".join([LONG] * 8),
    "a photo of a cat. " * 60,
    "word " * 600,
    "control\x01chars\x07and\x7fdel",
    "°C ± µm Ω ≈ ∞ → ← ♥ ★",
    "Ｈｅｌｌｏ Ｗｏｒｌｄ",
    "s̈ Z̤̈ combining ñ ǹ",
]

# Invalid UTF-8 (hex): the C++ tokenizers must give the ids of bytes.decode("utf-8", errors="replace").
INVALID_UTF8 = [
    "ff", "80", "c3", "c328", "e282", "e28228", "f09f98", "f09f9828", "eda080", "c0af", "e080af",
    "f4908080", "f8888080af", "61fe62ff63", "636166c3a9c3", "00", "610062", "e29c93e2", "c3a9cc",
    "cc81", "20cc81", "f09f918df09f8f",
]

LAYOUT = pathlib.Path(os.environ.get("MMDIT_SHARED_DIR",
                                     pathlib.Path(__file__).resolve().parents[3] / "shared")) / "model-layouts"
CASES = [
    ("clip_l", "clip", "stabilityai/stable-diffusion-3.5-large/tokenizer", [77]),
    ("clip_g", "clip", "stabilityai/stable-diffusion-3.5-large/tokenizer_2", [77]),
    ("t5_spiece", "t5", "stabilityai/stable-diffusion-3.5-large/tokenizer_3", [256, 77]),
    ("t5_json", "t5", "black-forest-labs/FLUX.1-dev/tokenizer_2", [256, 77]),
]


def main(out_dir):
    out_dir = pathlib.Path(out_dir)
    cases = []
    for name, kind, folder, lengths in CASES:
        path = LAYOUT / folder
        tok = CLIPTokenizer.from_pretrained(path) if kind == "clip" else T5TokenizerFast.from_pretrained(path)
        for n in lengths:
            def enc(text):
                return tok(text, padding="max_length", max_length=n, truncation=True)["input_ids"]
            cases.append({"name": f"{name}_{n}", "kind": kind, "folder": folder, "max_length": n,
                          "ids": [enc(p) for p in PROMPTS],
                          "invalid_utf8_ids": [enc(bytes.fromhex(h).decode("utf-8", errors="replace"))
                                               for h in INVALID_UTF8]})
    (out_dir / "tokenizers.json").write_text(
        json.dumps({"prompts": PROMPTS, "invalid_utf8": INVALID_UTF8, "cases": cases}, ensure_ascii=True))


if __name__ == "__main__":
    main(sys.argv[1])
