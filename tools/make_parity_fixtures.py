#!/usr/bin/env python3
"""Build the parity fixtures that pin cliptag-model to Hugging Face transformers.

Two modes:

* ``--out DIR`` (default mode) writes the small committed fixture set:
  the CLIP BPE tokenizer with a tokenisation corpus, a handful of photos,
  two tiny random-weight CLIP models with the reference outputs of
  transformers, and reconstructions of the published ``config.json`` files
  of the OpenAI checkpoints.

* ``--full {vit-b-32,vit-b-16,vit-l-14} --out DIR`` writes one model with the
  real shapes (random weights) in the layout of the published checkpoint,
  plus references, reading photos and tokenizer from ``--fixtures``.

Everything is seeded; running the script twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import transformers
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

CONTEXT_LENGTH = 77
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def as_tensor(out) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4 and an output object in 5."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP use for raw bytes, in byte order
    of the printable ranges first, then the remaining bytes mapped above 255."""
    keep = set(range(ord("!"), ord("~") + 1))
    keep |= set(range(ord("\u00a1"), ord("\u00ac") + 1))
    keep |= set(range(ord("\u00ae"), ord("\u00ff") + 1))
    printable = [b for b in range(256) if b in keep]
    others = [b for b in range(256) if b not in keep]
    symbols = [chr(b) for b in printable]
    symbols += [chr(256 + i) for i in range(len(others))]
    return symbols


def find_bpe_file() -> Path:
    # Only the data file is needed; importing open_clip would pull in torchvision.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open-clip-torch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise SystemExit(f"missing {path}")
    return path


def build_tokenizer(out: Path) -> CLIPTokenizerFast:
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.decompress(find_bpe_file().read_bytes()).decode("utf-8").split("\n")
    # CLIP keeps 49152 - 256 - 2 merges, skipping the header line.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    assert len(merges) == 48894, len(merges)
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [SOT, EOT]
    assert len(tokens) == 49408 and len(set(tokens)) == 49408
    vocab = {tok: i for i, tok in enumerate(tokens)}

    # start from a clean directory so stale files never leak into the fixture
    for name in TOKENIZER_FILES + ("added_tokens.json",):
        (out / name).unlink(missing_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    tok = CLIPTokenizerFast.from_pretrained(str(out), model_max_length=CONTEXT_LENGTH)
    tok.save_pretrained(str(out))
    # save_pretrained may rewrite the vocabulary files; put back the canonical ones
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # Compact tokenizer.json (same content, no pretty printing) to keep the fixture small.
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    (out / "tokenizer.json").write_text(
        json.dumps(tj, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )

    tok = CLIPTokenizerFast.from_pretrained(str(out))
    ids = tok("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
    assert tok.pad_token_id == 49407 and tok.bos_token_id == 49406
    return tok


def corpus_strings() -> list[str]:
    """A hand-written tokenisation corpus covering the awkward corners."""
    rng = random.Random(20261130)
    s: list[str] = []

    # plain English prompts
    subjects = ["cat", "dog", "astronaut", "cup of coffee", "rocket", "motorcycle", "tabby kitten",
                "red bicycle", "mountain lake", "city skyline", "bowl of ramen", "golden retriever"]
    templates = ["a photo of a {}.", "a blurry photo of a {}", "an origami {}", "a close-up photo of the {}",
                 "a painting of a {}", "itap of a {}", "a black and white photo of a {}.",
                 "a sculpture of a {}", "a low resolution photo of the {}", "a tattoo of the {}"]
    s += ["a photo of a cat", "a photo of a dog", "a diagram", "a dog", "a cat", "photo"]
    for t in templates:
        for subj in rng.sample(subjects, 3):
            s.append(t.format(subj))
    s += [
        "A man riding a horse on a beach at sunset",
        "two people playing chess in a park",
        "the quick brown fox jumps over the lazy dog",
        "an aerial view of a winding river through a forest",
        "screenshot of a spreadsheet",
        "a meme with white impact font text",
        "a selfie taken in a bathroom mirror",
        "a pixel art sprite of a knight",
        "a watercolor painting of a lighthouse in a storm",
        "hello world",
    ]

    # case
    s += ["A PHOTO OF A CAT", "A Photo Of A Cat", "aPhOtO oF a CaT", "NASA", "iPhone 15 Pro Max", "McDonald's",
          "HELLO, WORLD!", "İstanbul", "ΟΔΟΣ", "ẞ GROSSES", "ǅ ǈ ǋ titlecase digraphs"]

    # accents, ligatures, special latin
    s += ["café", "naïve", "Ångström", "straße", "crème brûlée", "jalapeño", "façade", "smørrebrød",
          "Zürich", "Kraków", "œuvre", "æsir", "ﬁnance ﬂow (ligatures)", "Ærøskøbing", "déjà vu", "piñata"]

    # combining marks
    s += ["cafe\u0301", "e\u0301", "\u0301", "n\u0303", "a\u0308a\u0308", "Zu\u0308rich",
          "o\u0301\u0302\u0303 stacked", "\u1100\u1161\u11a8 decomposed hangul", "q\u0307\u0323"]

    # CJK
    s += ["一只猫的照片", "猫", "東京タワーの写真", "ひらがな カタカナ 漢字", "ｶﾀｶﾅ半角", "고양이 사진", "안녕하세요 세계",
          "中文 English 混合", "日本語のテキストと English words", "北京欢迎你！", "　全角スペース　",
          "𠀋𠂉 (CJK extension B)", "ラーメン🍜が好き"]

    # emoji
    s += ["🐱", "🐶🐱🐭🐹", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇯🇵🇺🇸", "1️⃣2️⃣3️⃣", "a photo of a 🐈",
          "🧑🏿‍🚀 astronaut", "👩🏻‍💻 coding", "🔥🔥🔥 fire", "😀😃😄😁😆😅😂🤣", "☕ coffee", "🚀 to the moon"]

    # punctuation runs
    s += ["!!!", "?!?!", "...", "…", "---", "***", "a--b", "well... okay?!", "(parenthesised)", "[brackets] {braces}",
          "#hashtag @mention", "C++ & C#", "e-mail: someone@example.com", "https://example.com/a?b=c&d=e#frag",
          "~/path/to/file.txt", "50% off!!!", "$19.99", "€5,00", "¥1000", "2 + 2 = 4", "a/b\\c|d", "«guillemets»",
          "„German quotes“", "—em dash— –en dash–", "¡Hola! ¿Qué tal?"]

    # apostrophes and contractions
    s += ["it's", "don't", "we're", "they've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "cat's toy",
          "the dogs' bowls", "'s", "'t alone", "rock'n'roll", "y'all'd've", "it’s curly", "don’t curly",
          "‘single’ and “double” curly quotes", "'quoted'", "\"double quoted\"", "can''t", "o'clock",
          "let's go", "she'll", "we'd"]

    # numbers and dates
    s += ["3.14", "3.14159265358979", "1,000,000", "2026-11-30", "12:30:45", "1e-10", "-42", "+7", "0x1F",
          "007", "1st 2nd 3rd 4th", "v1.2.3", "100km/h", "24/7", "2026", "٣ Arabic-Indic digit", "३ Devanagari digit",
          "½ ¾ ⅓ fractions", "²³ superscripts", "①②③ circled", "Ⅷ roman"]

    # whitespace
    s += ["", " ", "   ", "\t", "\n", "\r\n", " \t \n ", "a  b", "a   photo    of  a   cat", "a\tphoto\tof\ta\tcat",
          "line one\nline two\nline three", "  leading spaces", "trailing spaces   ", "\n\nnewlines around\n\n",
          "\u00a0non\u00a0breaking\u00a0spaces\u00a0", "ideographic\u3000space", "thin\u2009space",
          "line\u2028separator", "para\u2029separator", "zero\u200bwidth\u200bspace", "\ufeffbyte order mark",
          "tabs\t\t\tand  spaces  \n mixed"]

    # HTML-ish
    s += ["<b>bold</b> text", "<div class=\"x\">hi</div>", "&amp; &lt; &gt; &quot;", "&nbsp;entity",
          "<img src=\"cat.jpg\" alt=\"a cat\"/>", "<!-- comment -->", "a &lt;tag&gt; literally",
          "<|startoftext|>", "<|endoftext|>", "a photo <|endoftext|> of a cat", "<|endoftext|><|endoftext|>",
          "<|notatoken|>", "<|startoftext|>hello"]

    # mixed scripts
    s += ["Привет, мир", "фотография кошки", "Ελληνικά γράμματα", "φωτογραφία μιας γάτας", "مرحبا بالعالم",
          "صورة قطة", "שלום עולם", "תמונה של חתול", "नमस्ते दुनिया", "बिल्ली की तस्वीर", "สวัสดีชาวโลก",
          "ภาพถ่ายของแมว", "Հայերեն", "ქართული", "አማርኛ", "ᚠᚢᚦᚨᚱᚲ runes", "Tiếng Việt có dấu",
          "Cyrillic кот and Latin cat", "mixed: кот γάτα قطة חתול बिल्ली แมว 猫 고양이"]

    # control characters
    s += ["null\x00byte", "bell\x07", "\x1b[31mred\x1b[0m", "tab\x0bvertical", "form\x0cfeed", "del\x7f",
          "\x01\x02\x03", "c1\x85control", "soft\u00adhyphen", "rtl\u202emark", "zwj\u200djoiner",
          "private\ue000use", "replacement\ufffdchar"]

    # fullwidth forms
    s += ["ＡＢＣ", "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "１２３４５", "！？（）", "Ｈｅｌｌｏ，ｗｏｒｌｄ！", "ｃａｔ"]

    # long strings
    s.append("a photo of " + ", ".join(f"{n} cats" for n in range(1, 40)))
    s.append(" ".join(["the quick brown fox jumps over the lazy dog."] * 120))
    s.append("supercalifragilisticexpialidocious" * 8)
    s.append("a" * 300)
    s.append("猫" * 120)
    s.append("🐱" * 60)
    s.append(" ".join(rng.choice(subjects) for _ in range(90)))
    s.append(("word " * 75).strip())
    s.append(("word " * 76).strip())
    s.append(("word " * 74).strip())
    s.append("x," * 100)

    # random combinations of the above building blocks
    pieces = ["cat", "CAFÉ", "🐱", "猫", "it's", "3.14", "  ", "\t", "!!", "кот", "γάτα", "e\u0301", "ＡＢＣ", "<b>",
              "👍🏽", "don’t", "1,000", "\n"]
    for _ in range(24):
        s.append("".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(2, 8))))

    seen: set[str] = set()
    out = []
    for text in s:
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def write_corpus(tok: CLIPTokenizerFast, tok_dir: Path) -> None:
    from tokenizers import Tokenizer  # noqa: PLC0415

    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    cases = []
    for text in corpus_strings():
        full = tok(text, truncation=False, verbose=False)["input_ids"]
        trunc = tok(text, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]
        assert raw.encode(text).ids == full, text
        assert len(trunc) <= CONTEXT_LENGTH and trunc[-1] == 49407 and trunc[0] == 49406
        cases.append({"text": text, "ids": full, "truncated_ids": trunc})
    assert len(cases) >= 220, len(cases)
    long = [c for c in cases if len(c["ids"]) > CONTEXT_LENGTH]
    assert len(long) >= 3 and max(len(c["ids"]) for c in cases) > 1000
    obj = {"context_length": CONTEXT_LENGTH, "cases": cases}
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    # one case per line keeps diffs readable
    text = text.replace(',{"text":', ',\n{"text":')
    (tok_dir / "corpus.json").write_text(text + "\n", encoding="utf-8")
    log(f"corpus: {len(cases)} cases, {len(long)} longer than {CONTEXT_LENGTH}")


# --------------------------------------------------------------------------
# photos
# --------------------------------------------------------------------------

PHOTOS_LICENSE = """\
# Photos

All photos come from the sample data shipped with scikit-image
(`skimage/data/`, https://scikit-image.org), version {skimage}. Some are
resized, cropped or re-encoded with Pillow by `tools/make_parity_fixtures.py`;
the files in this directory are the fixtures as used by the tests.

| file | source | changes | licence (per scikit-image's data README) |
|------|--------|---------|-------------------------------------------|
| chelsea.png | chelsea.png, "Chelsea the cat" | none (byte copy) | CC0 by the photographer (Stefan van der Walt) |
| rocket.jpg | rocket.jpg, launch of DSCOVR on Falcon 9 | none (byte copy of the original JPEG) | captured by SpaceX and released into the public domain |
| astronaut.png | astronaut.png, Eileen Collins (NASA Great Images) | resized 512x512 to 256x256 (LANCZOS) | no known copyright restrictions, public domain |
| astronaut_tall.jpg | astronaut.png | 240x512 crop (box 136,0,376,512) of the original, JPEG quality 90 | as astronaut.png |
| coffee.png | coffee.png, coffee cup, courtesy of Pikolo Espresso Bar | resized 600x400 to 450x300 (LANCZOS) | CC0 by the photographer (Rachel Michetti) |
| coffee_small.png | coffee.png | 150x97 crop (box 225,150,375,247) of the 600x400 original, to cover upscaling | as coffee.png |

The licence notes are those given in the docstrings of `skimage.data`
(`skimage/data/_fetchers.py`); scikit-image itself is BSD-3-Clause licensed.
"""


def skimage_data_dir() -> Path:
    import skimage  # noqa: PLC0415

    return Path(skimage.__file__).parent / "data"


def save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", optimize=False, compress_level=9)


def build_photos(out: Path) -> None:
    import skimage  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    src = skimage_data_dir()
    shutil.copyfile(src / "chelsea.png", out / "chelsea.png")
    shutil.copyfile(src / "rocket.jpg", out / "rocket.jpg")
    with Image.open(src / "astronaut.png") as im:
        rgb = im.convert("RGB")
        save_png(rgb.resize((256, 256), Image.Resampling.LANCZOS), out / "astronaut.png")
        # a tall JPEG written by Pillow (baseline, 4:2:0 chroma subsampling)
        rgb.crop((136, 0, 376, 512)).save(
            out / "astronaut_tall.jpg", format="JPEG", quality=90, optimize=False, progressive=False
        )
    with Image.open(src / "coffee.png") as im:
        rgb = im.convert("RGB")
        save_png(rgb.resize((450, 300), Image.Resampling.LANCZOS), out / "coffee.png")
        save_png(rgb.crop((225, 150, 375, 247)), out / "coffee_small.png")
    (out / "LICENSE.md").write_text(PHOTOS_LICENSE.format(skimage=skimage.__version__), encoding="utf-8")


def list_photos(photo_dir: Path) -> list[Path]:
    photos = sorted(p for p in photo_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not photos:
        raise SystemExit(f"no photos in {photo_dir}")
    return photos


# --------------------------------------------------------------------------
# published config.json files (reconstructed, there is no network here)
# --------------------------------------------------------------------------

GENERIC_4_16 = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "architectures": None,
    "attention_dropout": 0.0,
    "bad_words_ids": None,
    "bos_token_id": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "dropout": 0.0,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "eos_token_id": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "hidden_act": "quick_gelu",
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "layer_norm_eps": 1e-05,
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "pad_token_id": None,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "transformers_version": "4.16.0.dev0",
    "use_bfloat16": False,
}

# keys that later 4.x releases added to every serialised PretrainedConfig
GENERIC_4_21_EXTRA = {
    "exponential_decay_length_penalty": None,
    "tf_legacy_loss": False,
    "typical_p": 1.0,
}

HUB_SHAPES = {
    # name: (text hidden, text mlp, text layers, text heads,
    #        vision hidden, vision mlp, vision layers, vision heads, patch, image, projection)
    "clip-vit-base-patch32": (512, 2048, 12, 8, 768, 3072, 12, 12, 32, 224, 512),
    "clip-vit-base-patch16": (512, 2048, 12, 8, 768, 3072, 12, 12, 16, 224, 512),
    "clip-vit-large-patch14": (768, 3072, 12, 12, 1024, 4096, 24, 16, 14, 224, 768),
    "clip-vit-large-patch14-336": (768, 3072, 12, 12, 1024, 4096, 24, 16, 14, 336, 768),
}

FULL_MODELS = {
    "vit-b-32": "clip-vit-base-patch32",
    "vit-b-16": "clip-vit-base-patch16",
    "vit-l-14": "clip-vit-large-patch14",
}


def hub_config(name: str) -> tuple[dict, str]:
    """Return (config dict, serialised text) mimicking openai/<name>/config.json."""
    th, ti, tl, tn, vh, vi, vl, vn, patch, image, proj = HUB_SHAPES[name]
    newer = name.endswith("-336")
    generic = dict(GENERIC_4_16)
    if newer:
        generic.update(GENERIC_4_21_EXTRA)
        generic["transformers_version"] = "4.21.3"

    text = dict(generic)
    text.update({
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        "hidden_size": th, "intermediate_size": ti, "num_hidden_layers": tl, "num_attention_heads": tn,
        "max_position_embeddings": 77, "model_type": "clip_text_model", "projection_dim": proj,
        "vocab_size": 49408,
    })
    vision = dict(generic)
    vision.update({
        "hidden_size": vh, "intermediate_size": vi, "num_hidden_layers": vl, "num_attention_heads": vn,
        "image_size": image, "patch_size": patch, "model_type": "clip_vision_model", "projection_dim": proj,
    })
    if newer:
        vision["num_channels"] = 3
    text = dict(sorted(text.items()))
    vision = dict(sorted(vision.items()))

    cfg: dict = {}
    if name == "clip-vit-base-patch32":
        cfg["_name_or_path"] = "openai/clip-vit-base-patch32"
    elif name == "clip-vit-large-patch14":
        cfg["_name_or_path"] = "clip-vit-large-patch14/"
    elif name == "clip-vit-base-patch16":
        cfg["_name_or_path"] = "openai/clip-vit-base-patch16"
    cfg.update({
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": proj,
        "text_config": text,
    })
    if name == "clip-vit-base-patch32":
        # the oldest file: no overriding dicts and no top-level torch_dtype
        cfg["text_config_dict"] = None
        cfg["transformers_version"] = None
        cfg["vision_config"] = vision
        cfg["vision_config_dict"] = None
    else:
        cfg["text_config_dict"] = {
            "hidden_size": th, "intermediate_size": ti, "num_attention_heads": tn, "num_hidden_layers": tl,
            "projection_dim": proj,
        }
        cfg["torch_dtype"] = "float32"
        cfg["transformers_version"] = None
        cfg["vision_config"] = vision
        vdict = {
            "hidden_size": vh, "intermediate_size": vi, "num_attention_heads": vn, "num_hidden_layers": vl,
            "patch_size": patch, "projection_dim": proj,
        }
        if image != 224:
            vdict["image_size"] = image
        cfg["vision_config_dict"] = dict(sorted(vdict.items()))

    if name == "clip-vit-base-patch32":
        # The published file lists projection_dim right after prefix (hand edited),
        # and writes the vision one with a space before the colon.
        for sub in ("text_config", "vision_config"):
            items = [(k, v) for k, v in cfg[sub].items() if k != "projection_dim"]
            at = [k for k, _ in items].index("prefix") + 1
            items.insert(at, ("projection_dim", proj))
            cfg[sub] = dict(items)
        serialised = json.dumps(cfg, indent=2)
        head, sep, tail = serialised.partition('"vision_config": {')
        tail = tail.replace(f'"projection_dim": {proj},', f'"projection_dim" : {proj},', 1)
        serialised = head + sep + tail
    else:
        serialised = json.dumps(cfg, indent=2)
    return cfg, serialised + "\n"


def hub_preprocessor(image: int) -> str:
    """The legacy CLIPFeatureExtractor preprocessor_config.json of the OpenAI repos."""
    obj = {
        "crop_size": image,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_MEAN,
        "image_std": OPENAI_STD,
        "resample": 3,
        "size": image,
    }
    return json.dumps(obj, indent=2) + "\n"


def transformers_view(cfg: CLIPConfig) -> dict:
    t, v = cfg.text_config, cfg.vision_config
    return {
        "text": {
            "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
            "max_position_embeddings": t.max_position_embeddings, "vocab_size": t.vocab_size,
            "eos_token_id": t.eos_token_id, "bos_token_id": t.bos_token_id, "pad_token_id": t.pad_token_id,
            "hidden_act": t.hidden_act, "layer_norm_eps": t.layer_norm_eps,
        },
        "vision": {
            "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
            "hidden_act": v.hidden_act, "layer_norm_eps": v.layer_norm_eps,
            "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": v.num_channels,
        },
        "projection_dim": cfg.projection_dim,
        "logit_scale_init_value": cfg.logit_scale_init_value,
    }


def processor_view(proc: CLIPImageProcessorPil) -> dict:
    return {
        "size": {k: v for k, v in dict(proc.size).items() if v is not None},
        "crop_size": {k: v for k, v in dict(proc.crop_size).items() if v is not None},
        "resample": int(proc.resample),
        "do_resize": proc.do_resize, "do_center_crop": proc.do_center_crop,
        "do_rescale": proc.do_rescale, "rescale_factor": proc.rescale_factor,
        "do_normalize": proc.do_normalize,
        "image_mean": list(proc.image_mean), "image_std": list(proc.image_std),
        "do_convert_rgb": proc.do_convert_rgb,
    }


def build_hf_configs(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    expected: dict = {}
    for name, shape in HUB_SHAPES.items():
        _, text = hub_config(name)
        fname = f"{name}.config.json"
        (out / fname).write_text(text, encoding="utf-8")
        cfg_a = CLIPConfig.from_dict(json.loads(text))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(text, encoding="utf-8")
            cfg_b = CLIPConfig.from_pretrained(tmp)
        view = transformers_view(cfg_b)
        assert view == transformers_view(cfg_a), name
        th, ti, tl, tn, vh, vi, vl, vn, patch, image, proj = shape
        got = (view["text"]["hidden_size"], view["text"]["intermediate_size"], view["text"]["num_hidden_layers"],
               view["text"]["num_attention_heads"], view["vision"]["hidden_size"],
               view["vision"]["intermediate_size"], view["vision"]["num_hidden_layers"],
               view["vision"]["num_attention_heads"], view["vision"]["patch_size"], view["vision"]["image_size"],
               view["projection_dim"])
        assert got == shape, (name, got, shape)
        expected[fname] = view
    for image in (224, 336):
        fname = f"preprocessor_config.legacy-{image}.json"
        (out / fname).write_text(hub_preprocessor(image), encoding="utf-8")
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(out / fname, Path(tmp) / "preprocessor_config.json")
            proc = CLIPImageProcessorPil.from_pretrained(tmp)
        view = processor_view(proc)
        assert view["size"] == {"shortest_edge": image} and view["crop_size"] == {"height": image, "width": image}
        expected[fname] = view
    expected["_note"] = (
        "Values as read by transformers " + transformers.__version__
        + " (CLIPConfig.from_pretrained / CLIPImageProcessorPil.from_pretrained). "
        "Where text_config_dict is present, transformers rebuilds the text config from it with "
        "CLIPTextConfig defaults, which replaces eos_token_id 2 by 49407."
    )
    write_json(out / "expected.json", expected)


# --------------------------------------------------------------------------
# models and references
# --------------------------------------------------------------------------

PROMPTS = [
    "a photo of a cat",
    "a photo of a dog",
    "an astronaut in a white spacesuit",
    "a cup of coffee on a wooden table",
    "a rocket launching into the sky",
    "a red motorcycle parked outside",
    "",
    "一只猫 🐱 고양이 ねこ 👨‍👩‍👧‍👦",
    "A PHOTO OF A CAT!!!   with    extra\tspaces\n",
    "it's a café's naïve Ångström — “quoted”",
    "a photo of " + ", ".join(f"{n} small striped tabby cats" for n in range(1, 25)),
    "<b>bold</b> &amp; 3.14 1,000,000 2026-11-30",
]


def perturb(model: CLIPModel, seed: int) -> None:
    """Give every bias and LayerNorm a non-trivial value so forgetting one is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod in sorted(model.named_modules(), key=lambda kv: kv[0]):
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.add_(torch.randn(mod.weight.shape, generator=g) * 0.1)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.05)
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.05)
        vis = model.vision_model.embeddings
        vis.position_embedding.weight.add_(torch.randn(vis.position_embedding.weight.shape, generator=g) * 0.02)


def new_model(cfg: CLIPConfig, seed: int) -> CLIPModel:
    torch.manual_seed(seed)
    model = CLIPModel(cfg).to(torch.float32)
    perturb(model, seed + 1)
    return model.eval()


def load_images(photos: list[Path]) -> list[Image.Image]:
    images = []
    for p in photos:
        with Image.open(p) as im:
            im.load()
            images.append(im.copy())
    return images


def documented_preprocess(img: Image.Image, proc: CLIPImageProcessorPil) -> np.ndarray:
    """Re-derive CLIPImageProcessorPil's output from the written-down recipe.

    Kept as an executable specification for the Rust port: the script asserts
    that it is bit-identical to transformers on every fixture photo.
    """
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        rgb = img.convert("RGB")
    shortest = proc.size["shortest_edge"]
    crop_h, crop_w = proc.crop_size["height"], proc.crop_size["width"]
    w, h = rgb.size
    # float64 (shortest * long) / short, truncated toward zero
    if w <= h:
        new_w, new_h = shortest, int(shortest * h / w)
    else:
        new_w, new_h = int(shortest * w / h), shortest
    arr = np.asarray(rgb.resize((new_w, new_h), Image.Resampling.BICUBIC))  # uint8 HWC
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    assert top >= 0 and left >= 0
    arr = arr[top : top + crop_h, left : left + crop_w]
    x = arr.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(proc.image_mean, dtype=np.float32)) / np.asarray(proc.image_std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def compute_references(model_dir: Path, photos: list[Path], tok: CLIPTokenizerFast, extra_meta: dict,
                       ref_dir: Path | None = None, prompts: list[str] | None = None) -> None:
    """Reload the saved model from disk and record the outputs of transformers in
    ref_dir (default: the model directory)."""
    ref_dir = ref_dir or model_dir
    prompts = prompts or PROMPTS
    model = CLIPModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    proc = CLIPImageProcessorPil.from_pretrained(str(model_dir))
    images = load_images(photos)

    tensors: dict[str, torch.Tensor] = {}
    pix = []
    for path, img in zip(photos, images):
        pv = proc(images=img, return_tensors="pt")["pixel_values"].to(torch.float32)
        assert pv.shape[0] == 1 and pv.shape[1] == 3
        assert np.array_equal(documented_preprocess(img, proc), pv[0].numpy()), path.name
        # CLIPImageProcessor's pixel values are 8-bit pixels rescaled and normalized in
        # float32; store the bytes (a quarter of the size) and check that the documented
        # formula turns them back into exactly what transformers returned.
        mean = torch.tensor(proc.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(proc.image_std, dtype=torch.float32)[:, None, None]
        u8 = torch.round((pv[0] * std + mean) * 255.0).clamp(0, 255).to(torch.uint8)
        back = (u8.to(torch.float32) / 255.0 - mean) / std
        assert torch.equal(back, pv[0]), (path.name, (back - pv[0]).abs().max())
        tensors[f"pixels_u8.{path.stem}"] = u8[None].contiguous()
        pix.append(pv)
    pixel_values = torch.cat(pix, 0)

    enc = tok(prompts, padding="max_length", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt")
    input_ids = enc["input_ids"].to(torch.int64)
    assert input_ids.shape == (len(prompts), CONTEXT_LENGTH)

    with torch.inference_mode():
        image_embeds = as_tensor(model.get_image_features(pixel_values=pixel_values))
        vis_out = model.vision_model(pixel_values=pixel_values)
        image_pooled = vis_out.pooler_output
        check = model.visual_projection(image_pooled)
        assert torch.equal(check, image_embeds), (check - image_embeds).abs().max()

        text_embeds = as_tensor(model.get_text_features(input_ids=input_ids))
        text_pooled = model.text_model(input_ids=input_ids).pooler_output
        assert torch.equal(model.text_projection(text_pooled), text_embeds)

        out = model(input_ids=input_ids, pixel_values=pixel_values)
        logits_per_image = out.logits_per_image
        # the documented formula, recomputed by hand
        ie = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        te = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        manual = model.logit_scale.exp() * ie @ te.t()
        assert torch.allclose(manual, logits_per_image, atol=1e-5, rtol=1e-5)
        logit_scale = float(model.logit_scale.item())

    tensors.update({
        "input_ids": input_ids.contiguous(),
        "image_embeds": image_embeds.float().contiguous(),
        "image_pooled": image_pooled.float().contiguous(),
        "text_embeds": text_embeds.float().contiguous(),
        "text_pooled": text_pooled.float().contiguous(),
        "logits_per_image": logits_per_image.float().contiguous(),
    })
    save_file({k: v.clone() for k, v in tensors.items()}, str(ref_dir / "reference.safetensors"),
              metadata={"format": "pt"})
    meta = {
        "photos": [p.name for p in photos],
        "texts": prompts,
        "logit_scale": logit_scale,
        "text_eos_token_id": model.config.text_config.eos_token_id,
        "image_processor": "CLIPImageProcessorPil",
        "attn_implementation": model.config._attn_implementation,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    meta.update(extra_meta)
    write_json(ref_dir / "reference.json", meta)


def clean_model_dir(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for p in d.iterdir():
        if p.is_file() and (p.name.startswith("model") or p.name.endswith(".json")
                            or p.name.endswith(".safetensors") or p.name in TOKENIZER_FILES):
            p.unlink()


def build_tiny(out: Path, photos: list[Path], tok: CLIPTokenizerFast) -> None:
    # legacy OpenAI token ids: eos_token_id == 2 makes transformers pool at argmax(input_ids)
    quick = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=8, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=24),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=32, hidden_act="quick_gelu", projection_dim=24),
        projection_dim=24,
    )
    d = out / "tiny-quickgelu"
    clean_model_dir(d)
    new_model(quick, seed=1234).save_pretrained(str(d))
    CLIPImageProcessorPil().save_pretrained(str(d))
    assert (d / "model.safetensors").is_file()
    compute_references(d, photos, tok, {"seed": 1234})
    # tiny-quickgelu is a complete model directory (the CLI tests load it); the tokenizer
    # directory keeps vocab.json + merges.txt, so each file is committed once.
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.move(str(out / "tokenizer" / f), str(d / f))
    log("tiny-quickgelu done")

    gelu = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, layer_norm_eps=1e-6,
                         projection_dim=16),
        vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=3,
                           image_size=64, patch_size=16, hidden_act="gelu", projection_dim=16),
        projection_dim=16,
        logit_scale_init_value=3.2,
    )
    d = out / "tiny-gelu"
    clean_model_dir(d)
    new_model(gelu, seed=5678).save_pretrained(str(d), max_shard_size="1MB")
    shards = sorted(d.glob("model-*.safetensors"))
    assert (d / "model.safetensors.index.json").is_file() and len(shards) >= 2, shards
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(str(d))
    compute_references(d, photos, tok, {"seed": 5678})
    log("tiny-gelu done")


def build_full(which: str, out: Path, fixtures: Path) -> None:
    name = FULL_MODELS[which]
    tok_dir = fixtures / "tokenizer"
    photos = list_photos(fixtures / "photos")
    tok = CLIPTokenizerFast.from_pretrained(str(tok_dir))
    cfg_dict, cfg_text = hub_config(name)
    cfg = CLIPConfig.from_dict(copy.deepcopy(cfg_dict))

    clean_model_dir(out)
    t0 = time.time()
    model = new_model(cfg, seed=4242)
    log(f"init {time.time() - t0:.1f}s")
    # The published checkpoints carry the (int64) position_ids buffers, which
    # transformers no longer serialises; keep them to mirror the real files.
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    n_pos = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 + 1
    state["vision_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64)[None]
    del model
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    del state
    (out / "config.json").write_text(cfg_text, encoding="utf-8")
    (out / "preprocessor_config.json").write_text(hub_preprocessor(cfg.vision_config.image_size),
                                                  encoding="utf-8")
    for src in (tok_dir, fixtures / "tiny-quickgelu"):
        for f in TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, out / f)
    log(f"saved {time.time() - t0:.1f}s")
    compute_references(out, photos, tok, {"seed": 4242, "hub_config": f"openai/{name}"})
    log(f"references {time.time() - t0:.1f}s")


# Prompts for the bundled model's parity references: what it was trained to tell apart.
BUNDLED_PROMPTS = ["a moving ball", "smpte color bars", "tv static", "a checkerboard", "a red circle",
                   "two blue stars on a yellow background", "a solid green image", "a zone plate",
                   "a photo of an astronaut", ""]


def bundled_references(model_dir: Path, out: Path, fixtures: Path) -> None:
    """transformers' outputs for the bundled model, from its files on disk."""
    out.mkdir(parents=True, exist_ok=True)
    photos = list_photos(fixtures / "photos")
    tok = CLIPTokenizerFast.from_pretrained(str(model_dir))
    compute_references(model_dir, photos, tok, {"model": str(model_dir)}, ref_dir=out, prompts=BUNDLED_PROMPTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--full", choices=sorted(FULL_MODELS), help="write one full-size random-weight model")
    ap.add_argument("--fixtures", type=Path, default=Path("crates/cliptag-model/tests/data"),
                    help="committed fixture dir (photos and tokenizer) used by --full")
    ap.add_argument("--bundled", type=Path, metavar="MODEL_DIR",
                    help="write transformers' references for this trained model (the bundled one) into --out")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t0 = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.bundled:
        bundled_references(args.bundled, out, args.fixtures)
    elif args.full:
        build_full(args.full, out, args.fixtures)
    else:
        tok = build_tokenizer(out / "tokenizer")
        write_corpus(tok, out / "tokenizer")
        build_photos(out / "photos")
        build_hf_configs(out / "hf-configs")
        build_tiny(out, list_photos(out / "photos"), tok)
    log(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
