"""LSeg presets: the CLIP architecture a run builds on when no --clip weights are given, and the
decoder. With --clip, the CLIP's own architecture replaces the preset's (the decoder stays)."""

from __future__ import annotations

from ...presets import get_config
from .model import LSegConfig

PRESETS = {
    # the `shapes` CLIP (tiny-rn, 1-layer text tower) under a narrow decoder: the study's model
    # clip_dense: the decoder adds to CLIP's own per-position embedding (without it, a decoder trained
    # on 6 shapes names the 2 it never saw far worse; docs/lseg.md has the measurement)
    "lseg-shapes": LSegConfig(clip=get_config("tiny-rn").replace(text={"layers": 1}), features=64, clip_dense=True),
    "lseg-tiny-vit": LSegConfig(clip=get_config("tiny-vit"), features=64, clip_dense=True),
    # the paper's decoder width on OpenAI's architectures (pass their weights with --clip)
    "lseg-vit-b-32": LSegConfig(clip=get_config("ViT-B-32"), features=256),
    "lseg-rn50": LSegConfig(clip=get_config("RN50"), features=256),
}
