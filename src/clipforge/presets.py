"""Named architectures. Each entry only fills a CLIPConfig.

OpenAI names (`RN50`, `ViT-B-32`, ...) use QuickGELU, as OpenAI's released weights do; each has a
`-gelu` variant with exact GELU (the activation OpenCLIP uses for its own trainings). The `tiny-*`
and `small-*` presets are a few million parameters, for tests, demos and CPU training.
"""

from __future__ import annotations

from typing import Any

from .config import CLIPConfig, TextConfig, VisionConfig


def _vit(embed: int, image: int, patch: int, width: int, layers: int, text_width: int, act: str) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(kind="vit", image_size=image, width=width, layers=layers, patch_size=patch, act=act),
        text=TextConfig(width=text_width, layers=12, act=act),
    )


def _rn(embed: int, image: int, layers: tuple[int, ...], width: int, text_width: int, act: str) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(kind="resnet", image_size=image, width=width, layers=layers, act=act),
        text=TextConfig(width=text_width, layers=12, act=act),
    )


_OPENAI: dict[str, Any] = {
    "RN50": (_rn, 1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": (_rn, 512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": (_rn, 640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": (_rn, 768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": (_rn, 1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B-32": (_vit, 512, 224, 32, 768, 12, 512),
    "ViT-B-16": (_vit, 512, 224, 16, 768, 12, 512),
    "ViT-L-14": (_vit, 768, 224, 14, 1024, 24, 768),
    "ViT-L-14-336": (_vit, 768, 336, 14, 1024, 24, 768),
}


def _small(
    kind: str, embed: int, image: int, width: int, layers: Any, text_width: int, text_layers: int, patch: int = 8
) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(
            kind=kind, image_size=image, width=width, layers=layers, patch_size=patch, head_width=32, act="gelu"
        ),
        text=TextConfig(width=text_width, layers=text_layers, head_width=32, act="gelu"),
    )


PRESETS: dict[str, CLIPConfig] = {}
for _name, (_fn, *_args) in _OPENAI.items():
    PRESETS[_name] = _fn(*_args, "quick_gelu")
    PRESETS[f"{_name}-gelu"] = _fn(*_args, "gelu")
PRESETS["tiny-vit"] = _small("vit", 128, 64, 128, 4, 128, 4)
PRESETS["small-vit"] = _small("vit", 256, 64, 256, 6, 256, 6)
PRESETS["tiny-rn"] = _small("resnet", 128, 64, 16, (1, 1, 1, 1), 128, 4)

# Other spellings users bring from OpenAI (`ViT-B/32`) and OpenCLIP (`ViT-B-32-quickgelu`).
ALIASES: dict[str, str] = {}
for _name in _OPENAI:
    ALIASES[_name.replace("ViT-B-", "ViT-B/").replace("ViT-L-14-336", "ViT-L/14@336px").replace("ViT-L-", "ViT-L/")] = (
        _name
    )
    ALIASES[f"{_name}-quickgelu"] = _name


def list_models() -> list[str]:
    """Names accepted by `create_model` (aliases such as `ViT-B/32` are accepted too)."""
    return list(PRESETS)


def get_config(name: str) -> CLIPConfig:
    """The CLIPConfig of a preset; raises UnknownModelError naming close matches."""
    from .registry import find_preset

    return find_preset(PRESETS, ALIASES, name, "clip")
