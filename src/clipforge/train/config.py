"""Training options of the generic loop: one frozen, validated dataclass. It knows nothing of any
system; a system's own training options live in its task's options dataclass. Each field's help is
what `clipforge train --help` prints (the flags are generated from these fields)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import settings
from ..errors import ConfigError
from ..precision import PRECISIONS
from ..settings import setting


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, precision, accumulation, checkpointing and logging of one training run."""

    out: str = setting(help="output folder: checkpoints/, metrics.jsonl, curves.png, model.safetensors")
    steps: int | None = setting(None, help="optimiser steps (or give --epochs)")
    epochs: float | None = setting(None, help="passes over a dataset of known size (converted to steps)")
    batch_size: int = setting(64, help="global batch: all ranks and all accumulation micro-batches together")
    accum_steps: int = setting(
        1,
        help="micro-batches per step; batch-coupled losses stay exact (gradient caching; BatchNorm in training mode "
        "normalises per micro-batch)",
    )
    lr: float = setting(5e-4, help="peak learning rate")
    weight_decay: float = setting(0.2, help="AdamW decay (not applied to gains, biases, embeddings, temperature)")
    beta1: float = setting(0.9, help="AdamW beta1")
    beta2: float = setting(0.98, help="AdamW beta2")
    eps: float = setting(1e-6, help="AdamW epsilon")
    warmup: int | None = setting(None, help="linear warm-up steps (default: 5%% of the steps, at most 500)")
    grad_clip: float | None = setting(1.0, help="max global gradient norm (0 or none: no clipping)")
    precision: str = setting(
        "auto",
        choices=PRECISIONS,
        help="bf16 autocast (loss in fp32), fp16 autocast with a gradient scaler (GPUs without bf16), fp32, "
        "or auto: bf16 where the hardware multiplies it natively, else fp32",
    )
    seed: int = setting(0, help="seed of initialisation, data order and augmentation")
    workers: int = setting(1, help="data-loading processes per rank (0: load in the training process)")
    log_every: int = setting(10, help="steps between metric lines")
    checkpoint_every_s: float = setting(
        60.0, flag="--checkpoint-every", help="seconds between checkpoints (a crash loses at most this)"
    )
    checkpoint_every_steps: int | None = setting(None, help="also checkpoint every N steps")
    eval_every: int | None = setting(None, help="steps between evaluations (always at the end)")
    on_nan: str = setting(
        "stop", choices=("stop", "skip"), help="at a non-finite loss: stop with a clear message, or skip the step"
    )
    resume: bool = setting(False, help="continue from OUT/checkpoints/last.pt (refused if there is none)")
    overwrite: bool = setting(False, help="replace an earlier run in OUT (refused without it)")
    optimizer: str = setting(
        "adamw", choices=("adamw", "sgd"), help="AdamW (the paper's), or plain SGD (lr x gradient; for checks)"
    )
    sync_batchnorm: bool = setting(
        False, help="distributed GPU runs: BatchNorm statistics over the global batch (SyncBatchNorm)"
    )
    compile: bool = setting(
        False, help="torch.compile what the task compiles (CLIP: both towers); the first steps pay the compile time"
    )
    progress: bool = setting(True, help="progress bar on rank 0")
    report_to: str = setting("", help="also log metrics to: tensorboard and/or wandb (comma-separated)")

    def __post_init__(self) -> None:
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError("give an output folder (--out)")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of steps or epochs")
        if self.steps is not None and self.steps <= 0 or self.epochs is not None and self.epochs <= 0:
            raise ConfigError("steps/epochs must be positive")
        if self.batch_size <= 0 or self.accum_steps <= 0 or self.batch_size % self.accum_steps:
            raise ConfigError(
                f"batch_size {self.batch_size} must be a positive multiple of accum_steps {self.accum_steps}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {self.precision!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.resume and self.overwrite:
            raise ConfigError("give --resume or --overwrite, not both")
        if self.on_nan not in ("stop", "skip"):
            raise ConfigError(f"on_nan must be 'stop' or 'skip', got {self.on_nan!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            object.__setattr__(self, "grad_clip", None)
        for name in ("lr", "log_every", "checkpoint_every_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("checkpoint_every_steps", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive (or left unset), got {getattr(self, name)!r}")
        unknown = set(filter(None, (r.strip() for r in self.report_to.split(",")))) - {"tensorboard", "wandb"}
        if unknown:
            raise ConfigError(f"report_to takes tensorboard and/or wandb, not {', '.join(sorted(unknown))}")
        if self.workers < 0 or self.warmup is not None and self.warmup < 0 or self.weight_decay < 0:
            raise ConfigError("workers, warmup and weight_decay cannot be negative")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; an unknown field is an error naming the valid ones."""
        return settings.from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored in training checkpoints)."""
        return dataclasses.asdict(self)
