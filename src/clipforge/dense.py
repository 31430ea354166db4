"""What every segmenting system shares: a per-image result, label parsing, overlays, and the
`clipforge segment` command, which runs the segmenter of whichever system the checkpoint holds
(`System.segmenter`: LSeg, GroupViT, ...)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ConfigError


@dataclass
class Segmentation:
    """One image's result: the label map at the image's own size and each label's share of it."""

    mask: np.ndarray  # (H, W) index into `labels`
    labels: list[str]
    areas: dict[str, dict[str, float]]  # label -> {"pixels", "fraction"}
    groups: np.ndarray | None = None  # (H, W) group index, for systems that group pixels (GroupViT)

    @classmethod
    def of(cls, mask: np.ndarray, labels: Sequence[str], groups: np.ndarray | None = None) -> Segmentation:
        """The result of a label map: per-label pixel counts and fractions computed from it."""
        mask = np.asarray(mask, dtype=np.int64)
        counts = np.bincount(mask.ravel(), minlength=len(labels))
        total = max(1, mask.size)
        areas = {n: {"pixels": int(c), "fraction": round(float(c) / total, 6)} for n, c in zip(labels, counts)}
        return cls(mask, list(labels), areas, groups)


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """'circle, square,other' -> ['circle', 'square', 'other']; duplicates and empty labels are errors."""
    out = [s.strip() for s in labels.split(",")] if isinstance(labels, str) else [str(s).strip() for s in labels]
    if not out or any(not s for s in out):
        raise ConfigError(f"labels must be non-empty names separated by commas, got {labels!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"labels repeat a name: {labels!r}")
    return out


def palette(n: int) -> np.ndarray:
    """(n, 3) float colours: VOC's palette from index 1."""
    from .eval.segmentation import voc_palette

    return np.array(voc_palette(), dtype=np.float32).reshape(256, 3)[1 : n + 1]


def overlay(image: Image.Image, mask: np.ndarray, labels: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """The image with each label's pixels tinted in its colour (VOC palette from index 1) and a legend."""
    from PIL import ImageDraw

    colours = palette(len(labels))
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    tinted = (1 - alpha) * base + alpha * colours[mask]
    out = Image.fromarray(tinted.clip(0, 255).astype(np.uint8))
    legend = Image.new("RGB", (out.width, 14 * len(labels) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, name in enumerate(labels):
        draw.rectangle((4, 4 + 14 * i, 14, 14 + 14 * i), fill=tuple(int(c) for c in colours[i]))
        draw.text((20, 3 + 14 * i), name, fill=(0, 0, 0))
    canvas = Image.new("RGB", (out.width, out.height + legend.height), (255, 255, 255))
    canvas.paste(out, (0, 0))
    canvas.paste(legend, (0, out.height))
    return canvas


# ------------------------------------------------------------------------------ clipforge segment
def segment_arguments(p: argparse.ArgumentParser, systems: Sequence[str]) -> None:
    """The options of `clipforge segment`; `systems` are those with a segmenter."""
    names = ", ".join(systems)
    p.add_argument("images", nargs="+", help="image files to segment")
    p.add_argument("--model", required=True, help=f"a checkpoint of a segmenting system ({names})")
    p.add_argument("--labels", required=True, help='comma-separated label texts, e.g. "circle,square,background"')
    p.add_argument("--out", default="segments", help="folder for NAME.overlay.png, NAME.mask.png and areas.json")
    p.add_argument("--method", default=None, help=f"the system the model must be ({names}); default: any")
    p.add_argument("--templates", default=None, help="prompt templates of the labels (default: the model's own)")
    p.add_argument(
        "--threshold", type=float, default=None, help="segmenters that name groups: a group whose best label "
        "is less probable is background, the first label (default: the model's)"
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: a GPU if there is one)")


def run_segment(args: argparse.Namespace) -> int:
    """`clipforge segment`: overlays, indexed-PNG label maps and areas.json for each image."""
    from .checkpoints import load
    from .eval.run import pick_device, write_json
    from .eval.segmentation import write_mask
    from .registry import system_of, systems_with
    from .transforms import load_image

    labels = parse_labels(args.labels)
    model = load(args.model)
    system = system_of(model)
    if system.segmenter is None or (args.method and args.method != system.name):
        want = args.method or "a segmenting system"
        trainable = "|".join(systems_with("segmenter"))
        raise ConfigError(f"{args.model} holds a {system.name} model, not {want} (clipforge train {trainable})")
    model = model.to(pick_device(args.device)).eval()
    options = {k: getattr(args, k) for k in ("templates", "threshold") if getattr(args, k) is not None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": args.model, "system": system.name, "labels": labels, "images": {}}
    for path in args.images:
        image = load_image(path).convert("RGB")
        (result,) = system.segmenter(model, [image], labels, **options)
        stem = Path(path).stem
        overlay(image, result.mask, labels).save(out / f"{stem}.overlay.png")
        write_mask(result.mask, out / f"{stem}.mask.png")
        report["images"][str(path)] = {
            "overlay": str(out / f"{stem}.overlay.png"),
            "mask": str(out / f"{stem}.mask.png"),
            "areas": result.areas,
        }
    write_json(report, out / "areas.json")
    print(json.dumps({"images": len(args.images), "out": str(out), "areas": str(out / "areas.json")}))
    return 0
