"""LSeg training as a task for the generic trainer: images with class masks, per-pixel cross-entropy
over the label set's text embeddings (ignore index 255), the CLIP image tower at a tenth of the
decoder's learning rate, the text tower frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data.segmentation import collate_segmentation, remap_table, segmentation_dataset
from ...errors import ConfigError
from ...eval.segmentation import IGNORE_INDEX
from ...settings import setting
from ...train.task import Task
from .model import LSeg


@dataclass(frozen=True)
class LSegOptions:
    """Training options of the LSeg system (`--set name=value`, or the flags they generate)."""

    unseen: str = setting(
        "", help="comma-separated class names never supervised: their pixels are ignored, their names never offered"
    )
    classes: str = setting("", help="class-name list of a segmentation folder (default: ROOT/classes.txt)")
    backbone_lr_scale: float = setting(0.1, help="learning rate of the CLIP image tower relative to --lr (LSeg: 0.1)")
    lock_backbone: bool = setting(False, help="freeze the CLIP image tower: train the decoder only")
    episodes: bool = setting(
        False,
        help="LSeg's zero-shot training: each image offers {background, one of its classes}; every other pixel "
        "is background",
    )

    def __post_init__(self) -> None:
        if self.backbone_lr_scale < 0:
            raise ConfigError(f"backbone_lr_scale cannot be negative, got {self.backbone_lr_scale}")


def training_labels(classes: list[str], unseen: str) -> tuple[list[str], np.ndarray]:
    """The labels offered in training (the classes minus `unseen`) and the mask lookup table mapping
    each class index to its label's index, unseen classes to the ignore index."""
    names = [u.strip() for u in unseen.split(",") if u.strip()]
    unknown = [u for u in names if u not in classes]
    if unknown:
        raise ConfigError(f"unseen classes {unknown} are not among the data's classes: {', '.join(classes)}")
    seen = [c for c in classes if c not in names]
    if not seen:
        raise ConfigError("every class is unseen; leave at least one to train on")
    mapping = {i: (IGNORE_INDEX if c in names else seen.index(c)) for i, c in enumerate(classes)}
    return seen, remap_table(mapping)


def _query(mask: torch.Tensor, labels: int) -> int:
    """One label (not 0, the background) present in `mask`, chosen by a seed drawn from the mask itself
    (the same batch on every rank and after a resume); any label where none is present."""
    import zlib

    present = [int(v) for v in mask.unique() if 0 < int(v) < labels]
    rng = np.random.default_rng(zlib.crc32(mask.numpy().tobytes()))
    return int(rng.choice(present)) if present else int(rng.integers(1, labels)) if labels > 1 else 0


class LSegTask(Task):
    """Per-pixel cross-entropy of text-classified pixel embeddings against class masks."""

    def __init__(self, model: LSeg, options: LSegOptions | None = None) -> None:
        super().__init__(model, options or LSegOptions())
        self.labels: list[str] = []
        self._label_embeds: torch.Tensor | None = None

    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """Images with class masks: synthetic[:n=,split=,max_objects=] (the shapes world, classes
        background + 8 shapes) or a VOC/ADE20K-layout folder (ROOT[:SPLIT]; images, indexed-PNG masks,
        classes.txt; 255 = ignore)."""
        clip_config = self.model.clip.config
        pre = clip_config.preprocess
        ds = segmentation_dataset(
            spec,
            clip_config.vision.image_size,
            pre.mean,
            pre.std,
            train=True,
            seed=seed,
            classes=self.options.classes or None,
        )
        self.labels, ds.remap = training_labels(list(ds.classes), self.options.unseen)
        if self.options.episodes and self.labels[0] != ds.classes[0]:
            raise ConfigError(f"episodes offer class 0 ({ds.classes[0]}) as the background, so it cannot be unseen")
        self._label_embeds = None
        return ds

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Images (B, 3, S, S) and masks (B, S, S); with `episodes`, each image's query class (B,)."""
        batch = collate_segmentation(items)
        if self.options.episodes:
            batch["query"] = torch.tensor([_query(m, len(self.labels)) for m in batch["masks"]])
        return batch

    def configure(self, model: LSeg) -> None:
        """Freeze the image tower if asked."""
        if self.options.lock_backbone:
            for p in model.clip.visual.parameters():
                p.requires_grad_(False)
            model.train(model.training)

    def lr_scale(self, name: str) -> float:
        """The CLIP image tower learns at `backbone_lr_scale` x the decoder's rate."""
        return self.options.backbone_lr_scale if name.startswith("clip.visual.") else 1.0

    def label_embeddings(self, model: LSeg) -> torch.Tensor:
        """(N, E) embeddings of the training labels (the text tower is frozen: computed once)."""
        device = next(model.parameters()).device
        if self._label_embeds is None or self._label_embeds.device != device:
            if not self.labels:
                raise ConfigError("the task has no labels yet: call dataset() first")
            self._label_embeds = model.encode_labels(self.labels)
        return self._label_embeds

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-pixel logits (B, N, S, S) over the training labels, and the masks (B, S, S)."""
        inner = getattr(model, "module", model)  # DDP wraps the model
        logits = model(batch["images"], self.label_embeddings(inner))
        out = {"logits": logits, "masks": batch["masks"]}
        if "query" in batch:
            out["query"] = batch["query"]
        return out

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the pixels that are not ignored (zero where all are)."""
        target = outputs["masks"].long()
        logits = outputs["logits"].float()
        if "query" in outputs:  # {background, query}: the query's pixels are 1, every other kept pixel 0
            query = outputs["query"].long()  # (B,)
            pick = torch.stack([torch.zeros_like(query), query], dim=1)  # (B, 2)
            logits = logits.gather(1, pick[:, :, None, None].expand(-1, -1, *logits.shape[-2:]))
            binary = (target == query[:, None, None]).long()
            target = torch.where(target == IGNORE_INDEX, target, binary)
        if not (target != IGNORE_INDEX).any():
            return {"cross_entropy": logits.sum() * 0.0}
        return {"cross_entropy": F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)}
