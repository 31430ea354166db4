"""Training checkpoints: written atomically (temporary file, then rename), read back safely."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write, stale_temporaries
from ..errors import CheckpointError


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic: readers see the previous checkpoint or this one, never a half-written file."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def remove_stale_temporaries(path: Path) -> int:
    """Delete temporary files a killed writer of `path` left behind; returns how many."""
    stale = stale_temporaries(path)
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read training checkpoint {path}: {e}") from e


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
