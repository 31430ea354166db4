"""GroupViT from Python: the same as `clipforge segment`, `clipforge eval --task segmentation` and
`clipforge study groupvit`.

    import clipforge
    from clipforge.tasks import groupvit

    model = clipforge.load("runs/groupvit/model.safetensors")      # clipforge train groupvit --recipe shapes ...
    (result,) = groupvit.segment(model, ["scene.png"], "background,circle,square")
    result.mask        # (H, W) label index per pixel (0: background)
    result.groups      # (H, W) the group each pixel belongs to
"""

from __future__ import annotations

from ..dense import Segmentation, overlay, parse_labels
from ..systems.groupvit import GroupViT, GroupViTConfig, GroupViTOptions
from ..systems.groupvit.infer import class_embeddings, evaluate_segmentation, group_labels, segment
from ..systems.groupvit.study import StudySettings, run_study

__all__ = [
    "GroupViT",
    "GroupViTConfig",
    "GroupViTOptions",
    "Segmentation",
    "StudySettings",
    "class_embeddings",
    "evaluate_segmentation",
    "group_labels",
    "overlay",
    "parse_labels",
    "run_study",
    "segment",
]
