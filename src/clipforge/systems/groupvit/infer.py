"""Zero-shot segmentation with a trained GroupViT: pixel -> group through the product of the stages'
soft assignment maps (upsampled), group -> class by CLIP-style zero-shot over the label set, and
background where a group's best class probability is under the threshold. The first label names the
background; it is never embedded, only assigned by the threshold (as GroupViT's evaluation does), and,
for a model with a learned background embedding, also where a group is closer to it than to every class."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
from ...eval.zeroshot import zero_shot_classifier
from ...transforms import image_to_tensor, load_image
from .model import GroupViT


@dataclass
class GroupLabels:
    """A batch's dense result at the model's input size."""

    labels: torch.Tensor  # (B, S, S) index into the label set (0: background)
    groups: torch.Tensor  # (B, S, S) final group of each pixel
    group_probs: torch.Tensor  # (B, G, N-1) each group's class probabilities (classes = labels[1:]; with a
    # learned background, the softmax also ran over it, whose share is left out)
    image_probs: torch.Tensor  # (B, N-1) the pooled image's class probabilities (no grouping)


def class_embeddings(model: GroupViT, classes: Sequence[str], templates: str | None = None) -> torch.Tensor:
    """(N, E) unit-norm embeddings of class names, averaged over `templates` (default: the model's)."""
    if not classes:
        raise ConfigError("give at least one class label besides the background")
    with torch.autocast(next(model.parameters()).device.type, enabled=False):
        return zero_shot_classifier(model, list(classes), templates or model.config.templates).weights


@torch.no_grad()
def group_labels(model: GroupViT, images: torch.Tensor, classes: torch.Tensor, threshold: float) -> GroupLabels:
    """Label every pixel of (B, 3, S, S) preprocessed images; `classes` (N-1, E) excludes the background."""
    return group_predictions(model, images, classes).labelled(threshold)


@dataclass
class GroupPredictions:
    """One forward's groups and class probabilities, to be thresholded (`labelled`) any number of times."""

    groups: torch.Tensor  # (B, S, S) each pixel's final group
    group_probs: torch.Tensor  # (B, G, N-1) each group's class probabilities
    is_background: torch.Tensor  # (B, G) groups the learned background takes (all False without one)
    image_probs: torch.Tensor  # (B, N-1) the pooled image's class probabilities

    def labelled(self, threshold: float) -> GroupLabels:
        """Background where a group's best class is under `threshold` (but the threshold never takes every
        group of an image; a learned background may: a photo of none of the classes) or the learned
        background takes it; otherwise the group's best class (1-based)."""
        best, cls = self.group_probs.max(dim=-1)  # (B, G)
        cut = torch.minimum(torch.full_like(best[:, :1], threshold), best.max(dim=1, keepdim=True).values)
        group_label = torch.where((best < cut) | self.is_background, torch.zeros_like(cls), cls + 1)  # (B, G)
        labels = group_label.gather(1, self.groups.flatten(1)).view_as(self.groups)
        return GroupLabels(labels.cpu(), self.groups.cpu(), self.group_probs.cpu(), self.image_probs.cpu())


def group_predictions(model: GroupViT, images: torch.Tensor, classes: torch.Tensor) -> GroupPredictions:
    """The forward half of `group_labels`: pixel groups and group/image class probabilities."""
    model.eval()
    out = model.image_groups(images.to(next(model.parameters()).device))
    scale = model.scale().float()
    segments = F.normalize(out.segments.float(), dim=-1)
    background = getattr(model, "background_embedding", None)
    if background is not None:  # the softmax runs over the classes and the learned background
        with_bg = torch.cat([classes, F.normalize(background.float(), dim=-1)[None]])
        probs = (scale * segments @ with_bg.T).softmax(dim=-1)  # (B, G, N)
        group_probs, is_background = probs[..., :-1], probs.argmax(dim=-1) == classes.shape[0]
    else:
        group_probs = (scale * segments @ classes.T).softmax(dim=-1)  # (B, G, N-1)
        is_background = torch.zeros(group_probs.shape[:2], dtype=torch.bool, device=group_probs.device)
    image_probs = (scale * F.normalize(out.pooled.float(), dim=-1) @ classes.T).softmax(dim=-1)  # (B, N-1)
    maps = model.pixel_groups(out.hard if model.config.maps == "hard" else out.soft, images.shape[-2:])
    return GroupPredictions(maps.argmax(dim=1), group_probs, is_background, image_probs)


def segment(
    model: GroupViT,
    images: Iterable[str | Path | Image.Image],
    labels: str | Sequence[str],
    templates: str | None = None,
    threshold: float | None = None,
) -> list[Segmentation]:
    """Label every pixel of each image with one of `labels` (the first: background); results are at each
    image's own size, with each pixel's group."""
    labels = parse_labels(labels)
    if len(labels) < 2:
        raise ConfigError("give the background label first, then at least one class")
    embeds = class_embeddings(model, labels[1:], templates)
    threshold = model.config.threshold if threshold is None else threshold
    p, size = model.config.preprocess, model.image_size
    results = []
    for item in images:
        image = (load_image(item) if not isinstance(item, Image.Image) else item).convert("RGB")
        x = image_to_tensor(image.resize((size, size), Image.BILINEAR), p.mean, p.std)[None]
        r = group_labels(model, x, embeds, threshold)
        shape = image.size[::-1]
        mask = F.interpolate(r.labels[None].float(), size=shape, mode="nearest")[0, 0].long().numpy()
        groups = F.interpolate(r.groups[None].float(), size=shape, mode="nearest")[0, 0].long().numpy()
        results.append(Segmentation.of(mask, labels, groups))
    return results


@torch.no_grad()
def evaluate_segmentation(
    model: GroupViT,
    data: str,
    *,
    labels: str | None = None,
    classes: str | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """mIoU (background included, as VOC), per-class IoU, pixel accuracy and FB-IoU of zero-shot
    segmentation on data with class masks whose class 0 is the background."""
    p = model.config.preprocess
    ds = segmentation_dataset(data, model.image_size, p.mean, p.std, train=False, classes=classes)
    names = list(ds.classes)
    texts = parse_labels(labels) if labels else names
    if len(texts) != len(names):
        raise ConfigError(f"--labels gives {len(texts)} names for the data's {len(names)} classes ({', '.join(names)})")
    embeds = class_embeddings(model, texts[1:])
    threshold = model.config.threshold if threshold is None else threshold
    n = len(ds) if max_images is None else min(len(ds), max_images)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    for start in range(0, n, batch_size):
        items = [ds[i] for i in range(start, min(n, start + batch_size))]
        r = group_labels(model, collate_segmentation(items)["images"], embeds, threshold)
        for item, pred in zip(items, r.labels):
            truth = item["truth"]
            if pred.shape != truth.shape:
                pred = F.interpolate(pred[None, None].float(), size=tuple(truth.shape), mode="nearest")[0, 0].long()
            confusion += confusion_matrix(pred, truth, len(names))
    return {**segmentation_scores(confusion, names), "images": n, "threshold": threshold}
