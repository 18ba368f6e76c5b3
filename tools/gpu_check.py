#!/usr/bin/env python3
"""The Python half of scripts/gpu-check.sh: random-weight CLIP models, the PyTorch side
of the throughput comparison, the parity figures and the final table.

Needs only PyTorch (plus numpy or safetensors to write weights). The PyTorch baseline
is transformers' CLIPVisionModelWithProjection with SDPA attention when transformers is
installed; without it, the same computation written here on torch's
scaled_dot_product_attention (reported as such).

    gpu_check.py make-model --arch vit-b-32 --out DIR
    gpu_check.py bench --model DIR --batch 1,8,32 --device cuda --dtype fp16 > torch.json
    gpu_check.py parity REFERENCE.json CANDIDATE.json
    gpu_check.py report RESULTS_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FROM = ROOT / "models" / "cliptag-tiny"

# The shapes of OpenAI's CLIP ViT-B/32 and ViT-L/14 (transformers' configs of
# openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14).
ARCHS = {
    "vit-b-32": dict(vision=(768, 12, 12, 3072, 32), text=(512, 12, 8, 2048), projection=512),
    "vit-l-14": dict(vision=(1024, 24, 16, 4096, 14), text=(768, 12, 12, 3072), projection=768),
}


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- random-weight models

def hf_config(arch: str) -> dict:
    a = ARCHS[arch]
    vd, vl, vh, vi, patch = a["vision"]
    td, tl, th, ti = a["text"]
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": a["projection"],
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model", "hidden_size": td, "num_hidden_layers": tl,
            "num_attention_heads": th, "intermediate_size": ti, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "max_position_embeddings": 77, "vocab_size": 49408,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
            "projection_dim": a["projection"],
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": vd, "num_hidden_layers": vl,
            "num_attention_heads": vh, "intermediate_size": vi, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "image_size": 224, "patch_size": patch, "num_channels": 3,
            # transformers' tower-only classes read the projection width here.
            "projection_dim": a["projection"],
        },
    }


def encoder_shapes(prefix: str, d: int, layers: int, inter: int) -> dict[str, list[int]]:
    shapes = {}
    for i in range(layers):
        p = f"{prefix}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = [d, d]
            shapes[f"{p}.self_attn.{proj}.bias"] = [d]
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}.{norm}.weight"] = [d]
            shapes[f"{p}.{norm}.bias"] = [d]
        shapes[f"{p}.mlp.fc1.weight"] = [inter, d]
        shapes[f"{p}.mlp.fc1.bias"] = [inter]
        shapes[f"{p}.mlp.fc2.weight"] = [d, inter]
        shapes[f"{p}.mlp.fc2.bias"] = [d]
    return shapes


def checkpoint_shapes(arch: str) -> dict[str, list[int]]:
    a = ARCHS[arch]
    vd, vl, _, vi, patch = a["vision"]
    td, tl, _, ti = a["text"]
    n = (224 // patch) ** 2 + 1
    shapes = {
        "logit_scale": [],
        "vision_model.embeddings.class_embedding": [vd],
        "vision_model.embeddings.patch_embedding.weight": [vd, 3, patch, patch],
        "vision_model.embeddings.position_embedding.weight": [n, vd],
        "vision_model.pre_layrnorm.weight": [vd], "vision_model.pre_layrnorm.bias": [vd],
        "vision_model.post_layernorm.weight": [vd], "vision_model.post_layernorm.bias": [vd],
        "visual_projection.weight": [a["projection"], vd],
        "text_model.embeddings.token_embedding.weight": [49408, td],
        "text_model.embeddings.position_embedding.weight": [77, td],
        "text_model.final_layer_norm.weight": [td], "text_model.final_layer_norm.bias": [td],
        "text_projection.weight": [a["projection"], td],
    }
    shapes.update(encoder_shapes("vision_model", vd, vl, vi))
    shapes.update(encoder_shapes("text_model", td, tl, ti))
    return shapes


def random_tensor(name: str, shape: list[int], gen: torch.Generator) -> torch.Tensor:
    if name == "logit_scale":
        return torch.tensor(2.6592)
    if "norm" in name:  # layer norms: identity, as initialized
        return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
    if name.endswith("bias"):
        return torch.randn(shape, generator=gen) * 0.02
    # Scaled so that activations stay of order one through every layer, as trained
    # weights keep them (a plain 0.02 would shrink them layer after layer).
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    std = 0.02 if "embedding" in name else fan_in ** -0.5
    return torch.randn(shape, generator=gen) * std


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The safetensors format by hand (header length, JSON header, raw bytes), so that
    no package beyond torch and numpy is needed."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().to(torch.float16).numpy().tobytes()
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for c in chunks:
            f.write(c)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(body[a:b]), dtype=dtypes[info["dtype"]]) if b > a else \
            torch.empty(0, dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


def make_model(arch: str, out: Path, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: random_tensor(name, shape, gen) for name, shape in checkpoint_shapes(arch).items()}
    write_safetensors(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config(arch), indent=2))
    # The real CLIP vocabulary and CLIP's preprocessing at 224, from the bundled model.
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(TOKENIZER_FROM / name, out / name)
    params = sum(t.numel() for t in tensors.values())
    log(f"{arch}: {params / 1e6:.0f}M parameters (random, seed {seed}) in {out}")


# ---------------------------------------------------------------- the PyTorch baseline

class Layer(nn.Module):
    def __init__(self, d: int, heads: int, inter: int):
        super().__init__()
        self.heads = heads
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.self_attn = nn.Module()
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, proj, nn.Linear(d, d))
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, inter), nn.Linear(inter, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.layer_norm1(x)
        a = self.self_attn
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (a.q_proj, a.k_proj, a.v_proj))
        ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + a.out_proj(ctx)
        h = self.mlp.fc1(self.layer_norm2(x))
        return x + self.mlp.fc2(h * torch.sigmoid(1.702 * h))


class VisionTower(nn.Module):
    """CLIP's vision tower and projection, named as transformers names them, on SDPA."""

    def __init__(self, cfg: dict):
        super().__init__()
        v = cfg["vision_config"]
        d, p = v["hidden_size"], v["patch_size"]
        n = (v["image_size"] // p) ** 2 + 1
        self.patch = p
        self.vision_model = nn.Module()
        e = self.vision_model.embeddings = nn.Module()
        e.patch_embedding = nn.Conv2d(3, d, p, p, bias=False)
        e.class_embedding = nn.Parameter(torch.zeros(d))
        e.position_embedding = nn.Embedding(n, d)
        self.vision_model.pre_layrnorm = nn.LayerNorm(d, eps=1e-5)
        self.vision_model.encoder = nn.Module()
        self.vision_model.encoder.layers = nn.ModuleList(
            Layer(d, v["num_attention_heads"], v["intermediate_size"]) for _ in range(v["num_hidden_layers"]))
        self.vision_model.post_layernorm = nn.LayerNorm(d, eps=1e-5)
        self.visual_projection = nn.Linear(d, cfg["projection_dim"], bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.vision_model
        x = m.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = m.embeddings.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + m.embeddings.position_embedding.weight
        x = m.pre_layrnorm(x)
        for layer in m.encoder.layers:
            x = layer(x)
        return self.visual_projection(m.post_layernorm(x[:, 0]))


def load_baseline(model_dir: Path, device: str, dtype: torch.dtype):
    """(callable pixels -> image embeddings, description)."""
    why = "transformers not installed"
    try:
        import transformers
        from transformers import CLIPVisionModelWithProjection
        transformers.logging.set_verbosity_error()
        # No dtype keyword: its name changed across transformers releases.
        model = CLIPVisionModelWithProjection.from_pretrained(model_dir, attn_implementation="sdpa")
        model = model.to(device=device, dtype=dtype).eval()
        return (lambda x: model(pixel_values=x).image_embeds), f"transformers {transformers.__version__} (sdpa)"
    except ImportError:
        pass
    except Exception as e:  # an installed transformers that cannot load it: say so, go on
        why = f"transformers failed: {type(e).__name__}: {e}"[:200]
        log(why)
    cfg = json.loads((model_dir / "config.json").read_text())
    model = VisionTower(cfg)
    weights = read_safetensors(model_dir / "model.safetensors")
    own = {k: v for k, v in weights.items() if k.startswith(("vision_model.", "visual_projection."))}
    model.load_state_dict(own, strict=True)
    model = model.to(device=device, dtype=dtype).eval()
    return model, f"torch scaled_dot_product_attention ({why})"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(args) -> None:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    forward, what = load_baseline(args.model, args.device, dtype)
    results = []
    with torch.inference_mode():
        for batch in args.batch:
            pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
            pixels = pixels.to(device=args.device, dtype=dtype)
            for _ in range(2):
                forward(pixels)
            sync(args.device)
            done, start = 0, time.perf_counter()
            while done < args.iters or time.perf_counter() - start < args.seconds:
                forward(pixels)
                sync(args.device)
                done += 1
            per_batch = (time.perf_counter() - start) / done
            results.append({"batch": batch, "images_per_s": batch / per_batch, "ms_per_batch": per_batch * 1e3})
            log(f"torch batch {batch}: {batch / per_batch:.1f} img/s")
    print(json.dumps({"engine": "torch", "baseline": what, "torch": torch.__version__, "device": args.device,
                      "dtype": args.dtype, "results": results}))


# ---------------------------------------------------------------- parity and report

def parity(reference: Path, candidate: Path) -> dict:
    """Per image: |a - b| / |b| (L2 norms of the embeddings) and the cosine."""
    ref = json.loads(reference.read_text())["image_embeds"]
    cand = json.loads(candidate.read_text())["image_embeds"]
    assert len(ref) == len(cand), "different numbers of embeddings"
    rel, cos = [], []
    for a, b in zip(cand, ref):
        a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        rel.append(float((a - b).norm() / b.norm()))
        cos.append(float(F.cosine_similarity(a, b, dim=0)))
    return {"images": len(ref), "max_relative_error": max(rel), "mean_relative_error": sum(rel) / len(rel),
            "min_cosine": min(cos)}


def report(results: Path) -> None:
    env = json.loads((results / "environment.json").read_text())
    lines = [f"cliptag gpu-check, {env['date']}, {env['device_name']} ({env['mode']} mode, {env['dtype']})", ""]
    lines.append("parity with the CPU f32 path (image embeddings, |a-b|/|b|):")
    for f in sorted(results.glob("parity-*.json")):
        p = json.loads(f.read_text())
        ok = "ok" if p["max_relative_error"] <= 1e-2 else "ABOVE 1e-2"
        lines.append(f"  {f.stem[7:]:<28} max {p['max_relative_error']:.2e}  mean {p['mean_relative_error']:.2e}"
                     f"  min cosine {p['min_cosine']:.6f}  ({p['images']} images, {ok})")
    lines += ["", "vision tower + projection, images/s (same run, same weights):",
              f"  {'model':<9} {'batch':>5} {'cliptag':>10} {'pytorch':>10} {'ratio':>7}"]
    baseline = ""
    for arch in ARCHS:
        c, t = results / f"tower-{arch}-cliptag.json", results / f"tower-{arch}-torch.json"
        if not (c.exists() and t.exists()):
            lines.append(f"  {arch:<9} (not measured: see the logs)")
            continue
        cr = {r["batch"]: r["images_per_s"] for r in json.loads(c.read_text())["results"]}
        tj = json.loads(t.read_text())
        baseline = tj["baseline"]
        for b, tv in ((r["batch"], r["images_per_s"]) for r in tj["results"]):
            if b in cr:
                lines.append(f"  {arch:<9} {b:>5} {cr[b]:>10.1f} {tv:>10.1f} {cr[b] / tv:>6.2f}x")
    if baseline:
        lines.append(f"  pytorch = {baseline}")
    # Where cliptag's time goes at the largest batch (`cliptag bench --profile`: every
    # stage waited for on the device), the stages that take most first.
    for arch in ARCHS:
        c = results / f"tower-{arch}-cliptag.json"
        if not c.exists():
            continue
        profiled = [r for r in json.loads(c.read_text())["results"] if r.get("profile")]
        if not profiled:
            continue
        r = max(profiled, key=lambda r: r["batch"])
        total = sum(s["ms_per_batch"] for s in r["profile"])
        lines += ["", f"cliptag {arch} at batch {r['batch']}, stage by stage ({total:.2f} ms a batch"
                      f" with a wait around each stage):"]
        for s in r["profile"][:8]:
            lines.append(f"  {s['stage']:<28} {s['ms_per_batch']:>9.3f} ms  {s['share']:>6.1%}")
    element = results / "element.json"
    if element.exists():
        e = json.loads(element.read_text())
        lines += ["", f"element, N x videotestsrc {e['size']} {e['format']} ! imagefreeze ! cliptag (one engine, "
                      f"{e['model']}, max-batch {e['max_batch']}) ! fakesink:"]
        for r in e["runs"]:
            lines.append(f"  {r['streams']:>3} streams: {r['frames_per_s']:>8.1f} frames/s"
                         f"  = {r['frames_per_s'] / 30:.1f} streams of 30 fps")
        if e.get("bare_images_per_s"):
            best = max(r["frames_per_s"] for r in e["runs"])
            lines.append(f"  best / bare model at batch {e['max_batch']} ({e['bare_images_per_s']:.1f} img/s):"
                         f" {best / e['bare_images_per_s']:.0%}")
    text = "\n".join(lines)
    (results / "table.txt").write_text(text + "\n")
    print(text)


def element_summary(args) -> None:
    """Turns the timed pipeline runs (streams, frames per stream, seconds short, seconds
    long) into frames/s: the difference of two runs cancels loading and warm-up."""
    runs = []
    for spec in args.runs:
        streams, short, long_, t_short, t_long = spec.split(":")
        frames = int(streams) * (int(long_) - int(short))
        runs.append({"streams": int(streams), "frames": frames,
                     "frames_per_s": frames / max(float(t_long) - float(t_short), 1e-9)})
    bare = None
    if args.bare and args.bare.exists():
        for r in json.loads(args.bare.read_text())["results"]:
            if r["batch"] == args.max_batch:
                bare = r["images_per_s"]
    print(json.dumps({"size": args.size, "format": args.format, "model": args.model_name,
                      "max_batch": args.max_batch, "runs": runs, "bare_images_per_s": bare}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model", help="write a random-weight CLIP model directory")
    m.add_argument("--arch", choices=sorted(ARCHS), required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--seed", type=int, default=1)
    b = sub.add_parser("bench", help="PyTorch vision-tower throughput")
    b.add_argument("--model", type=Path, required=True)
    b.add_argument("--batch", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    b.add_argument("--device", default="cuda")
    b.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    b.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    b.add_argument("--seconds", type=float, default=1.0)
    b.add_argument("--iters", type=int, default=5)
    p = sub.add_parser("parity", help="compare two `cliptag embed` outputs")
    p.add_argument("reference", type=Path)
    p.add_argument("candidate", type=Path)
    r = sub.add_parser("report", help="the final table of a results directory")
    r.add_argument("results", type=Path)
    e = sub.add_parser("element", help="frames/s of timed pipeline runs")
    e.add_argument("--runs", nargs="+", required=True, metavar="STREAMS:SHORT:LONG:T_SHORT:T_LONG")
    e.add_argument("--bare", type=Path)
    e.add_argument("--max-batch", type=int, required=True)
    e.add_argument("--size", required=True)
    e.add_argument("--format", required=True)
    e.add_argument("--model-name", required=True)
    args = ap.parse_args()
    if args.cmd == "make-model":
        make_model(args.arch, args.out, args.seed)
    elif args.cmd == "bench":
        bench(args)
    elif args.cmd == "parity":
        print(json.dumps(parity(args.reference, args.candidate)))
    elif args.cmd == "report":
        report(args.results)
    elif args.cmd == "element":
        element_summary(args)


if __name__ == "__main__":
    main()
