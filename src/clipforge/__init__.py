"""clipforge: CLIP and the systems built on it.

>>> import clipforge
>>> model = clipforge.create_model("tiny-vit")
>>> tokens = clipforge.tokenize(["a photo of a cat"])
>>> model.encode_text(tokens).shape
torch.Size([1, 128])

Importing clipforge has no side effects and loads nothing heavy: each public name is imported on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointError,
    ClipforgeError,
    ConfigError,
    ImageError,
    TokenizerError,
    UnknownModelError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load": "checkpoints",
    "save": "checkpoints",
    "CLIPConfig": "config",
    "TextConfig": "config",
    "VisionConfig": "config",
    "clip_loss": "losses",
    "siglip_loss": "losses",
    "CLIP": "models",
    "CLIPOutput": "models",
    "get_config": "presets",
    "list_models": "presets",
    "Evaluator": "registry",
    "Recipe": "registry",
    "System": "registry",
    "Verb": "registry",
    "get_system": "registry",
    "list_systems": "registry",
    "register_system": "registry",
    "Tokenizer": "tokenizer",
    "get_tokenizer": "tokenizer",
    "tokenize": "tokenizer",
    "Task": "train",
    "TrainConfig": "train",
    "image_transform": "transforms",
    "load_image": "transforms",
}

if TYPE_CHECKING:
    from .checkpoints import load, save
    from .config import CLIPConfig, TextConfig, VisionConfig
    from .losses import clip_loss, siglip_loss
    from .models import CLIP, CLIPOutput
    from .presets import get_config, list_models
    from .registry import Evaluator, Recipe, System, Verb, get_system, list_systems, register_system
    from .tokenizer import Tokenizer, get_tokenizer, tokenize
    from .train import Task, TrainConfig
    from .transforms import image_transform, load_image


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def create_model(
    name: str | CLIPConfig, seed: int | None = None, *, pretrained: str | None = None, **overrides: Any
) -> CLIP:
    """A CLIP model from a preset name (or a CLIPConfig), randomly initialised unless `pretrained` names
    weights: `create_model("ViT-B-32", pretrained="openai")` is `load("ViT-B-32")`.

    `overrides` replace config fields; towers take dicts: `create_model("ViT-B-32", text={"layers": 6})`.
    An unknown option raises ConfigError naming the valid ones. With `seed`, the weights are the same
    on every call and the global random state is left untouched.
    """
    if pretrained is not None:
        if overrides or not isinstance(name, str):
            raise ConfigError("pretrained weights fix the architecture: give a preset name and no overrides")
        from .checkpoints import load

        return load(name, tag=pretrained)

    from .models import CLIP
    from .presets import get_config
    from .train.prepare import seeded

    cfg = get_config(name) if isinstance(name, str) else name
    if overrides:
        cfg = cfg.replace(**overrides)
    return seeded(lambda: CLIP.from_config(cfg), seed)


def preprocess(model: CLIP, train: bool = False) -> Any:
    """The image transform `model` expects: its input size, mean/std, interpolation and resize mode."""
    from .transforms import model_transform

    return model_transform(model, train=train)


__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPOutput",
    "CheckpointError",
    "ClipforgeError",
    "ConfigError",
    "Evaluator",
    "ImageError",
    "Recipe",
    "System",
    "Task",
    "TextConfig",
    "Tokenizer",
    "TokenizerError",
    "TrainConfig",
    "UnknownModelError",
    "Verb",
    "VisionConfig",
    "clip_loss",
    "create_model",
    "get_config",
    "get_system",
    "get_tokenizer",
    "image_transform",
    "list_models",
    "list_systems",
    "load",
    "load_image",
    "preprocess",
    "register_system",
    "save",
    "siglip_loss",
    "tokenize",
]
