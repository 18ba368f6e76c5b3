"""Image/caption data for the bundled cliptag-tiny model.

Run with a Python that has GStreamer's bindings (Debian: python3-gi,
gir1.2-gstreamer-1.0, python3-numpy, python3-pil), usually /usr/bin/python3:

    # training pool: CLIP-preprocessed 224x224 crops plus their attributes
    python3 tools/tiny_data.py pool --seed 1 --count 24000 --out target/tiny/pool
    # held-out evaluation set: frames at their rendered size, PNG, plus a
    # manifest the Rust evaluator reads
    python3 tools/tiny_data.py eval --seed 1001 --per-class 20 --out target/tiny/eval

videotestsrc frames are rendered by GStreamer itself, in RGB, BGRx, I420 or
NV12 and converted to RGB by videoconvert, so chroma subsampling is part of
what the model sees. Training sizes are multiples of 8 pixels; evaluation
sizes never are, so evaluation always uses resolutions unseen in training.
Everything is seeded: the same arguments give the same files.
"""

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_vocab as V  # noqa: E402

CROP = 224
FORMATS = ["RGB", "BGRx", "I420", "NV12"]
# Patterns whose look follows foreground-color / background-color.
COLOURED_PATTERNS = {"ball", "bar", "circular", "gradient", "pinwheel", "snow", "spokes", "zone-plate"}
SHAPE_SHAPES = V.SHAPE_NAMES

_gst = None


def gst():
    global _gst
    if _gst is None:
        import gi
        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
        Gst.init(None)
        _gst = Gst
    return _gst


# ---------------------------------------------------------------- sizes

ASPECTS = [(4, 3), (16, 9), (1, 1), (3, 4), (9, 16), (21, 9), (3, 2), (5, 4)]


def train_size(rng):
    """A frame size whose sides are multiples of 8 (evaluation never uses those)."""
    aw, ah = rng.choice(ASPECTS)
    short = rng.choice([64, 96, 120, 144, 176, 224, 240, 288, 360, 480, 576, 720, 1080])
    if aw >= ah:
        h, w = short, short * aw / ah
    else:
        w, h = short, short * ah / aw
    w = min(int(w) // 8 * 8, 1920)
    h = min(int(h) // 8 * 8, 1920)
    return max(w, 64), max(h, 64)


def eval_size(rng, small=False):
    """A frame size with both sides even but not multiples of 8."""
    aw, ah = rng.choice(ASPECTS)
    short = rng.choice([150, 190, 230, 262] if small else [150, 262, 342, 486, 598, 722, 1012])
    w, h = (short * aw / ah, short) if aw >= ah else (short, short * ah / aw)
    w, h = int(w) // 8 * 8 + rng.choice([2, 4, 6]), int(h) // 8 * 8 + rng.choice([2, 4, 6])
    return w, h


# ---------------------------------------------------------------- colours

def jitter(rng, name, amount=30):
    base = V.COLOURS[name][0]
    return tuple(int(min(255, max(0, c + rng.randint(-amount, amount)))) for c in base)


def argb(rgb):
    r, g, b = rgb
    return (0xFF << 24) | (r << 16) | (g << 8) | b


def neutral_background(rng, w, h):
    """A background that no colour word describes: grey levels, muted tints, faint texture."""
    kind = rng.random()
    level = rng.choice([rng.randint(60, 110), rng.randint(150, 200)])
    tint = np.array([level + rng.randint(-12, 12) for _ in range(3)], dtype=np.float32)
    img = np.broadcast_to(tint, (h, w, 3)).copy()
    if kind < 0.3:
        ramp = np.linspace(-25, 25, h if rng.random() < 0.5 else w, dtype=np.float32)
        img += ramp[:, None, None] if ramp.shape[0] == h else ramp[None, :, None]
    elif kind < 0.5:
        img += np.random.default_rng(rng.randrange(1 << 30)).normal(0, 8, (h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- videotestsrc

def render_videotestsrc(pattern, w, h, fmt, props, frame):
    """Frame number `frame` of videotestsrc with these properties, as an RGB array."""
    Gst = gst()
    pipeline = Gst.parse_launch(
        f"videotestsrc name=src num-buffers={frame + 1} ! "
        f"video/x-raw,format={fmt},width={w},height={h},framerate=30/1 ! "
        "videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false max-buffers=2")
    src = pipeline.get_by_name("src")
    src.set_property("pattern", pattern)
    for key, value in props.items():
        src.set_property(key, value)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    sample = None
    for _ in range(frame + 1):
        s = sink.emit("pull-sample")
        if s is None:
            break
        sample = s
    pipeline.set_state(Gst.State.NULL)
    if sample is None:
        raise RuntimeError(f"videotestsrc pattern={pattern} {w}x{h} {fmt} produced no frame")
    buf = sample.get_buffer()
    ok, info = buf.map(Gst.MapFlags.READ)
    if not ok:
        raise RuntimeError("could not map a videotestsrc buffer")
    try:
        stride = (w * 3 + 3) & ~3
        arr = np.frombuffer(info.data, dtype=np.uint8)[: stride * h].reshape(h, stride)[:, : w * 3]
        return arr.reshape(h, w, 3).copy()
    finally:
        buf.unmap(info)


def pattern_sample(rng, name, w, h, fmt):
    """Render one frame of a pattern class with varied parameters; returns (rgb, attrs)."""
    props = {}
    attrs = {"kind": "pattern", "pattern": name}
    frame = rng.choice([0, 0, rng.randint(1, 40), rng.randint(40, 200)])
    gst_pattern = name
    if name in V.SOLID_PATTERNS:
        attrs = {"kind": "solid", "colour": name, "pattern": name}
        how = rng.random()
        if how < 0.15 and name in ("black", "white"):
            gst_pattern = "blink"
            frame = rng.randint(0, 20) * 2 + (0 if name == "black" else 1)
        elif how < 0.35:
            gst_pattern = "solid-color"
            props["foreground-color"] = argb(
                {"black": (0, 0, 0), "white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0),
                 "blue": (0, 0, 255)}[name])
        frame = min(frame, 3) if gst_pattern != "blink" else frame
    elif name == "checkers":
        gst_pattern = rng.choice(["checkers-1", "checkers-2", "checkers-4", "checkers-8", "checkers-8"])
        attrs = {"kind": "checkers", "texture": "checkers", "pattern": "checkers"}
    elif name == "gradient":
        attrs = {"kind": "gradient", "pattern": "gradient"}
    elif name == "snow":
        attrs = {"kind": "noise", "pattern": "snow"}
    elif name in ("smpte", "smpte75", "smpte100", "smpte-rp-219"):
        attrs["family"] = "colorbars"
    if name in ("zone-plate", "chroma-zone-plate"):
        props["kx2"] = rng.randint(4, 48)
        props["ky2"] = rng.randint(4, 48)
        if rng.random() < 0.5:
            props["kt"] = rng.randint(1, 4)
        if rng.random() < 0.2:
            props["kxy"] = rng.randint(1, 10)
        if rng.random() < 0.2:
            props["kt2"] = rng.randint(1, 8)
    if name in ("smpte", "smpte75", "smpte100", "smpte-rp-219", "bar", "colors", "gamut", "snow") \
            and rng.random() < 0.2:
        props["horizontal-speed"] = rng.randint(-12, 12)
    if name == "ball":
        props["motion"] = rng.choice(["wavy", "sweep", "hsweep"])
        frame = rng.randint(0, 240)
    if name in COLOURED_PATTERNS and rng.random() < 0.5:
        fg, bg = rng.sample(V.COLOUR_NAMES, 2)
        if name == "ball":
            while (fg, "circle") in V.HELD_OUT_PAIRS:
                fg, bg = rng.sample(V.COLOUR_NAMES, 2)
        props["foreground-color"] = argb(jitter(rng, fg, 15))
        props["background-color"] = argb(jitter(rng, bg, 15))
    else:
        fg, bg = "white", "black"
    if name == "ball":
        attrs.update({"shape": "circle", "colour": fg, "count": 1, "bg": bg})
    rgb = render_videotestsrc(gst_pattern, w, h, fmt, props, frame)
    return rgb, attrs


# ---------------------------------------------------------------- drawn scenes

def star_points(cx, cy, r, rot, points=5):
    out = []
    for i in range(points * 2):
        rr = r if i % 2 == 0 else r * 0.45
        a = rot + math.pi * i / points - math.pi / 2
        out.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return out


def rotate(points, cx, cy, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def draw_shape(draw, shape, cx, cy, r, colour, rot):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.3)))
    elif shape == "square":
        s = r * 0.85
        draw.polygon(rotate([(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)], cx, cy, rot),
                     fill=colour)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a))
               for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(rotate(pts, cx, cy, rot), fill=colour)
    elif shape == "star":
        draw.polygon(star_points(cx, cy, r, rot), fill=colour)
    elif shape == "cross":
        t = r * 0.32
        arms = [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
        draw.polygon(rotate(arms, cx, cy, rot), fill=colour)
    else:
        raise ValueError(shape)


def shapes_scene(rng, w, h, pairs):
    """1 to 4 shapes of one colour and kind on a named or neutral background."""
    colour, shape = rng.choice(pairs)
    count = rng.choice([1, 1, 1, 2, 3, 4])
    if rng.random() < 0.5:
        bg = rng.choice([c for c in V.COLOUR_NAMES if c != colour])
        img = Image.new("RGB", (w, h), jitter(rng, bg, 20))
    else:
        bg = None
        img = neutral_background(rng, w, h)
    draw = ImageDraw.Draw(img)
    short = min(w, h)
    # The crop CLIP keeps is the central square: place shapes inside it.
    x0, y0 = (w - short) / 2, (h - short) / 2
    base = short * (rng.uniform(0.14, 0.34) if count == 1 else rng.uniform(0.09, 0.17))
    placed = []
    for _ in range(count):
        for _attempt in range(50):
            r = base * rng.uniform(0.85, 1.15)
            cx = x0 + rng.uniform(r + 2, short - r - 2)
            cy = y0 + rng.uniform(r + 2, short - r - 2)
            if all(math.hypot(cx - px, cy - py) > r + pr + 3 for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        draw_shape(draw, shape, cx, cy, r, jitter(rng, colour, 25), rng.uniform(-0.35, 0.35))
    attrs = {"kind": "shapes", "shape": shape, "colour": colour, "count": len(placed), "bg": bg}
    return np.asarray(img), attrs


def texture_scene(rng, w, h):
    """Solid colours, gradients, stripes, checkers and noise, drawn in numpy."""
    kind = rng.choice(["solid", "solid", "solid", "gradient", "stripes", "checkers", "noise"])
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    if kind == "solid":
        colour = rng.choice(V.COLOUR_NAMES)
        rgb = np.broadcast_to(np.array(jitter(rng, colour, 30), np.uint8), (h, w, 3)).copy()
        attrs = {"kind": "solid", "colour": colour}
        if colour in V.SOLID_PATTERNS:
            attrs["pattern"] = colour
        return rgb, attrs
    a, b = (np.array(jitter(rng, c, 25), np.float32) for c in rng.sample(V.COLOUR_NAMES, 2))
    if kind == "gradient":
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx / w * math.cos(angle) + yy / h * math.sin(angle)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        rgb = a * (1 - t[..., None]) + b * t[..., None]
        return rgb.astype(np.uint8), {"kind": "gradient", "pattern": "gradient"}
    if kind == "stripes":
        direction = rng.choice(["vertical", "horizontal"])
        period = max(4, int(min(w, h) * rng.uniform(0.04, 0.2)))
        axis = np.arange(w if direction == "vertical" else h)
        on = ((axis // period) % 2).astype(bool)
        mask = on[None, :] if direction == "vertical" else on[:, None]
        mask = np.broadcast_to(mask, (h, w))
        rgb = np.where(mask[..., None], a, b)
        return rgb.astype(np.uint8), {"kind": "stripes", "direction": direction}
    if kind == "checkers":
        cell = max(4, int(min(w, h) * rng.uniform(0.03, 0.15)))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy // cell + xx // cell) % 2).astype(bool)
        rgb = np.where(mask[..., None], a, b)
        return rgb.astype(np.uint8), {"kind": "checkers", "texture": "checkers", "pattern": "checkers"}
    grey = rng.random() < 0.5
    noise = nrng.integers(0, 256, (h, w, 1 if grey else 3), dtype=np.uint8)
    rgb = np.broadcast_to(noise, (h, w, 3)).copy()
    attrs = {"kind": "noise"}
    if grey:
        attrs["pattern"] = "snow"
    return rgb, attrs


def through_420(rng, rgb):
    """Sometimes pass a drawn scene through 4:2:0 chroma, as an I420/NV12 source would."""
    if rng.random() >= 0.3 or rgb.shape[0] % 2 or rgb.shape[1] % 2:
        return rgb
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr")).astype(np.float32)
    h, w = ycc.shape[:2]
    for c in (1, 2):
        sub = ycc[:, :, c].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        ycc[:, :, c] = np.repeat(np.repeat(sub, 2, axis=0), 2, axis=1)
    return np.asarray(Image.fromarray(np.clip(ycc + 0.5, 0, 255).astype(np.uint8), "YCbCr").convert("RGB"))


# ---------------------------------------------------------------- preprocessing

def clip_crop(rgb):
    """CLIPImageProcessor's resize (shortest edge 224, bicubic) and centre crop, in Pillow."""
    h, w = rgb.shape[:2]
    if w <= h:
        nw, nh = CROP, int(CROP * h / w)
    else:
        nw, nh = int(CROP * w / h), CROP
    img = Image.fromarray(rgb).resize((nw, nh), Image.BICUBIC)
    left, top = (nw - CROP) // 2, (nh - CROP) // 2
    return np.asarray(img.crop((left, top, left + CROP, top + CROP)))


# ---------------------------------------------------------------- pool

TRAIN_PAIRS = [(c, s) for c in V.COLOUR_NAMES for s in V.SHAPE_NAMES if (c, s) not in V.HELD_OUT_PAIRS]


def pool_item(rng):
    w, h = train_size(rng)
    r = rng.random()
    if r < 0.45:
        name = rng.choice(V.PATTERN_NAMES)
        return pattern_sample(rng, name, w, h, rng.choice(FORMATS))
    if r < 0.82:
        rgb, attrs = shapes_scene(rng, w, h, TRAIN_PAIRS)
    else:
        rgb, attrs = texture_scene(rng, w, h)
    return through_420(rng, rgb), attrs


def pool_chunk(args):
    seed, start, count = args
    images = np.empty((count, CROP, CROP, 3), np.uint8)
    attrs = []
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + start + i)
        rgb, a = pool_item(rng)
        images[i] = clip_crop(rgb)
        attrs.append(a)
    return images, attrs


def make_pool(seed, count, out, workers):
    os.makedirs(out, exist_ok=True)
    chunk = 250
    jobs = [(seed, s, min(chunk, count - s)) for s in range(0, count, chunk)]
    images = np.lib.format.open_memmap(os.path.join(out, "images.npy"), mode="w+", dtype=np.uint8,
                                       shape=(count, CROP, CROP, 3))
    attrs = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for n, (imgs, a) in enumerate(pool.imap(pool_chunk, jobs)):
            start = jobs[n][1]
            images[start:start + len(a)] = imgs
            attrs.extend(a)
            print(f"\rpool: {len(attrs)}/{count}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    images.flush()
    with open(os.path.join(out, "attrs.json"), "w") as f:
        json.dump({"seed": seed, "attrs": attrs}, f)


# ---------------------------------------------------------------- evaluation set

def make_eval(seed, per_class, out, small, scenes_per_class=None):
    """PNG frames at unseen sizes and a manifest: task -> prompts and (file, answer) items."""
    os.makedirs(out, exist_ok=True)
    prompts = V.eval_prompts()
    tasks = {name: {"prompts": p, "items": []} for name, p in prompts.items()}
    rng = random.Random(seed)

    def save(task, rgb, answer, stem):
        name = f"{task}-{stem}.png"
        Image.fromarray(rgb).save(os.path.join(out, name), optimize=True)
        tasks[task]["items"].append({"file": name, "answer": answer})

    def add_scenes(k):
        for si, shape in enumerate(V.SHAPE_NAMES):
            w, h = eval_size(rng, small)
            pairs = [(c, s) for c, s in TRAIN_PAIRS if s == shape]
            rgb, attrs = shapes_scene(rng, w, h, pairs)
            rgb = through_420(rng, rgb)
            save("shape", rgb, si, f"{shape}-{k}-{w}x{h}")
            tasks["shape_colour"]["items"].append(
                {"file": tasks["shape"]["items"][-1]["file"], "answer": V.COLOUR_NAMES.index(attrs["colour"])})
        for colour, shape in sorted(V.HELD_OUT_PAIRS):
            w, h = eval_size(rng, small)
            rgb, attrs = shapes_scene(rng, w, h, [(colour, shape)])
            answer = prompts["zero_shot"].index(f"{V.article(colour)} {colour} {shape}")
            save("zero_shot", rgb, answer, f"{colour}-{shape}-{k}-{w}x{h}")

    for k in range(per_class):
        for ci, name in enumerate(V.PATTERN_NAMES):
            w, h = eval_size(rng, small)
            fmt = FORMATS[(k + ci) % len(FORMATS)]
            rgb, _ = pattern_sample(rng, name, w, h, fmt)
            save("pattern", rgb, ci, f"{name}-{k}-{fmt.lower()}-{w}x{h}")
        for ci, colour in enumerate(V.COLOUR_NAMES):
            w, h = eval_size(rng, small)
            rgb = np.broadcast_to(np.array(jitter(rng, colour, 30), np.uint8), (h, w, 3)).copy()
            save("colour", rgb, ci, f"{colour}-{k}-{w}x{h}")
        add_scenes(k)
    # Extra shape and zero-shot scenes (after the rest, so that sets without them are
    # unchanged): a few shape scenes are cheap to keep, and the zero-shot task's ten
    # pairs need many items for its accuracy to mean something.
    for k in range(per_class, max(per_class, scenes_per_class or per_class)):
        add_scenes(k)
    manifest = {"seed": seed, "note": "written by tools/tiny_data.py eval; frame sizes are never multiples of 8",
                "tasks": [{"name": name, **task} for name, task in tasks.items()]}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pool", help="training pool (preprocessed crops + attributes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=24000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", required=True)
    e = sub.add_parser("eval", help="held-out evaluation frames + manifest")
    e.add_argument("--seed", type=int, default=1001)
    e.add_argument("--per-class", type=int, default=20)
    e.add_argument("--scenes-per-class", type=int, default=None,
                   help="shape scenes per shape and zero-shot scenes per held-out pair (default: --per-class)")
    e.add_argument("--small", action="store_true", help="small frames (for the committed test set)")
    e.add_argument("--out", required=True)
    g = sub.add_parser("grid", help="a contact sheet of pool images with captions, to look at")
    g.add_argument("--pool", required=True)
    g.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "pool":
        make_pool(args.seed, args.count, args.out, args.workers)
    elif args.cmd == "eval":
        make_eval(args.seed, args.per_class, args.out, args.small, args.scenes_per_class)
    else:
        images = np.load(os.path.join(args.pool, "images.npy"), mmap_mode="r")
        sheet = Image.new("RGB", (8 * 112, 6 * 112))
        for i in range(min(48, len(images))):
            sheet.paste(Image.fromarray(np.asarray(images[i])).resize((112, 112)), ((i % 8) * 112, (i // 8) * 112))
        sheet.save(args.out)


if __name__ == "__main__":
    main()
