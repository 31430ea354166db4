"""Training checkpoints: written atomically (temporary file, then rename), read back safely."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write, stale_temporaries
from ..errors import CheckpointError, TrainingError


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic: readers see the previous checkpoint or this one, never a half-written file. A failed
    write (a full disk, ...) leaves the previous checkpoint in place and raises TrainingError."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as e:  # torch's writer reports a failed write as a RuntimeError
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise TrainingError(
            f"could not write checkpoint {path} ({reason}); the previous checkpoint is intact: free "
            "space or fix the folder, then rerun with --resume"
        ) from None


def remove_stale_temporaries(path: Path) -> int:
    """Delete temporary files a killed writer of `path` left behind; returns how many."""
    stale = stale_temporaries(path)
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def load_training_state(path: Path) -> dict[str, Any]:
    """A training checkpoint read back (tensors only); CheckpointError if unreadable."""
    from ..checkpoints import check_safe_torch

    check_safe_torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read training checkpoint {path}: {e}") from e


def rng_state() -> dict[str, Any]:
    """The torch (CPU and every GPU) and Python random states, to store in a checkpoint."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by `rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as both runs have (a resume may see fewer)
        for i, gpu_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, i)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# TrainConfig fields that decide a run's trajectory: resuming with other values would not continue it
_TRAJECTORY = (
    "batch_size",
    "seed",
    "lr",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "warmup",
    "optimizer",
    "grad_clip",
    "precision",
)


def check_run_folder(out: Path, ckpt_path: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to lose work: a folder that holds an earlier run is neither overwritten without
    `overwrite` nor silently restarted when `resume` finds no checkpoint. Deletes nothing (the trainer
    removes an overwritten run's checkpoint once every other check has passed)."""
    earlier = ckpt_path.exists() or (out / "metrics.jsonl").exists()
    if resume and not ckpt_path.exists():
        raise TrainingError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start a new run in {out}")
    if not resume and earlier and not overwrite:
        raise TrainingError(
            f"{out} holds an earlier run; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )


def check_resumable(
    state: dict[str, Any],
    train_config: dict[str, Any],
    system: str | None,
    model_config: dict[str, Any] | None,
    path: Path,
    options: dict[str, Any] | None = None,
) -> list[str]:
    """Compare a checkpoint's stored run with the one asked for; raise TrainingError where resuming
    could not continue it (another system, model config or optimisation setting), and return notes on
    the differences it can continue with (a longer or shorter schedule, other task options)."""
    stored_system, stored_model = state.get("system"), state.get("model_config")
    if stored_system is not None and system is not None and stored_system != system:
        raise TrainingError(f"{path} is a {stored_system} run, not {system}; use another --out or --overwrite")
    if stored_model is not None and model_config is not None and stored_model != model_config:
        diff = _differences(stored_model, model_config)
        raise TrainingError(
            f"{path} was trained with another model config ({'; '.join(diff[:6])}); resume with the same "
            "--model and --set values, or pass --overwrite to start over"
        )
    stored = json.loads(state["train_config"]) if isinstance(state.get("train_config"), str) else {}
    bad = [
        f"{k}: {stored[k]!r} -> {train_config.get(k)!r}"
        for k in _TRAJECTORY
        if k in stored and stored[k] != train_config.get(k)
    ]
    if bad:
        raise TrainingError(
            f"{path} was trained with other settings ({'; '.join(bad)}); resume with the same values, "
            "or pass --overwrite to start over"
        )
    notes = [
        f"a different schedule length ({k}: {stored[k]!r} -> {train_config.get(k)!r})"
        for k in ("steps", "epochs")
        if k in stored and stored[k] != train_config.get(k)
    ]
    # other task options may be changed (a run that trains other parameters is refused when the
    # optimiser state does not fit); say which
    stored_options = state.get("task_options")
    if stored_options is not None and options is not None and stored_options != options:
        notes.append(f"other options ({'; '.join(_differences(stored_options, options)[:6])})")
    return notes


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in dict.fromkeys([*a, *b]):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
