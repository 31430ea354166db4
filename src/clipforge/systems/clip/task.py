"""CLIP pre-training as a task for the generic trainer: image-caption pairs, the symmetric
contrastive loss over the global batch, and the learned temperature clipped at 100."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ...config import CLIPConfig
from ...data import build_dataset
from ...data.loader import ImageTextCollate
from ...distributed import is_distributed, rank
from ...losses import clip_loss, siglip_loss
from ...models import CLIP
from ...settings import setting
from ...train.task import Task
from ...transforms import model_transform


@dataclass(frozen=True)
class CLIPOptions:
    """Training options of the CLIP system (`--set name=value`, or the flags they generate)."""

    lock_image: bool = setting(False, help="freeze the image tower (LiT)")
    lock_image_unlocked: int = setting(0, help="...but train its last N blocks (ViT) or stages (ResNet) and head")
    lock_text: bool = setting(False, help="freeze the text tower")
    lock_text_unlocked: int = setting(0, help="...but train its last N blocks and head")
    local_loss: bool = setting(True, help="distributed: each rank scores its own rows against the global batch")
    grad_checkpointing: bool = setting(False, help="recompute activations in backward (less memory, more compute)")
    loss: str = setting(
        "clip", choices=("clip", "siglip"), help="contrastive softmax (CLIP) or sigmoid (SigLIP; adds a logit bias)"
    )
    csv_image_key: str = setting("", help="CSV/TSV column of image paths (default: filepath/image/path/...)")
    csv_caption_key: str = setting("", help="CSV/TSV column of captions (default: caption/text/title)")

    def __post_init__(self) -> None:
        from ...errors import ConfigError

        if self.lock_image_unlocked < 0 or self.lock_text_unlocked < 0:
            raise ConfigError("lock_image_unlocked and lock_text_unlocked cannot be negative")
        if self.loss not in ("clip", "siglip"):
            raise ConfigError(f"loss must be 'clip' or 'siglip', got {self.loss!r}")


def image_text_dataset(spec: str, config: CLIPConfig, seed: int = 0, columns: tuple[str, str] = ("", "")) -> Dataset:
    """Training pairs of a `--data` spec, augmented for training with the config's preprocessing;
    `columns` names a CSV's image and caption columns where the header's own names are not the usual."""
    size = config.vision.image_size
    dataset, info = build_dataset(spec, model_transform(config, train=True), size, seed=seed, columns=columns)
    if info.get("uncaptioned_images") and rank() == 0:
        print(f"note: {info['uncaptioned_images']} images have no caption file and are not used", file=sys.stderr)
    return dataset


class CLIPTask(Task):
    """Symmetric contrastive loss over the global batch; the temperature is clipped at 100."""

    def __init__(self, model: CLIP, options: CLIPOptions | None = None) -> None:
        super().__init__(model, options or CLIPOptions())
        self._collate = ImageTextCollate(model.config.text.context_length)

    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """Image-caption pairs: synthetic world, CSV/TSV, caption folder or WebDataset shards."""
        o = self.options
        return image_text_dataset(spec, self.model.config, seed, (o.csv_image_key, o.csv_caption_key))

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Images stacked, captions tokenised and trimmed to the batch's longest."""
        return self._collate(items)

    def compile(self, model: CLIP) -> None:
        """Compile each tower's forward (the packed text path's data-dependent lengths break the graph there
        and run eagerly); the loss, gradient caching and optimiser stay as they are. Caption tokens are
        padded to a multiple of 16 (exact: padding after end-of-text never reaches the pooled output), so
        the compiled text tower meets at most 5 lengths instead of re-specialising for each new one."""
        self._collate.multiple = 16
        model.visual.forward = torch.compile(model.visual.forward)
        model.text.forward = torch.compile(model.text.forward, dynamic=True)

    def configure(self, model: CLIP) -> None:
        """Tower locking (LiT) and gradient checkpointing, as the options say."""
        o = self.options
        if o.lock_image:
            model.lock("image", o.lock_image_unlocked)
        if o.lock_text:
            model.lock("text", o.lock_text_unlocked)
        model.set_grad_checkpointing(o.grad_checkpointing)
        if o.loss == "siglip":
            model.add_logit_bias(-10.0)  # SigLIP's initial bias: most pairs are negatives

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Normalised image and text embeddings (B, E) and the scale."""
        out = model(batch["images"], batch["tokens"])
        outputs = {"image": out.image_embeds, "text": out.text_embeds, "scale": out.logit_scale}
        bias = getattr(model, "module", model).logit_bias  # DDP wraps the model
        if bias is not None:
            outputs["bias"] = bias
        return outputs

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The symmetric contrastive loss over the global batch's negatives (or the sigmoid loss)."""
        if self.options.loss == "siglip":
            bias = outputs["bias"]
            return {
                "sigmoid": siglip_loss(
                    outputs["image"], outputs["text"], outputs["scale"], bias, gather=is_distributed()
                )
            }
        loss = clip_loss(
            outputs["image"],
            outputs["text"],
            outputs["scale"],
            gather=is_distributed(),
            local_loss=self.options.local_loss,
        )
        return {"contrastive": loss}

    def after_step(self, model: CLIP) -> None:
        """Keep exp(t) <= the maximum scale, as the paper clips it."""
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(model.max_logit_scale))

    def log_values(self, model: CLIP) -> dict[str, float]:
        """The temperature's scale exp(t)."""
        return {"scale": float(model.scale().detach())}
