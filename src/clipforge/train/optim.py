"""AdamW with the CLIP paper's parameter groups, and the cosine schedule with warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Gains, biases, embeddings and the temperature are not weight-decayed."""
    return param.ndim < 2 or "embedding" in name or name.endswith("logit_scale")


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    kind: str = "adamw",
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.Optimizer:
    """Fused AdamW (or plain SGD) over the trainable parameters, without weight decay where
    `no_decay` says. SGD takes lr x gradient steps, so checks can see the gradient's scale.
    `lr_scale(name)` multiplies a parameter's learning rate (a task's `lr_scale` hook: e.g. a
    pretrained backbone at a tenth of a new head's rate); the schedule scales every group alike."""
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {(False, 1.0): [], (True, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (no_decay(name, p), float(lr_scale(name)) if lr_scale else 1.0)
            groups.setdefault(key, []).append(p)
    groups = [
        {"params": params, "weight_decay": 0.0 if plain else weight_decay, "lr": lr * scale}
        for (plain, scale), params in groups.items()
    ]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    # the fused kernel: one pass over all parameters (faster than foreach on CPU and GPU; benchmarks/levers.py)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak, then cosine decay to zero at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
