"""The GroupViT system: semantic segmentation that emerges from captions alone (Xu et al., CVPR 2022).

Registers `groupvit`: the grouping image tower (group tokens, Gumbel-softmax grouping blocks) beside a
CLIP text tower, the contrastive + multi-label task (images and captions only), the `segmentation`
evaluator and segmenter (`clipforge segment`), the `shapes` recipe and `clipforge study groupvit`.
"""

from __future__ import annotations

from ...registry import Evaluator, System, register_system
from .cli import STUDIES
from .infer import evaluate_segmentation, segment
from .model import GroupViT, GroupViTConfig, describe
from .presets import PRESETS
from .recipes import RECIPES
from .task import GroupViTOptions, GroupViTTask

EVALUATORS = {
    "segmentation": Evaluator(
        "segmentation",
        "zero-shot mIoU (background included), per-class IoU, pixel accuracy and FB-IoU on images with class "
        "masks whose class 0 is the background",
        evaluate_segmentation,
        options={
            "--labels": {"default": None, "help": "label texts, one per class (default: the data's class names)"},
            "--classes": {"default": None, "help": "segmentation: class-name list (one per line; line i = value i)"},
            "--max-images": {"type": int, "default": None, "help": "score only the first N images"},
            "--threshold": {"type": float, "default": None, "help": "groupvit: background threshold"},
        },
    )
}

SYSTEM = register_system(
    System(
        name="groupvit",
        description="segmentation that emerges from captions alone: group tokens, grouping blocks, zero-shot labels",
        model=GroupViT,
        config=GroupViTConfig,
        task=GroupViTTask,
        options=GroupViTOptions,
        presets=PRESETS,
        default_preset="groupvit-shapes",
        evaluators=EVALUATORS,
        recipes=RECIPES,
        studies=STUDIES,
        sample_data="synthetic:n=64",
        describe=describe,
        from_clip=GroupViT.from_clip,
        default_clip="shapes",
        segmenter=segment,
    )
)

__all__ = ["SYSTEM", "GroupViT", "GroupViTConfig", "GroupViTOptions", "GroupViTTask"]
