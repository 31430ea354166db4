"""GroupViT training as a task for the generic trainer: images and captions only (no mask is ever
read), the image-text contrastive loss on the pooled segments, plus the multi-label contrastive loss
against prompts made from the caption's nouns ("a photo of a {noun}.")."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data import build_dataset
from ...data.loader import ImageTextCollate
from ...data.synthetic import SHAPES
from ...distributed import is_distributed
from ...errors import ConfigError
from ...losses import clip_loss
from ...settings import setting
from ...train.task import Task
from ...transforms import ImageTransform
from .model import GroupViT


@dataclass(frozen=True)
class GroupViTOptions:
    """Training options of the GroupViT system (`--set name=value`, or the flags they generate)."""

    multi_label: int = setting(3, help="prompts per image made from caption nouns (0: the contrastive loss only)")
    multi_label_weight: float = setting(1.0, help="weight of the multi-label contrastive loss")
    nouns: str = setting("", help="file of nouns (one per line) prompts are made from (default: the shapes world's)")
    prompt: str = setting("a photo of a {}.", help="the template a noun is put into")
    lock_text: bool = setting(True, help="freeze the text tower (a trained one from --clip: LiT-style)")
    local_loss: bool = setting(True, help="distributed: each rank scores its own rows against the global batch")

    def __post_init__(self) -> None:
        if self.multi_label < 0 or self.multi_label_weight < 0:
            raise ConfigError("multi_label and multi_label_weight cannot be negative")
        if self.prompt.count("{}") != 1:
            raise ConfigError(f"prompt needs exactly one '{{}}' for the noun, got {self.prompt!r}")


def load_nouns(spec: str) -> frozenset[str]:
    """The noun vocabulary: a file of one noun per line, or the synthetic world's shape names."""
    if not spec:
        return frozenset(SHAPES)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"nouns file {spec} does not exist (one noun per line)")
    nouns = frozenset(w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip())
    if not nouns:
        raise ConfigError(f"nouns file {spec} lists no nouns")
    return nouns


def caption_prompts(caption: str, nouns: frozenset[str], k: int, template: str) -> list[str]:
    """`k` prompts for a caption: up to `k` distinct nouns of it (chosen by a seed drawn from the caption)
    each put into `template`; the caption itself pads the list where it has fewer nouns (as GroupViT's code)."""
    found = list(dict.fromkeys(w for w in re.findall(r"[a-z]+", caption.lower()) if w in nouns))
    if len(found) > k:
        rng = np.random.default_rng(zlib.crc32(caption.encode()))
        found = [found[i] for i in sorted(rng.choice(len(found), k, replace=False))]
    return [template.format(w) for w in found] + [caption] * (k - len(found))


class GroupViTTask(Task):
    """Image-caption contrastive loss plus the multi-label loss against noun prompts."""

    def __init__(self, model: GroupViT, options: GroupViTOptions | None = None) -> None:
        super().__init__(model, options or GroupViTOptions())
        self._collate = ImageTextCollate(model.config.text.context_length)
        self._nouns = load_nouns(self.options.nouns)

    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """Image-caption pairs (no masks): synthetic world, CSV/TSV, caption folder or WebDataset shards."""
        c = self.model.config
        p = c.preprocess
        transform = ImageTransform(
            c.image_size, train=True, mean=p.mean, std=p.std, interpolation=p.interpolation, resize_mode=p.resize_mode
        )
        return build_dataset(spec, transform, c.image_size, seed=seed)[0]

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Images, caption tokens, and (B, K, L) tokens of each caption's K noun prompts."""
        batch = self._collate(items)
        k = self.options.multi_label
        if k:
            from ...tokenizer import get_tokenizer

            prompts = [p for c in batch["captions"] for p in caption_prompts(c, self._nouns, k, self.options.prompt)]
            tokens = get_tokenizer()(prompts, context_length=self._collate.context_length, truncate=True)
            longest = int((tokens != 0).sum(dim=1).max())
            batch["prompts"] = tokens[:, :longest].reshape(len(items), k, longest)
        return batch

    def configure(self, model: GroupViT) -> None:
        """Freeze the text tower if asked (default: a trained one from --clip stays as it is)."""
        if self.options.lock_text:
            for p in model.text.parameters():
                p.requires_grad_(False)
            model.logit_scale.requires_grad_(False)
        if not self.options.multi_label or not self.options.multi_label_weight:  # its temperature goes unused
            model.multi_label_logit_scale.requires_grad_(False)

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Normalised pooled image (B, E), caption (B, E) and prompt (B, K, E) embeddings and the scales."""
        inner = getattr(model, "module", model)
        image = F.normalize(model(batch["images"]).float(), dim=-1)
        out = {"image": image, "ml_scale": inner.multi_label_scale()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.options.lock_text):
            out["text"] = F.normalize(inner.encode_text(batch["tokens"]).float(), dim=-1)
            out["scale"] = inner.scale()
            if "prompts" in batch:
                B, K, L = batch["prompts"].shape
                prompts = inner.encode_text(batch["prompts"].reshape(B * K, L)).float()
                out["prompts"] = F.normalize(prompts, dim=-1).view(B, K, -1)
        return out

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L_IT (symmetric InfoNCE over the global batch) + weight x L_ML (each image against every
        prompt of the batch, soft target 1/K on its own; each prompt against every image)."""
        losses = {
            "contrastive": clip_loss(
                outputs["image"],
                outputs["text"],
                outputs["scale"],
                gather=is_distributed(),
                local_loss=self.options.local_loss,
            )
        }
        if "prompts" in outputs and self.options.multi_label_weight > 0:
            image, prompts = outputs["image"], outputs["prompts"]
            B, K, _ = prompts.shape
            logits = outputs["ml_scale"] * image @ prompts.reshape(B * K, -1).T  # (B, B*K)
            owner = torch.arange(B, device=image.device).repeat_interleave(K)  # (B*K,)
            target = (owner[None, :] == torch.arange(B, device=image.device)[:, None]).float() / K
            image_side = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
            prompt_side = F.cross_entropy(logits.T, owner)
            losses["multi_label"] = self.options.multi_label_weight * 0.5 * (image_side + prompt_side)
        return losses

    def after_step(self, model: GroupViT) -> None:
        """Keep both temperatures' scales at most `max_logit_scale`."""
        with torch.no_grad():
            for p in (model.logit_scale, model.multi_label_logit_scale):
                p.clamp_(0, np.log(model.max_logit_scale))

    def log_values(self, model: GroupViT) -> dict[str, float]:
        """The contrastive scale exp(t)."""
        return {"scale": float(model.scale().detach())}
