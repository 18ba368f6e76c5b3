#!/usr/bin/env python3
"""Prints the side-by-side tables of `./x bench` and writes them as one JSON object.

The benchmark runs in rounds, each measuring cliptag and then the peer (transformers) on
the same machine minutes apart; the machines here drift by 10 to 20% over minutes, so
every ratio is computed within its round and the tables show the median over rounds
with the range, next to the median figures of each side.

    bench_report.py --ours c1.json c2.json --peer t1.json t2.json [--peers p1.json p2.json] \
        [--ours-f32 f1.json f2.json] [--element e.json] [--grpc g.json] [--json-out summary.json]

--ours are cliptag's runs at the precision `auto` picks on this machine (bf16 where the
CPU has bf16 dot products), with the engine's end-to-end figures; --ours-f32, when auto is
not f32, the tower alone in f32. Each run is filed under the precision it reports using.

With --peers (tools/bench_peers.py: ONNX Runtime, OpenVINO, PyTorch bf16 on the same
weights, in the same rounds) the tower is also compared with the best system at each
precision, and the CPU's model and flags are printed with the table.
"""
import argparse
import json
import statistics


def median(values):
    return statistics.median(values) if values else float("nan")


def ratio_cell(row):
    """A row's median ratio and its range over the rounds."""
    return f"{row['ratio']:>6.2f}x  ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"


def tower(ours, peers):
    """Per batch: each side's median images/s and the per-round ratios."""
    rows = []
    for batch in [r["batch"] for r in ours[0]["results"]]:
        mine, theirs, ratios = [], [], []
        for o, p in zip(ours, peers):
            a = next((r["images_per_s"] for r in o["results"] if r["batch"] == batch), None)
            b = next((r["images_per_s"] for r in p["results"] if r["batch"] == batch), None)
            if a is None or b is None:
                continue
            mine.append(a)
            theirs.append(b)
            ratios.append(a / b)
        if ratios:
            rows.append({"batch": batch, "cliptag_images_per_s": median(mine),
                         "peer_images_per_s": median(theirs), "ratio": median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)})
    return rows


def cpu():
    """The CPU's model name and the flags that decide the kernels."""
    model, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "?":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8",
              "amx_tile"]
    return {"model": model, "flags": [f for f in wanted if f in flags]}


def systems(ours, peers, others, ours_f32):
    """Per system and batch: median images/s over the rounds, and per precision the best
    peer's name and cliptag's ratio to it within each round."""
    table = {}
    def put(name, round_index, results):
        for r in results:
            table.setdefault(name, {}).setdefault(r["batch"], {})[round_index] = r["images_per_s"]
    for i, (o, p, q) in enumerate(zip(ours, peers, others)):
        put(f"cliptag-{o.get('dtype', 'f32')}", i, o["results"])
        if ours_f32:
            put(f"cliptag-{ours_f32[i].get('dtype', 'f32')}", i, ours_f32[i]["results"])
        put("pytorch-f32", i, p["results"])
        for name, results in q["results"].items():
            put(name, i, results)
    medians = {name: {b: median(list(v.values())) for b, v in rows.items()} for name, rows in table.items()}
    best = []
    for precision in ("f32", "bf16"):
        names = [n for n in table if n.endswith(precision) and not n.startswith("cliptag")]
        mine = table.get(f"cliptag-{precision}")
        for batch in sorted({b for n in names for b in table[n]}):
            rounds = range(len(ours))
            top = [max(((table[n][batch].get(i, 0.0), n) for n in names), default=(0.0, "")) for i in rounds]
            row = {"precision": precision, "batch": batch,
                   "best_peer": max(set(t[1] for t in top), key=[t[1] for t in top].count),
                   "best_peer_images_per_s": median([t[0] for t in top])}
            if mine and batch in mine:
                ratios = [mine[batch][i] / top[i][0] for i in rounds if i in mine[batch] and top[i][0] > 0]
                row.update({"cliptag_images_per_s": median(list(mine[batch].values())), "ratio": median(ratios),
                            "ratio_min": min(ratios), "ratio_max": max(ratios)})
            best.append(row)
    return medians, best


def engine(ours):
    """Per (format, batch): the engine's median frames/s from raw frames against cliptag's
    bare tower on preprocessed tensors at the same precision and batch, in the same round:
    what preprocessing, scoring and delivery leave of the tower's speed."""
    rows = []
    for f0 in ours[0]["end_to_end"]["frames"]:
        mine, tower_rates, ratios = [], [], []
        for o in ours:
            f = next((f for f in o["end_to_end"]["frames"]
                      if (f["format"], f["batch"]) == (f0["format"], f0["batch"])), None)
            b = next((r["images_per_s"] for r in o["results"] if r["batch"] == f0["batch"]), None)
            if f is None or b is None:
                continue
            mine.append(f["frames_per_s"])
            tower_rates.append(b)
            ratios.append(f["frames_per_s"] / b)
        if ratios:
            rows.append({"width": f0["width"], "height": f0["height"], "format": f0["format"],
                         "batch": f0["batch"], "labels": f0["labels"], "cliptag_frames_per_s": median(mine),
                         "tower_images_per_s": median(tower_rates), "ratio": median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)})
    return rows


def label_update(ours, peers):
    mine = [o["end_to_end"]["label_update"] for o in ours]
    theirs = [p.get("text") for p in peers]
    ratios = [t["seconds"] / u["seconds"] for u, t in zip(mine, theirs) if t]
    return {"prompts": mine[0]["prompts"],
            "cliptag_seconds": median([u["seconds"] for u in mine]),
            "peer_seconds": median([t["seconds"] for t in theirs if t]),
            "ratio": median(ratios), "ratio_min": min(ratios, default=float("nan")),
            "ratio_max": max(ratios, default=float("nan")),
            "throughput_kept": median([u["throughput_kept"] for u in mine]),
            "frames_per_s_alone": median([u["frames_per_s_alone"] for u in mine]),
            "frames_per_s_during_updates": median([u["frames_per_s_during_updates"] for u in mine]),
            "encoder_busy_fraction": median([u["encoder_busy_fraction"] for u in mine])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", nargs="+", required=True, help="cliptag bench --json, one file per round")
    ap.add_argument("--peer", nargs="+", required=True, help="bench_transformers.py --json, one file per round")
    ap.add_argument("--peers", nargs="+", help="bench_peers.py --json, one file per round")
    ap.add_argument("--ours-f32", nargs="+", help="cliptag bench --dtype f32 --json, one file per round")
    ap.add_argument("--element", help="the element's figure")
    ap.add_argument("--grpc", help="cliptag bench-grpc --json")
    ap.add_argument("--json-out", help="write every figure and ratio here as one JSON object")
    args = ap.parse_args()
    if len(args.ours) != len(args.peer):
        ap.error("--ours and --peer need one file per round each")
    ours = [json.load(open(p)) for p in args.ours]
    ours_f32 = [json.load(open(p)) for p in args.ours_f32 or []]
    if ours_f32 and len(ours_f32) != len(ours):
        ap.error("--ours-f32 needs one file per round")
    peers = [json.load(open(p)) for p in args.peer]
    peer = peers[0]["engine"]
    rounds = len(ours)
    summary = {"rounds": rounds, "threads": ours[0].get("threads"), "peer": {
        k: peers[0].get(k) for k in ("engine", "torch", "transformers", "attn_implementation")}}

    # transformers runs in f32: compare it with cliptag's f32 figures.
    same_precision = ours_f32 or ours
    summary["dtype"] = ours[0].get("dtype")
    summary["tower"] = tower(same_precision, peers)
    print(f"\nvision tower throughput in f32, images/s (cliptag vs {peer}, {ours[0].get('threads', '?')} threads; "
          f"medians of {rounds} rounds, ratio range in brackets)")
    print(f"{'batch':>6} {'cliptag':>10} {peer:>13} {'ratio':>7}")
    for r in summary["tower"]:
        print(f"{r['batch']:>6} {r['cliptag_images_per_s']:>10.2f} {r['peer_images_per_s']:>13.2f} "
              f"{ratio_cell(r)}")

    if args.peers:
        others = [json.load(open(p)) for p in args.peers]
        if len(others) != rounds:
            ap.error("--peers needs one file per round")
        summary["cpu"] = cpu()
        summary["peer_versions"] = others[0].get("versions")
        summary["relative_error_vs_f32"] = others[0].get("relative_error_vs_f32")
        medians, best = systems(ours, peers, others, ours_f32)
        summary["systems"] = medians
        summary["against_best_peer"] = best
        batches = sorted({b for rows in medians.values() for b in rows})
        print(f"\nCPU: {summary['cpu']['model']} ({', '.join(summary['cpu']['flags'])}); "
              f"{ours[0].get('threads', '?')} threads; versions {summary['peer_versions']}")
        print(f"vision tower + projection, images/s, medians of {rounds} rounds")
        print(f"{'system':>18} " + " ".join(f"{'batch ' + str(b):>10}" for b in batches) + "  rel. error vs f32")
        for name, rows in sorted(medians.items()):
            error = (summary["relative_error_vs_f32"] or {}).get(name)
            cells = " ".join(f"{rows.get(b, float('nan')):>10.2f}" for b in batches)
            print(f"{name:>18} {cells}  {'' if error is None else f'{error:.1e}'}")
        print("\ncliptag against the best peer at the same precision (ratio within each round)")
        for r in best:
            if "ratio" in r:
                print(f"{r['precision']:>5} batch {r['batch']:>3}: cliptag {r['cliptag_images_per_s']:.2f} vs "
                      f"{r['best_peer']} {r['best_peer_images_per_s']:.2f}: {ratio_cell(r)}")
            else:
                print(f"{r['precision']:>5} batch {r['batch']:>3}: best peer {r['best_peer']} "
                      f"{r['best_peer_images_per_s']:.2f}; cliptag has no {r['precision']} CPU figure in this run")

    if ours[0].get("end_to_end"):
        summary["engine"] = engine(ours)
        dtype = ours[0].get("dtype", "f32")
        print(f"\nengine end to end from raw frames (preprocessing + inference + scoring + delivery) vs "
              f"cliptag's bare tower on preprocessed tensors, both {dtype}, same batch and round")
        print(f"{'frames':>16} {'batch':>6} {'engine':>9} {'tower':>9} {'share':>7}")
        for r in summary["engine"]:
            size = f"{r['width']}x{r['height']} {r['format']}"
            print(f"{size:>16} {r['batch']:>6} {r['cliptag_frames_per_s']:>9.2f} {r['tower_images_per_s']:>9.2f} "
                  f"{ratio_cell(r)}")
        u = summary["label_update"] = label_update(ours, peers)
        print(f"\nlabel update ({dtype} here, f32 in {peer}): {u['prompts']} prompts in {u['cliptag_seconds']:.3f} s vs {peer} "
              f"get_text_features {u['peer_seconds']:.3f} s: "
              f"{ratio_cell(u)}")
        print(f"frames while updates run back to back: {u['throughput_kept'] * 100:.0f}% of the throughput alone "
              f"({u['frames_per_s_during_updates']:.2f} vs {u['frames_per_s_alone']:.2f} frames/s); "
              f"the encoder was busy {u['encoder_busy_fraction'] * 100:.0f}% of that time")
        if args.element:
            element = json.load(open(args.element))
            same = next((r for r in summary["engine"]
                         if (r["batch"], r["format"]) == (element["batch"], element["format"])), None)
            if same:
                element["share_of_engine"] = element["frames_per_s"] / same["cliptag_frames_per_s"]
                print(f"\nelement ({element['pipeline']}, {element['width']}x{element['height']} "
                      f"{element['format']}, batch {element['batch']}): {element['frames_per_s']:.2f} frames/s, "
                      f"{element['share_of_engine'] * 100:.0f}% of the engine's {same['cliptag_frames_per_s']:.2f}")
            summary["element"] = element

    if args.grpc:
        grpc = summary["grpc"] = json.load(open(args.grpc))
        print(f"\ngRPC detection delivery on loopback ({grpc['streams']} streams x {grpc['fps_per_stream']} "
              f"frames/s, result made -> client decoded; aim: p99 under 5 ms with 100 subscribers)")
        print(f"{'subscribers':>12} {'delivered':>10} {'lost':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'server CPU':>11} {'us/result':>10}")
        for r in grpc["results"]:
            print(f"{r['subscribers']:>12} {r['delivered']:>10} {r['lost']:>5} {r['latency_p50_ms']:>7.2f} "
                  f"{r['latency_p99_ms']:>7.2f} {r['latency_max_ms']:>7.2f} "
                  f"{r['server_cpu_core_fraction'] * 100:>10.1f}% {r['server_cpu_us_per_result']:>10.1f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
