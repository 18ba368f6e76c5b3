#!/usr/bin/env python3
"""Prints the side-by-side table of two benchmark JSON files (ours first, the peer second)."""
import json
import sys


def main() -> int:
    ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
