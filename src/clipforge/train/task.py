"""The one interface between a system and the generic trainer.

A system subclasses `Task` and implements `forward` and `loss` (and usually `dataset` and `collate`);
every other hook is declared here with a default, so the trainer calls them unconditionally and a
system overrides only what it needs.

`forward(model, batch)` returns per-sample outputs with a leading batch dimension (and scalars);
`loss(outputs)` returns named losses that are summed into the objective. Keeping the two apart lets
the trainer accumulate gradients exactly for batch-coupled losses such as the contrastive loss
(gradient caching: see `clipforge.train.loop`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..registry import NoOptions


class Task:
    """Base class of every system's training task. `options` is the system's options dataclass."""

    def __init__(self, model: nn.Module, options: Any = None) -> None:
        self.model = model
        self.options = options if options is not None else NoOptions()
        self.step = 0  # optimiser steps done before the current one (the trainer sets it; for schedules)

    # --- data ---------------------------------------------------------------------------------
    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """The training data a `--data` spec names, as samples `collate` understands."""
        raise ConfigError(f"{type(self).__name__} does not read training data from a --data spec")

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """A batch (a dict of tensors, lists and scalars) from a list of dataset samples."""
        return torch.utils.data.default_collate(items)

    # --- the objective ------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample outputs (leading batch dimension) and scalars of `model` on `batch`."""
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named scalar losses of `forward`'s outputs; the trainer minimises their sum."""
        raise NotImplementedError

    # --- optional hooks -----------------------------------------------------------------------
    def configure(self, model: nn.Module) -> None:
        """Prepare `model` before the optimiser is built (freeze parts, gradient checkpointing ...)."""

    def train_mode(self, model: nn.Module) -> None:
        """Put `model` in training mode (a system may keep frozen parts in eval mode)."""
        model.train()

    def compile(self, model: nn.Module) -> None:
        """`--compile`: torch.compile the parts worth compiling, in place (the module's own `forward`, so
        parameter names and checkpoints do not change). Default: the whole model's forward."""
        model.forward = torch.compile(model.forward)

    def check_accumulation(self) -> None:
        """Raise ConfigError if `--accum-steps` > 1 cannot be exact for this task's losses: gradient caching
        re-splits `forward`'s outputs by rows, so each must be per-sample (or a scalar)."""

    def lr_scale(self, name: str) -> float:
        """Multiplier of the learning rate of parameter `name` (1: the run's --lr)."""
        return 1.0

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step (clamp a parameter, update an EMA ...)."""

    def log_values(self, model: nn.Module) -> dict[str, float]:
        """Extra values for each metrics line and the progress bar (e.g. a temperature)."""
        return {}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics computed during training every `eval_every` steps and at the end (none by default)."""
        return {}
