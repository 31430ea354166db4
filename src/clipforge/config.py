"""Frozen, validated configuration dataclasses for CLIP models.

A config is plain data: it fully determines the architecture. `from_dict` rejects unknown
keys (a typo is an error naming the valid keys, never a silent default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

ACTIVATIONS = ("gelu", "quick_gelu")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


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
        _check(self.image_size > 0 and self.width > 0, "vision.image_size and vision.width must be positive")
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.kind == "vit":
            _check(isinstance(self.layers, int) and self.layers > 0, "vision.layers must be a positive int for a ViT")
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
                isinstance(self.layers, tuple) and len(self.layers) == 4,
                "vision.layers must be 4 stage depths for a ResNet, e.g. (3, 4, 6, 3)",
            )
            _check(self.image_size % 32 == 0, "ResNet image_size must be divisible by 32")
            _check((self.width * 32) % self.head_width == 0, "ResNet width * 32 must be divisible by head_width")

    @property
    def heads(self) -> int:
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
        _check(self.context_length > 1 and self.vocab_size > 1 and self.layers > 0, "text sizes must be positive")
        _check(
            self.width % self.head_width == 0,
            f"text.width {self.width} must be divisible by head_width {self.head_width}",
        )

    @property
    def heads(self) -> int:
        return self.width // self.head_width


@dataclass(frozen=True)
class CLIPConfig:
    """A two-tower CLIP model projecting both towers into a shared `embed_dim` space."""

    embed_dim: int = 512  # joint embedding width
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)  # learned log-temperature starts here
    max_logit_scale: float = 100.0  # exp(logit_scale) is clipped to this

    def __post_init__(self) -> None:
        _check(self.embed_dim > 0, "embed_dim must be positive")
        _check(isinstance(self.vision, VisionConfig), "vision must be a VisionConfig")
        _check(isinstance(self.text, TextConfig), "text must be a TextConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        d = dict(d)
        vision = _build(VisionConfig, d.pop("vision", {}), "vision")
        text = _build(TextConfig, d.pop("text", {}), "text")
        return _build(cls, {**d, "vision": vision, "text": text}, "")

    def replace(self, **overrides: Any) -> CLIPConfig:
        """Copy with overrides; nested towers take dicts: `cfg.replace(text={"layers": 6})`."""
        d = self.to_dict()
        for key, value in overrides.items():
            if key in ("vision", "text") and isinstance(value, Mapping):
                _known(VisionConfig if key == "vision" else TextConfig, value, key)
                d[key] = {**d[key], **value}
            elif key in ("vision", "text") and dataclasses.is_dataclass(value):
                d[key] = dataclasses.asdict(value)
            else:
                d[key] = value
        return CLIPConfig.from_dict(d)


def _known(cls: type, d: Mapping[str, Any], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown option(s) {', '.join(prefix + u for u in unknown)}; valid: {', '.join(prefix + n for n in names)}"
        )


def _build(cls: type, d: Mapping[str, Any] | Any, where: str) -> Any:
    if isinstance(d, cls):
        return d
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(d).__name__}")
    _known(cls, d, where)
    return cls(**d)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["text.layers=6", "embed_dim=256"]` -> `{"text": {"layers": 6}, "embed_dim": 256}`, each value
    converted to its field's type; unknown fields raise ConfigError naming the valid ones."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. text.layers=6)")
        where, _, name = key.rpartition(".")
        cls = {"": CLIPConfig, "vision": VisionConfig, "text": TextConfig}.get(where)
        if cls is None:
            raise ConfigError(f"unknown config section {where!r} in {item!r}; valid: vision, text or none")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields or name in ("vision", "text"):
            _known(cls, {name: None} if name not in fields else {}, where)
            raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.width=256")
        default = getattr(cls(), name) if cls is not CLIPConfig else getattr(CLIPConfig(), name)
        value = _convert(raw, default, key)
        (out.setdefault(where, {}) if where else out)[name] = value
    return out


def _convert(raw: str, like: Any, key: str) -> Any:
    try:
        if isinstance(like, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(like, tuple) or (isinstance(like, int) and "," in raw):
            return tuple(int(v) for v in raw.split(","))
        if isinstance(like, int) and not isinstance(like, bool):
            return int(raw)
        if isinstance(like, float):
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: expected a value like {like!r}") from None
