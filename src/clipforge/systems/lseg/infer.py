"""Using a trained LSeg: label maps for any label set (`clipforge segment`), and the evaluator behind
`clipforge eval --task segmentation --model CKPT --data ...`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...data.segmentation import collate_segmentation, segmentation_dataset
from ...dense import Segmentation, parse_labels
from ...errors import ConfigError
from ...eval.segmentation import confusion_matrix, segmentation_scores
from ...transforms import image_to_tensor, load_image
from .model import LSeg


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: LSeg, images: torch.Tensor, label_embeds: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(B, 3, S, S) preprocessed images -> (B, N, S, S) logits (fp32), in batches."""
    model.eval()
    device = _device(model)
    out = [
        model(images[i : i + batch_size].to(device), label_embeds).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def segment(
    model: LSeg,
    images: Iterable[str | Path | Image.Image],
    labels: str | Sequence[str],
    templates: str | None = None,
    threshold: float | None = None,
) -> list[Segmentation]:
    """Label every pixel of each image (a path or PIL image) with one of `labels`; results are at each
    image's own size (the model sees it squashed to its input size, logits resized back)."""
    if threshold is not None:
        raise ConfigError("LSeg gives every pixel its most similar label; --threshold applies to groupvit models")
    labels = parse_labels(labels)
    embeds = model.encode_labels(labels, templates)
    pre, size = model.clip.config.preprocess, model.image_size
    results = []
    for item in images:
        image = (load_image(item) if not isinstance(item, Image.Image) else item).convert("RGB")
        x = image_to_tensor(image.resize((size, size), Image.BILINEAR), pre.mean, pre.std)[None]
        logits = predict(model, x, embeds)  # (1, N, S, S)
        logits = F.interpolate(logits, size=image.size[::-1], mode="bilinear", align_corners=False)
        results.append(Segmentation.of(logits[0].argmax(0).numpy(), labels))
    return results


@torch.no_grad()
def evaluate_segmentation(
    model: LSeg,
    data: str,
    *,
    labels: str | None = None,
    classes: str | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy and FB-IoU of `model` on segmentation data (synthetic or a
    VOC/ADE20K-layout folder), offering the data's class names as labels (or `labels`: one text per
    class, in the class list's order, to name them differently)."""
    pre = model.clip.config.preprocess
    ds = segmentation_dataset(data, model.image_size, pre.mean, pre.std, train=False, classes=classes)
    names = list(ds.classes)
    texts = parse_labels(labels) if labels else names
    if len(texts) != len(names):
        raise ConfigError(f"--labels gives {len(texts)} names for the data's {len(names)} classes ({', '.join(names)})")
    embeds = model.encode_labels(texts)
    n = len(ds) if max_images is None else min(len(ds), max_images)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    from tqdm import tqdm

    for start in tqdm(range(0, n, batch_size), desc="segmentation", unit="batch", leave=False, disable=None):
        items = [ds[i] for i in range(start, min(n, start + batch_size))]
        logits = predict(model, collate_segmentation(items)["images"], embeds, batch_size)
        for item, scores in zip(items, logits):  # scored at each image's own size, as the benchmarks do
            truth = item["truth"]
            if scores.shape[-2:] != truth.shape:
                scores = F.interpolate(scores[None], size=tuple(truth.shape), mode="bilinear", align_corners=False)[0]
            confusion += confusion_matrix(scores.argmax(0), truth, len(names))
    return {**segmentation_scores(confusion, names), "images": n}
