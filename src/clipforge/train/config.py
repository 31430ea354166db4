"""Training options: one frozen, validated dataclass (a typo is an error naming the valid fields)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    out: str  # output folder: checkpoints/, metrics.jsonl, curves.png, model.safetensors
    steps: int | None = None  # optimiser steps; or give `epochs`
    epochs: float | None = None  # passes over a map-style dataset (converted to steps)
    batch_size: int = 64  # global batch: all ranks and all accumulation micro-batches together
    accum_steps: int = 1  # micro-batches per step; exact for the contrastive loss (gradient caching)
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.2  # AdamW decay, not applied to gains, biases, embeddings, temperature
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int | None = None  # linear warm-up steps (default: 5% of steps, at most 500)
    grad_clip: float | None = 1.0  # max global gradient norm (None: no clipping)
    precision: str = "auto"  # "bf16" autocast (fp32 loss and normalisation), "fp32", or "auto": bf16 where native
    grad_checkpointing: bool = False
    lock_image: bool = False  # freeze the image tower ...
    lock_image_unlocked: int = 0  # ... except its last N blocks/stages (LiT when 0)
    lock_text: bool = False
    lock_text_unlocked: int = 0
    local_loss: bool = True  # distributed: each rank scores its rows against the global batch
    seed: int = 0
    workers: int = 1  # data-loading processes per rank
    log_every: int = 10  # steps between metric lines
    checkpoint_every_s: float = 60.0  # wall-clock seconds between checkpoints (a crash loses at most this)
    checkpoint_every_steps: int | None = None  # also checkpoint every N steps
    eval_every: int | None = None  # steps between task evaluations (always at the end)
    on_nan: str = "stop"  # "stop" with a clear message, or "skip" the step
    resume: bool = False  # continue from out/checkpoints/last.pt if present
    progress: bool = True  # progress bar on rank 0

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of steps or epochs")
        if self.steps is not None and self.steps <= 0 or self.epochs is not None and self.epochs <= 0:
            raise ConfigError("steps/epochs must be positive")
        if self.batch_size <= 0 or self.accum_steps <= 0 or self.batch_size % self.accum_steps:
            raise ConfigError(
                f"batch_size {self.batch_size} must be a positive multiple of accum_steps {self.accum_steps}"
            )
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if self.on_nan not in ("stop", "skip"):
            raise ConfigError(f"on_nan must be 'stop' or 'skip', got {self.on_nan!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
