"""Labelled image sets and captioned image sets for evaluation.

Labelled (`--data` for zeroshot / linear-probe / fewshot):
  digits                                    scikit-learn's 8x8 digits (1,797 images), a small real dataset
  synthetic[:split=heldout,label=shape,n=..] the synthetic world; label shape | colour | composite
  path/to/root                              class-folder layout (root/<class>/*.jpg, ImageNet style); with
                                            train/ and val/ (or test/) subfolders those are the splits
Captioned (`--data` for retrieval): synthetic[:split=val,n=..], a .csv/.tsv, a caption folder or .tar shards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.sources import IMAGE_EXTS, parse_data_spec, read_csv_pairs, read_folder_pairs
from ..data.synthetic import COLOUR_NAMES, SHAPES, SyntheticWorld
from ..errors import ConfigError
from ..transforms import load_image

_LABELS = ("shape", "colour", "composite")


def _open(item: Any) -> Image.Image:
    """An evaluation image held as a PIL image, a path, or a zero-argument loader."""
    if isinstance(item, (str, Path)):
        return load_image(item)
    return item() if callable(item) else item


@dataclass
class LabelledImages:
    """Images (PIL images or paths, loaded lazily) with integer labels and class names."""

    images: list[Any]
    labels: list[int]
    classnames: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        """The i-th image as a PIL image, loaded now if held as a path or loader."""
        return _open(self.images[i])


@dataclass
class CaptionedImages:
    """Images (PIL images or paths, loaded lazily) with their captions, for retrieval."""

    images: list[Any]
    captions: list[str]
    caption_image: list[int]  # image index of each caption
    name: str

    def image(self, i: int) -> Image.Image:
        """The i-th image as a PIL image, loaded now if held as a path or loader."""
        return _open(self.images[i])


def _synthetic_options(spec: str) -> dict[str, Any]:
    """Options of `synthetic:split=heldout,label=shape,n=800`; `label` is eval-only, the rest as for training."""
    items = [i for i in spec.partition(":")[2].split(",") if i]
    labels = [i.partition("=")[2] for i in items if i.startswith("label=")]
    opts = dict(parse_data_spec("synthetic:" + ",".join(i for i in items if not i.startswith("label="))).options)
    opts["label"] = labels[-1] if labels else "shape"
    if opts["label"] not in _LABELS:
        raise ConfigError(f"synthetic label must be one of {_LABELS}, got {opts['label']!r}")
    return opts


def synthetic_labelled(
    split: str = "heldout", label: str = "shape", n: int = 800, size: int = 64, seed: int = 0
) -> LabelledImages:
    """One-object scenes labelled by shape, colour or colour-shape composite."""
    world = SyntheticWorld(n, size, split, seed, max_objects=1)
    classnames = {
        "shape": list(SHAPES),
        "colour": list(COLOUR_NAMES),
        "composite": [f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES],
    }[label]
    images, labels = [], []
    for i in range(n):
        scene = world[i]
        obj = scene.objects[0]
        key = {"shape": obj.shape, "colour": obj.colour, "composite": f"{obj.colour} {obj.shape}"}[label]
        images.append(scene.image)
        labels.append(classnames.index(key))
    return LabelledImages(images, labels, classnames, f"synthetic-{split}-{label}")


def digits(split: str = "test", seed: int = 0, test_fraction: float = 0.3) -> LabelledImages:
    """scikit-learn's digits as 8-bit greyscale PIL images, split reproducibly into train/test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    cut = int(len(order) * (1 - test_fraction))
    idx = order[cut:] if split == "test" else order[:cut]
    images = [Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8), "L") for i in idx]
    return LabelledImages(images, [int(d.target[i]) for i in idx], [str(k) for k in range(10)], f"digits-{split}")


def class_folders(root: str | Path, split: str = "test") -> LabelledImages:
    """Image paths under root/<class>/, labelled by sorted folder name ('_' read as a space).
    Split 'train' needs root/train; otherwise root/val or root/test when present, else root itself."""
    root = Path(root)
    names = ("train",) if split == "train" else ("val", "test")
    found = [root / n for n in names if (root / n).is_dir()]
    if found:
        root = found[0]
    elif split == "train":  # probing on the test images themselves would report a leak, not a result
        raise ConfigError(
            f"{root} has no train/ folder: linear-probe and fewshot need root/train and root/val "
            "(zero-shot works on a plain class-folder root)"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"{root} has no class folders (expected root/<class>/*.jpg)")
    images, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        images += [str(f) for f in files]
        labels += [c] * len(files)
    return LabelledImages(images, labels, [c.replace("_", " ") for c in classes], root.name)


def labelled_dataset(spec: str, split: str = "test", image_size: int = 64) -> LabelledImages:
    """The `split` ('test' or 'train') of a labelled `--data` spec: digits, synthetic[:...] or a class-folder root."""
    if spec == "digits":
        return digits(split)
    if spec.startswith("synthetic"):
        # the probe's training images come from the same split as the test images, drawn with another seed
        o = _synthetic_options(spec)
        return synthetic_labelled(
            o.get("split", "heldout"),
            o["label"],
            o.get("n", 800),
            o.get("size", image_size),
            o.get("seed", 0) + (0 if split == "test" else 1000),
        )
    if Path(spec).is_dir():
        ds = class_folders(spec, split)
        if not ds.images:
            raise ConfigError(f"{spec} holds no images in its class folders ({', '.join(IMAGE_EXTS)})")
        return ds
    raise ConfigError(f"cannot use {spec!r} as a labelled dataset: use digits, synthetic[:...] or a class-folder root")


def captioned_dataset(spec: str, image_size: int = 64) -> CaptionedImages:
    """Images with all their captions, for retrieval."""
    ds = parse_data_spec(spec)
    images: list[Any] = []
    captions: list[str] = []
    owner: list[int] = []
    if ds.kind == "synthetic":
        o = ds.options
        world = SyntheticWorld(o.get("n", 500), o.get("size", image_size), o.get("split", "val"), o.get("seed", 0))
        for i in range(len(world)):
            scene = world[i]
            images.append(scene.image)
            for c in dict.fromkeys(scene.captions):  # distinct phrasings
                captions.append(c)
                owner.append(i)
    else:
        if ds.kind == "csv":
            pairs = read_csv_pairs(ds.location)
        elif ds.kind == "folder":
            pairs, _ = read_folder_pairs(ds.location)
        else:
            pairs = _webdataset_pairs(ds.location, image_size)
        index: dict[Any, int] = {}
        for path, caption in pairs:
            key = path if not callable(path) else id(path)
            if key not in index:
                index[key] = len(images)
                images.append(path)
            captions.append(caption)
            owner.append(index[key])
    if not captions:
        raise ConfigError(f"{spec} holds no (image, caption) pairs to evaluate retrieval on")
    return CaptionedImages(images, captions, owner, spec)


def _webdataset_pairs(urls: str, image_size: int) -> list[tuple[Callable[[], Image.Image], str]]:
    import webdataset as wds

    out = []
    for sample in wds.tarfile_to_samples()(iter([{"url": u} for u in wds.shardlists.expand_urls(urls)])):
        key = next((k for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
        if key is None or "txt" not in sample:
            continue
        name = f"sample {sample.get('__key__', '?')} of {sample.get('__url__', urls)}"
        caption = sample["txt"].decode("utf-8", errors="replace").strip()
        out.append((lambda data=sample[key], name=name: load_image(data, name), caption))
    return out
