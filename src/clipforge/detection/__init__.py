"""The detection toolkit every detector in clipforge shares: box operations and coding, NMS, RoIAlign
(single- and multi-level), anchors, matching and sampling. COCO data and metrics live beside the other
data sources and metrics (`clipforge.data.detection`, `clipforge.eval.detection`)."""

from .anchors import Matcher, cell_anchors, grid_anchors, sample_balanced
from .boxes import (
    BoxCoder,
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    nms,
    remove_small_boxes,
)
from .result import Detections, draw_detections
from .roi import multilevel_roi_align, roi_align, roi_levels

__all__ = [
    "BoxCoder",
    "Detections",
    "Matcher",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "cell_anchors",
    "clip_boxes",
    "draw_detections",
    "generalized_box_iou",
    "grid_anchors",
    "multilevel_roi_align",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "roi_levels",
    "sample_balanced",
]
