"""GroupViT presets. With --clip, the CLIP's text tower, joint width and preprocessing replace the
preset's (the grouping image tower is always new)."""

from __future__ import annotations

from ...config import TextConfig
from .model import GroupViTConfig

PRESETS = {
    # the synthetic world: 64 px, 8-px patches (64 tokens) -> 16 -> 8 segments; the `shapes` text tower;
    # pixels take their groups from the hard maps (the `shapes` recipe adds the learned background)
    "groupvit-shapes": GroupViTConfig(
        embed_dim=128,
        image_size=64,
        patch_size=8,
        width=128,
        head_width=32,
        depths=(2, 2, 1),
        groups=(16, 8),
        maps="hard",
        text=TextConfig(width=128, layers=1, head_width=32, act="gelu"),
    ),
    # the paper's ViT-S: 224 px, 16-px patches (196 tokens) -> 64 -> 8 segments, 12-layer text tower
    "groupvit-s": GroupViTConfig(),
}
