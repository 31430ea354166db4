"""Frozen, validated configuration dataclasses for CLIP models.

A config is plain data: it fully determines the architecture. `from_dict` rejects unknown
keys (a typo is an error naming the valid keys, never a silent default); every size is checked
when the config is built, so a bad value is a one-line `ConfigError`, not a failure deep in a layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import settings
from .errors import ConfigError

ACTIVATIONS = ("gelu", "quick_gelu")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _positive(where: str, **values: Any) -> None:
    for name, value in values.items():
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(is_number and value > 0, f"{where}.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    """Image tower: a ViT (`kind="vit"`) or OpenAI's ModifiedResNet (`kind="resnet"`)."""

    kind: str = "vit"  # "vit" or "resnet"
    image_size: int = 224  # input resolution (square)
    width: int = 768  # ViT: token width; ResNet: stem width (64 for RN50)
    layers: int | tuple[int, ...] = 12  # ViT: blocks; ResNet: blocks per stage (4 stages)
    patch_size: int = 32  # ViT only
    head_width: int = 64  # channels per attention head (heads = width // head_width)
    mlp_ratio: float = 4.0  # ViT MLP hidden = width * mlp_ratio
    act: str = "quick_gelu"  # "quick_gelu" (OpenAI weights) or "gelu"
    ln_eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        _check(self.kind in ("vit", "resnet"), f"vision.kind must be 'vit' or 'resnet', got {self.kind!r}")
        _check(self.act in ACTIVATIONS, f"vision.act must be one of {ACTIVATIONS}, got {self.act!r}")
        _positive(
            "vision",
            image_size=self.image_size,
            width=self.width,
            head_width=self.head_width,
            mlp_ratio=self.mlp_ratio,
            ln_eps=self.ln_eps,
        )
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.kind == "vit":
            _check(
                isinstance(self.layers, int) and not isinstance(self.layers, bool) and self.layers > 0,
                f"vision.layers must be a positive int for a ViT, got {self.layers!r}",
            )
            _positive("vision", patch_size=self.patch_size)
            _check(
                self.image_size % self.patch_size == 0,
                f"vision.image_size {self.image_size} must be divisible by patch_size {self.patch_size}",
            )
            _check(
                self.width % self.head_width == 0,
                f"vision.width {self.width} must be divisible by head_width {self.head_width}",
            )
        else:
            _check(
                isinstance(self.layers, tuple)
                and len(self.layers) == 4
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in self.layers),
                f"vision.layers must be 4 positive stage depths for a ResNet, e.g. 3,4,6,3; got {self.layers!r}",
            )
            _check(self.image_size % 32 == 0, "ResNet image_size must be divisible by 32")
            _check((self.width * 32) % self.head_width == 0, "ResNet width * 32 must be divisible by head_width")

    @property
    def heads(self) -> int:
        """Attention heads (ViT blocks, or the ResNet's attention pool)."""
        return (self.width * 32 if self.kind == "resnet" else self.width) // self.head_width


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer pooled at the end-of-text token."""

    context_length: int = 77  # positions (tokens incl. start/end of text)
    vocab_size: int = 49408  # OpenAI BPE vocabulary
    width: int = 512  # token width
    layers: int = 12  # transformer blocks
    head_width: int = 64  # channels per attention head
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check(self.act in ACTIVATIONS, f"text.act must be one of {ACTIVATIONS}, got {self.act!r}")
        _positive(
            "text",
            width=self.width,
            layers=self.layers,
            head_width=self.head_width,
            mlp_ratio=self.mlp_ratio,
            ln_eps=self.ln_eps,
        )
        _check(
            isinstance(self.layers, int) and not isinstance(self.layers, bool),
            f"text.layers must be a positive int, got {self.layers!r}",
        )
        _check(self.context_length > 1 and self.vocab_size > 1, "text.context_length and vocab_size must exceed 1")
        _check(
            self.width % self.head_width == 0,
            f"text.width {self.width} must be divisible by head_width {self.head_width}",
        )

    @property
    def heads(self) -> int:
        """Attention heads per block."""
        return self.width // self.head_width


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are prepared for the image tower (the input size is `vision.image_size`). Checkpoints
    carry it, so a model is always fed as it was trained: OpenAI's values by default, another model's
    own from its Hugging Face or OpenCLIP config."""

    mean: tuple[float, ...] = OPENAI_MEAN  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, ...] = OPENAI_STD  # per-channel standard deviation divided by
    interpolation: str = "bicubic"  # resampling filter of the resize
    resize_mode: str = "shortest"  # "shortest": resize the shorter side, centre crop; "squash": resize to a square

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
                value = tuple(value)
            _check(len(value) == 3, f"preprocess.{name} needs 3 values (R, G, B), got {value!r}")
        _check(all(v > 0 for v in self.std), f"preprocess.std must be positive, got {self.std!r}")
        _check(self.interpolation in INTERPOLATIONS, f"preprocess.interpolation must be one of {INTERPOLATIONS}")
        _check(self.resize_mode in RESIZE_MODES, f"preprocess.resize_mode must be one of {RESIZE_MODES}")


@dataclass(frozen=True)
class CLIPConfig:
    """A two-tower CLIP model projecting both towers into a shared `embed_dim` space."""

    embed_dim: int = 512  # joint embedding width
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)  # learned log-temperature starts here
    max_logit_scale: float = 100.0  # exp(logit_scale) is clipped to this
    init_logit_bias: float | None = None  # a learned logit bias (SigLIP's sigmoid loss), or none (CLIP's)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        _positive("", embed_dim=self.embed_dim, max_logit_scale=self.max_logit_scale)
        _check(isinstance(self.vision, VisionConfig), "vision must be a VisionConfig")
        _check(isinstance(self.text, TextConfig), "text must be a TextConfig")
        _check(isinstance(self.preprocess, PreprocessConfig), "preprocess must be a PreprocessConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (what checkpoints store)."""
        return settings.to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        """The config of nested dicts; unknown keys raise ConfigError naming the valid ones."""
        return settings.from_dict(cls, d)

    def replace(self, **overrides: Any) -> CLIPConfig:
        """Copy with overrides; nested towers take dicts: `cfg.replace(text={"layers": 6})`."""
        return settings.override(self, overrides)
