"""What every detecting system shares: a per-image result, drawing boxes, and the `clipforge detect`
command, which runs the detector of whichever system the checkpoint holds (`System.detector`: ViLD, ...)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError


@dataclass
class Detections:
    """One image's detections, in its own pixels: boxes (D, 4) xyxy, scores (D,), label index (D,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    labels: list[str]

    def coco(self, image_id: int, category_ids: list[int] | None = None) -> list[dict]:
        """COCO results rows ({image_id, category_id, bbox [x, y, w, h], score}); category id = label index
        + 1 unless `category_ids` maps each label."""
        rows = []
        for (x0, y0, x1, y1), s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist()):
            cat = category_ids[c] if category_ids else c + 1
            rows.append({"image_id": image_id, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
        return rows


def draw_detections(image: Image.Image, det: Detections, min_score: float = 0.3, width: int = 2) -> Image.Image:
    """The image with each detection at or above `min_score` drawn as a box in its label's colour, with
    its label and score."""
    from PIL import ImageDraw

    from ..dense import palette

    colours = palette(max(1, len(det.labels)))
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for (x0, y0, x1, y1), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()):
        if s < min_score:
            continue
        colour = tuple(int(v) for v in colours[c])
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        draw.text((x0 + 2, max(0, y0 - 11)), f"{det.labels[c]} {s:.2f}", fill=colour)
    return out


def detect_arguments(p: argparse.ArgumentParser, systems: Sequence[str]) -> None:
    """The options of `clipforge detect`; `systems` are those with a detector."""
    names = ", ".join(systems)
    p.add_argument("images", nargs="+", help="image files to detect objects in")
    p.add_argument("--model", required=True, help=f"a checkpoint of a detecting system ({names})")
    p.add_argument("--labels", required=True, help='comma-separated label texts, e.g. "circle,star,hexagon"')
    p.add_argument("--out", default="detections", help="folder for NAME.boxes.png and detections.json")
    p.add_argument("--method", default=None, help=f"the system the model must be ({names}); default: any")
    p.add_argument("--templates", default=None, help="prompt templates of the labels (default: the model's own)")
    p.add_argument("--min-score", type=float, default=0.3, help="draw boxes scoring at least this (JSON keeps all)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: a GPU if there is one)")


def run_detect(args: argparse.Namespace) -> int:
    """`clipforge detect`: boxes drawn on each image, and every detection as COCO results JSON (image id =
    the image's position from 1; category id = label position from 1; `detections.json` lists both)."""
    from ..checkpoints import load
    from ..dense import parse_labels
    from ..eval.run import pick_device, write_json
    from ..registry import system_of, systems_with
    from ..transforms import load_image

    labels = parse_labels(args.labels)
    model = load(args.model)
    system = system_of(model)
    if system.detector is None or (args.method and args.method != system.name):
        want = args.method or "a detecting system"
        trainable = "|".join(systems_with("detector"))
        raise ConfigError(f"{args.model} holds a {system.name} model, not {want} (clipforge train {trainable})")
    model = model.to(pick_device(args.device)).eval()
    options = {"templates": args.templates} if args.templates else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "model": args.model,
        "system": system.name,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(labels)],
        "images": [],
        "detections": [],
    }
    for i, path in enumerate(args.images):
        image = load_image(path).convert("RGB")
        (det,) = system.detector(model, [image], labels, **options)
        stem = Path(path).stem
        draw_detections(image, det, args.min_score).save(out / f"{stem}.boxes.png")
        report["images"].append({"id": i + 1, "file_name": str(path), "width": image.width, "height": image.height})
        report["detections"] += det.coco(i + 1)
    write_json(report, out / "detections.json")
    print(json.dumps({"images": len(args.images), "detections": len(report["detections"]), "out": str(out)}))
    return 0
