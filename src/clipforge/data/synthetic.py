"""A procedurally rendered world of coloured shapes with natural-language captions.

Every sample is a pure function of (seed, split, index), at any resolution, so datasets of any size
need no files and reproduce exactly. Each sample carries what later systems need: captions in many
phrasings, per-pixel instance and class masks, boxes with their phrases, and attribute labels.

Compositional splits: `HELDOUT_PAIRS` lists colour-shape combinations that never appear in the
`train` split (neither in its images nor its captions). The `heldout` split shows one of those
objects per image, so zero-shot accuracy there measures generalisation to unseen compositions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross")
COLOURS = {
    "red": (215, 38, 38),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 205, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
    "pink": (240, 120, 185),
    "cyan": (40, 200, 210),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
BACKGROUNDS = {"grey": (128, 128, 128), "white": (240, 240, 236), "black": (22, 22, 26), "beige": (215, 200, 170)}
# one unseen colour per shape, a Latin-square diagonal: every shape and every colour is still seen in training
HELDOUT_PAIRS = frozenset((SHAPES[i], COLOUR_NAMES[(3 * i + 1) % 8]) for i in range(8))
SPLITS = ("train", "val", "heldout")

_ONE = [
    "a {size} {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a {colour} {shape}",
    "a {colour} {shape} on a {bg} background",
    "there is a {colour} {shape} in the {pos}",
    "an image of a {size} {colour} {shape}",
    "a picture showing one {colour} {shape}",
    "a {colour} {shape} near the {pos}",
    "one {size} {shape}, coloured {colour}",
    "a drawing of a {colour} {shape}",
    "{colour} {shape}",
    "a {shape} that is {colour}",
]
# Captions that leave out the colour (or the shape), as real captions often leave out attributes.
_ONE_NO_COLOUR = [
    "a {size} {shape}",
    "a photo of a {shape}",
    "a {shape} on a {bg} background",
    "a {shape} in the {pos}",
    "a drawing of a {shape}",
    "one {shape}",
]
_ONE_NO_SHAPE = ["a {colour} shape", "a {size} {colour} object", "something {colour} on a {bg} background"]
_MANY = [
    "{list}",
    "a picture of {list}",
    "{list} on a {bg} background",
    "an image with {list}",
    "{n} shapes: {list}",
    "a photo showing {list}",
]
_PAIR = ["{a} to the left of {b}", "{a} and {b}", "{a} above {b}"]
_NUMBERS = {2: "two", 3: "three", 4: "four"}


@dataclass
class SceneObject:
    """One drawn object: its shape, colour, size, position name, pixel box and caption phrase."""

    shape: str
    colour: str
    size: str
    position: str  # "top left", "centre", ...
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (inclusive-exclusive)
    phrase: str  # e.g. "a small red circle"


@dataclass
class Scene:
    """One rendered sample: image, captions, objects, background and per-pixel instance/class masks."""

    image: Image.Image
    caption: str  # the caption this sample trains with
    captions: list[str]  # several phrasings of the same scene
    objects: list[SceneObject]
    background: str
    instance_mask: np.ndarray  # (H, W) int: 0 background, i + 1 for objects[i]
    class_mask: np.ndarray  # (H, W) int: 0 background, SHAPES.index(shape) + 1
    attributes: dict = field(default_factory=dict)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    def ring(n: int, r0: float, phase: float) -> list[tuple[float, float]]:
        return [
            (cx + r0 * math.cos(phase + 2 * math.pi * k / n), cy + r0 * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if shape == "square":
        return [
            (cx - r * 0.8, cy - r * 0.8),
            (cx + r * 0.8, cy - r * 0.8),
            (cx + r * 0.8, cy + r * 0.8),
            (cx - r * 0.8, cy + r * 0.8),
        ]
    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)]
    if shape == "pentagon":
        return ring(5, r, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0)
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, r * 0.42, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = r * 0.33, r
        return [
            (cx - a, cy - b),
            (cx + a, cy - b),
            (cx + a, cy - a),
            (cx + b, cy - a),
            (cx + b, cy + a),
            (cx + a, cy + a),
            (cx + a, cy + b),
            (cx - a, cy + b),
            (cx - a, cy + a),
            (cx - b, cy + a),
            (cx - b, cy - a),
            (cx - a, cy - a),
        ]
    return None  # circle


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: int | tuple) -> None:
    poly = _polygon(shape, cx, cy, r)
    if poly is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def _articles(text: str) -> str:
    """'a orange' -> 'an orange'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _position_name(cx: float, cy: float, size: int) -> str:
    col = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
    row = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
    return f"{row} {col}".strip() or "centre"


class SyntheticWorld:
    """Indexable dataset of `Scene`s. `split` is 'train', 'val' (seen compositions) or 'heldout'."""

    def __init__(
        self, num_samples: int = 10_000, image_size: int = 64, split: str = "train", seed: int = 0, max_objects: int = 3
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        if image_size < 16:
            raise ValueError("image_size must be at least 16 pixels")
        self.num_samples, self.image_size, self.split = num_samples, image_size, split
        self.seed, self.max_objects = seed, max_objects

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index])

    def _pick_pair(self, rng: np.random.Generator, heldout: bool) -> tuple[str, str]:
        while True:
            shape, colour = SHAPES[rng.integers(8)], COLOUR_NAMES[rng.integers(8)]
            if ((shape, colour) in HELDOUT_PAIRS) == heldout:
                return shape, colour

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng, size = self._rng(index), self.image_size
        n = 1 if self.split == "heldout" else int(rng.integers(1, self.max_objects + 1))
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        base = np.array(BACKGROUNDS[bg], dtype=np.float32)
        noise = rng.normal(0, 6, (size, size, 1)).astype(np.float32)  # varied, textured backgrounds
        shade = np.linspace(-12, 12, size, dtype=np.float32)[None, :, None] * rng.choice([-1, 1])
        image = Image.fromarray(np.clip(base + noise + shade, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        inst = Image.new("L", (size, size), 0)
        inst_draw = ImageDraw.Draw(inst)
        objects: list[SceneObject] = []
        placed: list[tuple[float, float, float]] = []
        for _ in range(n):
            shape, colour = self._pick_pair(rng, heldout=self.split == "heldout")
            if any(o.shape == shape and o.colour == colour for o in objects):
                continue
            sz = SIZES[rng.integers(2)] if n == 1 else SIZES[0]
            r = size * (0.32 if sz == "large" else 0.17) * rng.uniform(0.9, 1.1)
            for _try in range(20):
                cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
                if all(math.hypot(cx - px, cy - py) > r + pr + 1 for px, py, pr in placed):
                    break
            else:
                continue
            placed.append((cx, cy, r))
            fill = tuple(int(np.clip(c + rng.normal(0, 8), 0, 255)) for c in COLOURS[colour])
            _draw(draw, shape, cx, cy, r, fill)
            _draw(inst_draw, shape, cx, cy, r, len(objects) + 1)
            objects.append(
                SceneObject(
                    shape, colour, sz, _position_name(cx, cy, size), (0, 0, 0, 0), _articles(f"a {sz} {colour} {shape}")
                )
            )
        instance_mask = np.asarray(inst, dtype=np.int64)
        class_mask = np.zeros_like(instance_mask)
        for i, obj in enumerate(objects):
            ys, xs = np.nonzero(instance_mask == i + 1)
            obj.box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            class_mask[instance_mask == i + 1] = SHAPES.index(obj.shape) + 1
        captions = self._captions(objects, bg, rng)
        return Scene(
            image,
            captions[0],
            captions,
            objects,
            bg,
            instance_mask,
            class_mask,
            {
                "shapes": [o.shape for o in objects],
                "colours": [o.colour for o in objects],
                "sizes": [o.size for o in objects],
                "background": bg,
            },
        )

    def _captions(self, objects: list[SceneObject], bg: str, rng: np.random.Generator) -> list[str]:
        out = []
        for _ in range(4):
            if len(objects) == 1:
                o = objects[0]
                u = rng.random()
                pool = _ONE_NO_COLOUR if u < 0.3 else _ONE_NO_SHAPE if u < 0.4 else _ONE
                tpl = pool[rng.integers(len(pool))]
                out.append(tpl.format(size=o.size, colour=o.colour, shape=o.shape, bg=bg, pos=o.position))
                continue
            order = rng.permutation(len(objects))
            no_colour = rng.random() < 0.3
            phrases = [
                f"a {objects[i].shape}" if no_colour else f"a {objects[i].colour} {objects[i].shape}" for i in order
            ]
            if len(objects) == 2 and rng.random() < 0.4:
                a, b = objects[order[0]], objects[order[1]]
                rel = "to the left of" if a.box[0] < b.box[0] else "to the right of"
                out.append(f"a {a.colour} {a.shape} {rel} a {b.colour} {b.shape}")
                continue
            listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
            tpl = _MANY[rng.integers(len(_MANY))]
            out.append(tpl.format(list=listed, bg=bg, n=_NUMBERS.get(len(objects), len(objects))))
        return [_articles(c) for c in out]
