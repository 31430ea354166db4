"""Transformer MLP and the activations CLIP checkpoints were trained with."""

from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise; the output has the shape of `x`."""
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    """The activation a config names: 'gelu' (exact `nn.GELU`) or 'quick_gelu' (OpenAI's weights)."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; use 'gelu' or 'quick_gelu'")


class Mlp(nn.Module):
    """Linear -> activation -> Linear (names `c_fc`, `c_proj` as in OpenAI checkpoints)."""

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_act(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., width) -> (..., hidden) -> activation -> (..., width)."""
        return self.c_proj(self.gelu(self.c_fc(x)))
