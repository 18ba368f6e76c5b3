#!/usr/bin/env python3
"""Prints the side-by-side table of the benchmark JSON files: ours, the peer's, and optionally the element's and the gRPC fan-out's."""
import json
import sys


def main() -> int:
    ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
    element = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else None
    grpc = json.load(open(sys.argv[4])) if len(sys.argv) > 4 else None
    peer_by_batch = {r["batch"]: r for r in peer["results"]}
    print(f"\nvision tower throughput, images/s ({ours['engine']} vs {peer['engine']}, "
          f"{ours.get('threads', '?')} threads)")
    print(f"{'batch':>6} {ours['engine']:>10} {peer['engine']:>13} {'ratio':>7}")
    for r in ours["results"]:
        p = peer_by_batch.get(r["batch"])
        if p is None:
            continue
        ratio = r["images_per_s"] / p["images_per_s"]
        print(f"{r['batch']:>6} {r['images_per_s']:>10.2f} {p['images_per_s']:>13.2f} {ratio:>6.2f}x")
    e2e = ours.get("end_to_end")
    if e2e:
        print(f"\nengine end to end from raw frames (preprocessing + inference + scoring) vs "
              f"{peer['engine']} get_image_features on preprocessed tensors, same batch")
        print(f"{'frames':>16} {'batch':>6} {'cliptag':>9} {peer['engine']:>13} {'ratio':>7}")
        for f in e2e["frames"]:
            p = peer_by_batch.get(f["batch"])
            if p is None:
                continue
            ratio = f["frames_per_s"] / p["images_per_s"]
            size = f"{f['width']}x{f['height']} {f['format']}"
            print(f"{size:>16} {f['batch']:>6} {f['frames_per_s']:>9.2f} {p['images_per_s']:>13.2f} {ratio:>6.2f}x")
        u = e2e["label_update"]
        t = peer.get("text")
        line = f"\nlabel update: {u['prompts']} prompts in {u['seconds']:.3f} s"
        if t:
            line += (f" vs {peer['engine']} get_text_features {t['seconds']:.3f} s "
                     f"({t['seconds'] / u['seconds']:.2f}x)")
        print(line)
        print(f"frames while updates run back to back: {u['throughput_kept'] * 100:.0f}% of the throughput alone "
              f"({u['frames_per_s_during_updates']:.2f} vs {u['frames_per_s_alone']:.2f} frames/s); "
              f"the encoder was busy {u['encoder_busy_fraction'] * 100:.0f}% of that time")
        same = [f for f in e2e["frames"] if element and f["batch"] == element["batch"] and f["format"] == element["format"]]
        if element and same:
            ratio = element["frames_per_s"] / same[0]["frames_per_s"]
            print(f"\nelement ({element['pipeline']}, {element['width']}x{element['height']} {element['format']}, "
                  f"batch {element['batch']}): {element['frames_per_s']:.2f} frames/s, {ratio * 100:.0f}% of the engine's "
                  f"{same[0]['frames_per_s']:.2f}")
    if grpc:
        print(f"\ngRPC detection delivery on loopback ({grpc['streams']} streams x {grpc['fps_per_stream']} frames/s, "
              f"result made -> client decoded; aim: p99 under 5 ms with 100 subscribers)")
        print(f"{'subscribers':>12} {'delivered':>10} {'lost':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'server CPU':>11} {'us/result':>10}")
        for r in grpc["results"]:
            print(f"{r['subscribers']:>12} {r['delivered']:>10} {r['lost']:>5} {r['latency_p50_ms']:>7.2f} "
                  f"{r['latency_p99_ms']:>7.2f} {r['latency_max_ms']:>7.2f} {r['server_cpu_core_fraction'] * 100:>10.1f}% "
                  f"{r['server_cpu_us_per_result']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
