"""Batched embedding of evaluation images and texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from ..precision import autocast, resolve_precision
from ..tokenizer import tokenize
from ..transforms import model_transform


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def image_features(
    model: torch.nn.Module, dataset: Any, batch_size: int = 128, precision: str = "fp32", progress: bool = False
) -> torch.Tensor:
    """(N, E) unnormalised fp32 image embeddings of `dataset.image(i)` for every i; `precision` is
    "fp32", "bf16" (autocast) or "auto" (bf16 where the device has it natively)."""
    transform = model_transform(model)
    device, feats = _device(model), []
    precision = resolve_precision(precision, device)
    n = len(dataset.images)
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="images", leave=False):
        batch = torch.stack([transform(dataset.image(i)) for i in range(start, min(n, start + batch_size))])
        with autocast(precision, device):
            feats.append(model.encode_image(batch.to(device)).float().cpu())
    return torch.cat(feats)


@torch.no_grad()
def text_features(
    model: torch.nn.Module, texts: Sequence[str], batch_size: int = 256, precision: str = "fp32"
) -> torch.Tensor:
    """(N, E) unnormalised fp32 text embeddings; captions longer than the context are truncated."""
    device, feats = _device(model), []
    precision = resolve_precision(precision, device)
    ctx = model.config.text.context_length
    for start in range(0, len(texts), batch_size):
        tokens = tokenize(list(texts[start : start + batch_size]), context_length=ctx, truncate=True)
        longest = int((tokens != 0).sum(dim=1).max())
        with autocast(precision, device):
            feats.append(model.encode_text(tokens[:, :longest].to(device)).float().cpu())
    return torch.cat(feats)
