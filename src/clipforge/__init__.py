"""clipforge: CLIP and the systems built on it.

>>> import clipforge
>>> model = clipforge.create_model("tiny-vit")
>>> tokens = clipforge.tokenize(["a photo of a cat"])
>>> model.encode_text(tokens).shape
torch.Size([1, 128])
"""

from __future__ import annotations

import os as _os
import sys as _sys
from typing import Any

_TRAINING_COMMANDS = ("train", "quickstart", "study")


def _passive_waits_for_cli_training() -> None:
    """`clipforge train|quickstart|study` run data workers beside PyTorch's OpenMP threads. Those
    threads busy-wait between parallel regions by default, and on a machine with few cores they then
    fight the workers for the cores: on 2 cores the quickstart's training went from 524 to 647
    samples/s with passive waiting (benchmarks/omp_wait.py; README, Performance). The policy is read once, when torch loads,
    so it is set here, before the import; only for those console commands with data workers, and
    never over a value the user set. Library use and other commands keep OpenMP's default, which is
    faster when nothing else competes for the cores."""
    argv = getattr(_sys, "argv", None) or [""]
    if _os.path.basename(argv[0]) not in ("clipforge", "clipforge.exe") or "torch" in _sys.modules:
        return
    if len(argv) < 2 or argv[1] not in _TRAINING_COMMANDS or "OMP_WAIT_POLICY" in _os.environ:
        return
    workers = [v for k, v in zip(argv, argv[1:]) if k == "--workers"]
    workers += [a.split("=", 1)[1] for a in argv if a.startswith("--workers=")]
    if workers and workers[-1] == "0":
        return
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_passive_waits_for_cli_training()

from .checkpoints import load, save
from .config import CLIPConfig, TextConfig, VisionConfig
from .errors import CheckpointError, ClipforgeError, ConfigError, ImageError, TokenizerError, UnknownModelError
from .losses import clip_loss, siglip_loss
from .models import CLIP, CLIPOutput
from .presets import get_config, list_models
from .tokenizer import Tokenizer, get_tokenizer, tokenize
from .transforms import image_transform, load_image

__version__ = "0.1.0"


def create_model(name: str | CLIPConfig, seed: int | None = None, **overrides: Any) -> CLIP:
    """A randomly initialised CLIP model from a preset name (or a CLIPConfig).

    `overrides` replace config fields; towers take dicts: `create_model("ViT-B-32", text={"layers": 6})`.
    An unknown option raises ConfigError naming the valid ones.
    """
    import torch

    cfg = get_config(name) if isinstance(name, str) else name
    if overrides:
        cfg = cfg.replace(**overrides)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CLIP(cfg)
    return CLIP(cfg)


def preprocess(model: CLIP, train: bool = False) -> Any:
    """The image transform matching `model`'s input resolution."""
    return image_transform(model.image_size, train=train)


__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPOutput",
    "CheckpointError",
    "ClipforgeError",
    "ConfigError",
    "ImageError",
    "TextConfig",
    "Tokenizer",
    "TokenizerError",
    "UnknownModelError",
    "VisionConfig",
    "clip_loss",
    "create_model",
    "get_config",
    "get_tokenizer",
    "image_transform",
    "list_models",
    "load",
    "load_image",
    "preprocess",
    "save",
    "siglip_loss",
    "tokenize",
]
