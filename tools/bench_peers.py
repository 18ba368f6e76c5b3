#!/usr/bin/env python3
"""Throughput of what a user would pick instead of cliptag for CPU inference, on the same
weights: the vision tower plus visual projection exported once to ONNX and run by ONNX
Runtime and OpenVINO, and PyTorch with bf16 autocast, each at f32 and (where the
runtime has it) bf16, for each batch size. Also how far each bf16 result is from f32
(relative L2 error of the image embeddings against PyTorch f32).

    python tools/bench_peers.py --model DIR --batch 1,8,32 --threads 2 --onnx target/bench/vision.onnx --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import transformers
from transformers import CLIPVisionModelWithProjection

from bench_transformers import parse_batches  # same directory: run as tools/bench_peers.py


def pixels(batch: int, size: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(1000 + batch)
    return torch.randn((batch, 3, size, size), generator=gen, dtype=torch.float32).numpy()


def timed(run, batch: int, warmup: int, min_seconds: float) -> dict:
    """Runs `run()` (one forward pass of `batch` images) for at least `min_seconds`."""
    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(times) < 3:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    times.sort()
    return {"batch": batch, "iters": len(times), "images_per_s": batch * len(times) / total,
            "ms_per_batch_median": 1000.0 * times[len(times) // 2]}


class Tower(torch.nn.Module):
    """pixel_values -> image_embeds, the graph every peer runs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).image_embeds


def export(model, size: int, path: str) -> None:
    wrapped = Tower(model).eval()
    example = torch.from_numpy(pixels(2, size))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(wrapped, (example,), path, input_names=["pixel_values"],
                          output_names=["image_embeds"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                          opset_version=17, dynamo=False)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face CLIP model directory")
    ap.add_argument("--batch", type=parse_batches, default=[1, 8, 32], help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2, help="threads every runtime may use")
    ap.add_argument("--warmup", type=int, default=2, help="untimed passes per batch size")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per batch size")
    ap.add_argument("--onnx", required=True, help="where the exported graph is kept (made once)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    transformers.logging.set_verbosity_error()
    model = CLIPVisionModelWithProjection.from_pretrained(args.model, dtype=torch.float32).eval()
    size = model.config.image_size
    if not os.path.exists(args.onnx):
        export(model, size, args.onnx)

    import onnxruntime as ort
    import openvino as ov

    reference = {}
    with torch.inference_mode():
        for b in args.batch:
            reference[b] = model(pixel_values=torch.from_numpy(pixels(b, size))).image_embeds.numpy()

    systems: dict[str, list[dict]] = {}
    errors: dict[str, float] = {}

    def measure(name: str, infer) -> None:
        rows, worst = [], 0.0
        for b in args.batch:
            x = pixels(b, size)
            out = np.asarray(infer(x), dtype=np.float32)
            worst = max(worst, rel_error(out, reference[b]))
            rows.append(timed(lambda: infer(x), b, args.warmup, args.min_seconds))
        systems[name] = rows
        errors[name] = worst

    def torch_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(pixel_values=torch.from_numpy(x)).image_embeds.float().numpy()

    measure("pytorch-bf16", torch_bf16)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    measure("onnxruntime-f32", lambda x: session.run(None, {"pixel_values": x})[0])

    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    for precision in ("f32", "bf16"):
        if precision == "bf16" and "BF16" not in capabilities:
            continue
        compiled = core.compile_model(args.onnx, "CPU", {
            "INFERENCE_NUM_THREADS": args.threads,
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
        })
        request = compiled.create_infer_request()
        measure(f"openvino-{precision}",
                lambda x, r=request: r.infer({"pixel_values": x})[compiled.output(0)])

    report = {
        "engine": "peers",
        "threads": args.threads,
        "versions": {"torch": torch.__version__.split("+")[0], "onnxruntime": ort.__version__,
                     "openvino": ov.__version__.split("-")[0]},
        "openvino_capabilities": list(capabilities),
        "results": systems,
        "relative_error_vs_f32": errors,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for name, rows in systems.items():
            cells = "  ".join(f"b{r['batch']} {r['images_per_s']:7.2f}" for r in rows)
            print(f"{name:<16} {cells}  img/s  (rel. error {errors[name]:.1e})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
