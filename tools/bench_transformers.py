#!/usr/bin/env python3
"""Throughput of the transformers CLIP image tower on CPU, as a baseline.

Loads the vision tower plus visual projection (CLIPVisionModelWithProjection)
from a Hugging Face model directory in float32, then times forward passes on
random pixel tensors for each requested batch size.

    python tools/bench_transformers.py --model DIR --batch 1,8,32 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import transformers
from transformers import CLIPVisionModelWithProjection


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad batch list {text!r}") from exc
    if not batches or any(b < 1 for b in batches):
        raise argparse.ArgumentTypeError(f"bad batch list {text!r}")
    return batches


def bench_one(model, batch: int, size: int, warmup: int, iters: int | None, min_seconds: float) -> dict:
    gen = torch.Generator().manual_seed(1000 + batch)
    pixels = torch.randn((batch, 3, size, size), generator=gen, dtype=torch.float32)
    with torch.inference_mode():
        for _ in range(warmup):
            model(pixel_values=pixels)
        times = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            out = model(pixel_values=pixels).image_embeds
            times.append(time.perf_counter() - t0)
            if iters is not None:
                if len(times) >= iters:
                    break
            elif time.perf_counter() - start >= min_seconds and len(times) >= 3:
                break
    assert out.shape[0] == batch
    total = sum(times)
    ms = 1000.0 * total / len(times)
    times.sort()
    return {
        "batch": batch,
        "iters": len(times),
        "images_per_s": batch * len(times) / total,
        "ms_per_batch": ms,
        "ms_per_batch_median": 1000.0 * times[len(times) // 2],
    }


def bench_text(model_dir: str, n: int, chunk: int = 128) -> dict:
    """Seconds for get_text_features on n distinct prompts, tokenization included."""
    from transformers import CLIPModel, CLIPTokenizerFast
    model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = CLIPTokenizerFast.from_pretrained(model_dir)
    prompts = [f"a photo of object {i} take 0" for i in range(n)]
    with torch.inference_mode():
        enc = tok(prompts[:chunk], padding=True, return_tensors="pt")
        model.get_text_features(**enc)  # warm-up
        start = time.perf_counter()
        for i in range(0, n, chunk):
            enc = tok(prompts[i:i + chunk], padding=True, return_tensors="pt")
            model.get_text_features(**enc)
        seconds = time.perf_counter() - start
    return {"prompts": n, "seconds": seconds, "prompts_per_s": n / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face CLIP model directory")
    ap.add_argument("--batch", type=parse_batches, default=[1, 8, 32], help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed iterations per batch size (default: run for --min-seconds)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations per batch size")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per batch size")
    ap.add_argument("--text", type=int, default=0, metavar="N",
                    help="also time get_text_features on N distinct prompts (tokenization included)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    # Loading a full CLIPModel directory keeps only the vision tower and projection.
    model = CLIPVisionModelWithProjection.from_pretrained(args.model, dtype=torch.float32).eval()
    size = model.config.image_size

    results = [bench_one(model, b, size, args.warmup, args.iters, args.min_seconds) for b in args.batch]
    report = {
        "engine": "transformers",
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "threads": args.threads,
        "attn_implementation": model.config._attn_implementation,
        "image_size": size,
        "results": results,
    }
    if args.text:
        report["text"] = bench_text(args.model, args.text)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"transformers {report['transformers']} / torch {report['torch']}, {args.threads} threads")
        for r in results:
            print(f"batch {r['batch']:>4}: {r['images_per_s']:8.2f} img/s  {r['ms_per_batch']:9.2f} ms/batch"
                  f"  ({r['iters']} iters)")
        if "text" in report:
            t = report["text"]
            print(f"text: {t['prompts']} prompts in {t['seconds']:.3f} s ({t['prompts_per_s']:.0f} prompts/s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
