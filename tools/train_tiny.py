"""Train cliptag-tiny, the small CLIP bundled with cliptag, and write it in the
Hugging Face layout (config.json, model.safetensors in float16, tokenizer.json,
tokenizer_config.json, preprocessor_config.json).

    .venv-tools/bin/python tools/train_tiny.py --pool target/tiny/pool --out models/cliptag-tiny

The pool comes from tools/tiny_data.py. The architecture is transformers'
CLIPModel and the tokenizer is CLIP's BPE, so the result loads unchanged with
CLIPModel.from_pretrained. Training is a contrastive loss in which every
caption that is true of an image counts as a positive (see tiny_vocab.py),
for a fixed number of steps from fixed seeds: the same pool and arguments give
the same weights on the same machine and torch version.
"""

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_vocab as V  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.join(HERE, "..", "crates", "cliptag-model", "tests", "data", "tiny-quickgelu")
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def model_config():
    # The text tower's token table (49408 x width) dominates the size: at width
    # 64 it is 6.3 MB in float16, which leaves the vision tower about 1.6 M
    # parameters inside the 12 MB budget.
    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=128,
        logit_scale_init_value=math.log(1 / 0.07),
    )


class AttrCodec:
    """Attributes and constraints as 64-bit masks: a caption matches when its bits are a subset."""

    def __init__(self):
        self.bits = {}

    def encode(self, d):
        mask = 0
        for kv in d.items():
            if kv[1] is None:
                continue
            if kv not in self.bits:
                if len(self.bits) == 63:
                    raise RuntimeError("more than 63 attribute values")
                self.bits[kv] = len(self.bits)
            mask |= 1 << self.bits[kv]
        return mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2200, help="optimizer steps (the bundled model: 2200)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on CPUs with AVX512-BF16)")
    ap.add_argument("--grey", type=float, default=0.3,
                    help="share of shape scenes shown in greyscale, captioned by shape only (teaches "
                         "shape apart from colour, so held-out colour x shape pairs are recognised)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    images = torch.from_numpy(np.load(os.path.join(args.pool, "images.npy")))  # N,224,224,3 uint8
    with open(os.path.join(args.pool, "attrs.json")) as f:
        attrs = json.load(f)["attrs"]
    if len(attrs) != images.shape[0]:
        raise SystemExit("pool: images.npy and attrs.json disagree")
    codec = AttrCodec()
    # Keys the captions can constrain, encoded once per image.
    img_masks = np.array([codec.encode(a) for a in attrs], dtype=np.uint64)

    tok = CLIPTokenizerFast.from_pretrained(TOKENIZER_DIR)
    token_cache = {}

    def tokenize(texts):
        missing = [t for t in set(texts) if t not in token_cache]
        if missing:
            for t, ids in zip(missing, tok(missing)["input_ids"]):
                token_cache[t] = ids
        seqs = [token_cache[t] for t in texts]
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), tok.eos_token_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s)
        return out

    model = CLIPModel(model_config())
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    n = images.shape[0]
    order = []
    started = time.time()
    for step in range(args.steps):
        if len(order) < args.batch:
            perm = list(range(n))
            rng.shuffle(perm)
            order.extend(perm)
        idx, order = order[: args.batch], order[args.batch:]
        pix = images[idx].permute(0, 3, 1, 2).float()
        batch_attrs = [attrs[i] for i in idx]
        masks = img_masks[idx].copy()
        for j, a in enumerate(batch_attrs):
            if a["kind"] == "shapes" and rng.random() < args.grey:
                grey = (pix[j, 0] * 0.299 + pix[j, 1] * 0.587 + pix[j, 2] * 0.114).round()
                pix[j] = grey.expand(3, -1, -1)
                batch_attrs[j] = {k: v for k, v in a.items() if k not in ("colour", "bg")}
                masks[j] = codec.encode(batch_attrs[j])
        pix = pix.div_(255).sub_(MEAN).div_(STD)
        caps = [V.caption(rng, a) for a in batch_attrs]
        input_ids = tokenize([c[0] for c in caps])
        cap_masks = np.array([codec.encode(c[1]) for c in caps], dtype=np.uint64)
        match = (masks[:, None] & cap_masks[None, :]) == cap_masks[None, :]
        target = torch.from_numpy(match.astype(np.float32))

        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = model(input_ids=input_ids, pixel_values=pix)
        logits = out.logits_per_image.float()  # [images, captions]
        loss_i = -(F.log_softmax(logits, dim=1) * (target / target.sum(1, keepdim=True))).sum(1).mean()
        loss_t = -(F.log_softmax(logits, dim=0) * (target / target.sum(0, keepdim=True))).sum(0).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % args.log_every == 0 or step == args.steps - 1:
            with torch.no_grad():
                hit = target[torch.arange(len(idx)), logits.argmax(1)].mean().item()
            el = time.time() - started
            print(f"step {step:5d}  loss {loss.item():.4f}  i2t-top1 {hit:.3f}  scale {model.logit_scale.exp().item():.1f}"
                  f"  lr {lr_at(step):.2e}  {el / 60:.1f} min  {(step + 1) * args.batch / el:.0f} img/s", flush=True)

    os.makedirs(args.out, exist_ok=True)
    model.eval()
    model.to(torch.float16)
    model.config.dtype = "float16"
    model.save_pretrained(args.out, safe_serialization=True)
    # The tokenizer files as committed (compact JSON: transformers would indent it to twice the size).
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOKENIZER_DIR, name), os.path.join(args.out, name))
    with open(os.path.join(args.out, "preprocessor_config.json"), "w") as f:
        json.dump(PREPROCESSOR, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, p)) for p in os.listdir(args.out))
    print(f"wrote {args.out}: {total / 1e6:.2f} MB in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
