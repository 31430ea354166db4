"""LSeg from Python: the same as `clipforge segment`, `clipforge eval --task segmentation` and
`clipforge study lseg`.

    import clipforge
    from clipforge.tasks import lseg

    model = clipforge.load("runs/lseg/model.safetensors")          # clipforge train lseg --recipe shapes ...
    (result,) = lseg.segment(model, ["scene.png"], "circle,square,background")
    result.mask        # (H, W) label index per pixel, at the image's own size
    result.areas       # {"circle": {"pixels": ..., "fraction": ...}, ...}
    lseg.overlay(clipforge.load_image("scene.png"), result.mask, result.labels).save("overlay.png")
"""

from __future__ import annotations

from ..dense import Segmentation, overlay, parse_labels
from ..systems.lseg import LSeg, LSegConfig, LSegOptions
from ..systems.lseg.infer import evaluate_segmentation, predict, segment
from ..systems.lseg.study import StudySettings, run_study

__all__ = [
    "LSeg",
    "LSegConfig",
    "LSegOptions",
    "Segmentation",
    "StudySettings",
    "evaluate_segmentation",
    "overlay",
    "parse_labels",
    "predict",
    "run_study",
    "segment",
]
