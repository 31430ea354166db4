"""CLIP pre-training as a task for the generic trainer."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..distributed import is_distributed
from ..losses import clip_loss
from ..models import CLIP


def configure_model(model: CLIP, cfg: Any) -> None:
    """Apply a TrainConfig's locking (LiT) and gradient checkpointing options to a CLIP model."""
    from ..train.optim import lock_tower

    if cfg.lock_image:
        lock_tower(model.visual, cfg.lock_image_unlocked)
    if cfg.lock_text:
        lock_tower(model.text, cfg.lock_text_unlocked)
    model.set_grad_checkpointing(cfg.grad_checkpointing)


class CLIPTask:
    """Symmetric contrastive loss over the global batch; the temperature is clipped at 100."""

    def __init__(self, model: CLIP, local_loss: bool = True, setup: Any = None) -> None:
        """`setup` (a TrainConfig) applies its tower locking and gradient checkpointing to `model`."""
        self.model = model
        self.local_loss = local_loss if setup is None else setup.local_loss
        if setup is not None:
            configure_model(model, setup)
        self.context_length = model.config.text.context_length

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["images"], batch["tokens"])
        return {"image": out.image_embeds, "text": out.text_embeds, "scale": out.logit_scale}

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "contrastive": clip_loss(
                outputs["image"], outputs["text"], outputs["scale"], gather=is_distributed(), local_loss=self.local_loss
            )
        }

    def after_step(self, model: CLIP) -> None:
        with torch.no_grad():  # keep exp(t) <= max scale, as the paper clips it
            model.logit_scale.clamp_(0, math.log(model.config.max_logit_scale))

    def log_values(self, model: CLIP) -> dict[str, float]:
        return {"scale": float(model.scale().detach())}
