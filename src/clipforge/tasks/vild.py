"""ViLD from Python: the same as `clipforge detect`, `clipforge eval --task detection` and
`clipforge study vild`.

    import clipforge
    from clipforge.tasks import vild

    model = clipforge.load("runs/vild/model.safetensors")      # clipforge train vild --recipe shapes ...
    (det,) = vild.detect(model, ["scene.png"], "circle,star,hexagon")
    det.boxes          # (D, 4) x0, y0, x1, y1 in the image's pixels, best first
    det.scores, det.classes                 # (D,) each; classes index the labels
    vild.draw_detections(clipforge.transforms.load_image("scene.png"), det).save("boxes.png")
"""

from __future__ import annotations

from ..detection import Detections, draw_detections
from ..eval.detection import coco_evaluate, write_coco_results
from ..systems.vild import ViLD, ViLDConfig, ViLDOptions
from ..systems.vild.infer import detect, detect_tensors, evaluate_detection
from ..systems.vild.study import StudySettings, run_study

__all__ = [
    "Detections",
    "StudySettings",
    "ViLD",
    "ViLDConfig",
    "ViLDOptions",
    "coco_evaluate",
    "detect",
    "detect_tensors",
    "draw_detections",
    "evaluate_detection",
    "run_study",
    "write_coco_results",
]
