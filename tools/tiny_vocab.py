"""What the bundled cliptag-tiny model knows: classes, colours, shapes, captions.

Pure Python, shared by the data generator (tools/tiny_data.py, run with the
system Python that has GStreamer's bindings) and the trainer
(tools/train_tiny.py, run in the torch environment).

Every image carries a dict of attributes. A caption is a sentence plus the
attributes it asserts (its constraints); a caption is true of an image when
every constraint holds. Training uses that relation for its targets, so "a red
shape" is a correct caption of a red star as well as of a red circle, and the
model is never taught that a true caption is wrong.
"""

import random

# Named colours: base sRGB and the names a caption may use.
COLOURS = {
    "red": ((220, 20, 20), ["red"]),
    "orange": ((255, 140, 0), ["orange"]),
    "yellow": ((250, 230, 20), ["yellow"]),
    "green": ((20, 190, 40), ["green"]),
    "cyan": ((20, 220, 230), ["cyan", "turquoise"]),
    "blue": ((25, 50, 230), ["blue"]),
    "purple": ((140, 30, 200), ["purple", "violet"]),
    "pink": ((255, 120, 190), ["pink"]),
    "white": ((245, 245, 245), ["white"]),
    "black": ((10, 10, 10), ["black"]),
}
COLOUR_NAMES = list(COLOURS)

SHAPES = {
    "circle": ["circle", "disc", "dot"],
    "square": ["square", "box"],
    "triangle": ["triangle"],
    "ring": ["ring", "donut"],
    "star": ["star"],
    "cross": ["cross", "plus sign"],
}
SHAPE_NAMES = list(SHAPES)

# Colour x shape pairs that never appear in training images, not even as a ball
# or one of several shapes: the zero-shot test scores them among all 60 pairs.
HELD_OUT_PAIRS = {
    ("red", "star"),
    ("orange", "ring"),
    ("yellow", "cross"),
    ("green", "triangle"),
    ("cyan", "circle"),
    ("blue", "square"),
    ("purple", "star"),
    ("pink", "triangle"),
    ("white", "ring"),
    ("black", "cross"),
}

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}

# The visually distinct videotestsrc patterns. Merged on purpose:
# checkers-1/2/4/8 are one class (the same red/green board at different
# scales; the fine ones blur to a flat olive field once scaled to 224 px),
# blink is a black or a white frame, solid-color is a solid colour, and
# zone-plate / chroma-zone-plate with every coefficient at zero (their
# default) are a flat grey field. Each class: (canonical prompt, synonyms).
PATTERNS = {
    "smpte": ("smpte color bars", ["smpte colour bars", "an smpte test pattern", "smpte bars with pluge"]),
    "smpte75": ("smpte 75% color bars", ["75 percent color bars", "dim color bars", "75% colour bars"]),
    "smpte100": ("100% color bars", ["full height color bars", "100 percent colour bars", "bright color bars"]),
    "smpte-rp-219": ("smpte rp 219 test pattern", ["rp 219 color bars", "hd test bars rp219"]),
    "snow": ("tv static", ["white noise", "television snow", "random noise", "static noise"]),
    "black": ("a black screen", ["solid black", "a plain black image", "a black frame"]),
    "white": ("a white screen", ["solid white", "a plain white image", "a white frame"]),
    "red": ("a red screen", ["solid red", "a plain red image", "a red frame"]),
    "green": ("a green screen", ["solid green", "a plain green image", "a green frame"]),
    "blue": ("a blue screen", ["solid blue", "a plain blue image", "a blue frame"]),
    "checkers": ("a checkerboard", ["checkers", "a checkered pattern", "a checker board"]),
    "circular": ("concentric circles", ["a circular test pattern", "concentric rings", "a target of rings"]),
    "zone-plate": ("a zone plate", ["a zone plate test pattern", "a zone plate of rings"]),
    "chroma-zone-plate": ("a chroma zone plate", ["a colour zone plate", "a chroma zone plate test pattern"]),
    "gamut": ("gamut checkers", ["a gamut test pattern", "a colour gamut pattern"]),
    "ball": ("a moving ball", ["a bouncing ball", "a ball", "a moving ball test pattern"]),
    "bar": ("a vertical bar", ["a moving bar", "a single bar", "a vertical stripe test pattern"]),
    "pinwheel": ("a pinwheel", ["a pinwheel pattern", "a pinwheel of rays"]),
    "spokes": ("spokes", ["radial lines", "a starburst of thin lines", "spokes of a wheel"]),
    "gradient": ("a gradient", ["a vertical gradient", "a brightness ramp", "a smooth gradient"]),
    "colors": ("a grid of all colors", ["a colors test pattern", "a rainbow colour grid", "all the colours"]),
}
PATTERN_NAMES = list(PATTERNS)
# Patterns that are plain colours: their images are solids of that colour.
SOLID_PATTERNS = {"black", "white", "red", "green", "blue"}


def matches(constraints, attrs):
    """Whether a caption with these constraints is true of an image with these attributes."""
    return all(attrs.get(k) == v for k, v in constraints.items())


def colour_word(rng, name):
    return rng.choice(COLOURS[name][1])


def shape_word(rng, name, plural=False):
    word = rng.choice(SHAPES[name])
    if not plural:
        return word
    if word == "cross" or word == "box" or word == "plus sign":
        return {"cross": "crosses", "box": "boxes", "plus sign": "plus signs"}[word]
    return word + "s"


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def pattern_caption(rng, attrs):
    """A caption for a videotestsrc frame or a procedural scene.

    A caption text always carries the same constraints, whichever kind of image
    it was drawn for: "a checkerboard" asserts pattern=checkers for a
    videotestsrc board and for a drawn one alike.
    """
    kind = attrs["kind"]
    name = attrs.get("pattern")
    if name is not None and (kind == "pattern" or rng.random() < 0.5):
        canon, syns = PATTERNS[name]
        r = rng.random()
        if r < 0.35:
            return canon, {"pattern": name}
        if r < 0.85:
            return rng.choice(syns), {"pattern": name}
        if attrs.get("family") == "colorbars":
            return rng.choice(["color bars", "colour bars", "a tv test pattern with color bars"]), {
                "family": "colorbars"}
        return f"a videotestsrc {name} pattern", {"pattern": name}
    if kind == "solid":
        c = colour_word(rng, attrs["colour"])
        templates = [f"a solid {c} image", f"a plain {c} background", f"{c}", f"an empty {c} frame",
                     f"a uniform {c} picture"]
        return rng.choice(templates), {"kind": "solid", "colour": attrs["colour"]}
    if kind == "gradient":
        return rng.choice(["a colour gradient", "a ramp of colours", "a blend of two colours"]), {
            "kind": "gradient"}
    if kind == "stripes":
        d = attrs["direction"]
        return rng.choice([f"{d} stripes", f"a {d} striped pattern", f"{d} lines"]), {
            "kind": "stripes", "direction": d}
    if kind == "noise":
        return rng.choice(["grainy noise", "a noisy texture", "speckled noise"]), {"kind": "noise"}
    if kind == "checkers":
        return rng.choice(["a chessboard", "a checkered texture", "squares in a grid"]), {"texture": "checkers"}
    raise ValueError(f"no captions for kind {kind}")


def shapes_caption(rng, attrs):
    """A caption for a procedural shapes scene (or a ball frame read as a circle)."""
    shape, colour, count, bg = attrs["shape"], attrs.get("colour"), attrs["count"], attrs.get("bg")
    if colour is None:
        # A greyscale copy: only the shape and the count are still true.
        s = shape_word(rng, shape, plural=count > 1)
        if rng.random() < 0.5:
            return f"{article(s)} {s}" if count == 1 else s, {"shape": shape}
        return f"{NUMBERS[count]} {s}", {"shape": shape, "count": count}
    c = colour_word(rng, colour)
    n = NUMBERS[count]
    r = rng.random()
    if r < 0.30:
        s = shape_word(rng, shape)
        return f"{article(c)} {c} {s}", {"shape": shape, "colour": colour}
    if r < 0.45:
        s = shape_word(rng, shape, plural=count > 1)
        return f"{n} {c} {s}", {"shape": shape, "colour": colour, "count": count}
    if r < 0.60 and bg is not None:
        b = colour_word(rng, bg)
        s = shape_word(rng, shape, plural=count > 1)
        lead = f"{article(c)} {c}" if count == 1 else f"{n} {c}"
        return f"{lead} {s} on {article(b)} {b} background", {"shape": shape, "colour": colour, "count": count,
                                                              "bg": bg}
    if r < 0.75:
        s = shape_word(rng, shape)
        return rng.choice([f"{article(s)} {s}", f"a {s} shape"]), {"shape": shape}
    if r < 0.87:
        return rng.choice([f"{article(c)} {c} shape", f"something {c}", f"{c} shapes"]), {"colour": colour}
    s = shape_word(rng, shape, plural=count > 1)
    return f"{n} {s}", {"shape": shape, "count": count}


def caption(rng, attrs):
    """A random true caption of an image: (text, constraints)."""
    if attrs["kind"] == "shapes" or ("shape" in attrs and rng.random() < 0.35):
        return shapes_caption(rng, attrs)
    if attrs.get("pattern") == "ball" and rng.random() < 0.2:
        c = colour_word(rng, attrs["colour"])
        return f"{article(c)} {c} ball", {"pattern": "ball", "colour": attrs["colour"]}
    return pattern_caption(rng, attrs)


# The prompts the accuracy tests score against, one per class.
def eval_prompts():
    return {
        "pattern": [PATTERNS[p][0] for p in PATTERN_NAMES],
        "colour": [f"a solid {c} image" for c in COLOUR_NAMES],
        "shape_colour": [f"{article(c)} {c} shape" for c in COLOUR_NAMES],
        "shape": [f"a {s}" for s in SHAPE_NAMES],
        "zero_shot": [f"{article(c)} {c} {s}" for c in COLOUR_NAMES for s in SHAPE_NAMES],
    }


if __name__ == "__main__":
    rng = random.Random(0)
    demo = {"kind": "shapes", "shape": "star", "colour": "pink", "count": 3, "bg": "blue"}
    for _ in range(8):
        print(caption(rng, demo))
