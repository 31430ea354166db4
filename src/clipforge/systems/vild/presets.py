"""ViLD presets: the CLIP a detector builds on when no --clip weights are given, and its FPN, RPN and
box head. With --clip, the CLIP's own architecture replaces the preset's (the detector parts stay)."""

from __future__ import annotations

from ...presets import get_config
from .model import ViLDConfig

_SHAPES_CLIP = get_config("tiny-rn").replace(text={"layers": 1})
_SMALL = {
    "fpn_dim": 64,
    "levels": (2, 3, 4),  # strides 4, 8, 16 on 64-px scenes: 16x16, 8x8, 4x4 maps
    "anchor_scale": 4.0,  # anchors of 16, 32, 64 px
    "head_dim": 256,
    "rpn_pre_nms_train": 300,
    "rpn_post_nms_train": 100,
    "rpn_pre_nms_test": 300,
    "rpn_post_nms_test": 100,
}

PRESETS = {
    # the synthetic world: the `shapes` CLIP (tiny-rn, 1-layer text tower) under a narrow FPN and head
    "vild-shapes": ViLDConfig(clip=_SHAPES_CLIP, **_SMALL),
    "vild-tiny-vit": ViLDConfig(clip=get_config("tiny-vit"), **_SMALL),
    # the paper's sizes (FPN 256, levels 2-5 [P6 left out], box head 1024) on OpenAI's architectures
    "vild-rn50": ViLDConfig(clip=get_config("RN50")),
    "vild-vit-b-32": ViLDConfig(clip=get_config("ViT-B-32"), levels=(3, 4, 5)),
}
