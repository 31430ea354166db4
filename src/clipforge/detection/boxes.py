"""Box operations every detector shares: conversions, areas, IoU / GIoU, clipping, the (dx, dy, dw, dh)
box coding of R-CNN, and greedy non-maximum suppression (per class via an offset trick).

Boxes are float tensors (..., 4) in `xyxy` (x0, y0, x1, y1) pixel coordinates unless said otherwise;
COCO files use `xywh` (x0, y0, width, height)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError

FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(boxes: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Convert (..., 4) boxes between `xyxy`, `xywh` (COCO) and `cxcywh` (centre, size)."""
    for f in (src, dst):
        if f not in FORMATS:
            raise ConfigError(f"box format must be one of {', '.join(FORMATS)}, got {f!r}")
    if src == dst:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if src == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif src == "cxcywh":
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    if dst == "xywh":
        return torch.stack((a, b, c - a, d - b), -1)
    if dst == "cxcywh":
        return torch.stack(((a + c) / 2, (b + d) / 2, c - a, d - b), -1)
    return torch.stack((a, b, c, d), -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (..., 4) xyxy boxes (0 for empty or inverted ones)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a)[:, None] + box_area(b)[None, :] - inter


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over union of (N, 4) and (M, 4) xyxy boxes (0 where the union is empty)."""
    inter, union = _inter_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) generalised IoU (Rezatofighi et al. 2019): IoU minus the share of the enclosing box that
    neither box covers; in [-1, 1]."""
    inter, union = _inter_union(a, b)
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - torch.where(hull > 0, (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).tiny), 0.0)


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clamp xyxy boxes to an image of `size` = (height, width)."""
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), -1)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of the boxes whose width and height are both at least `min_size`."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return torch.nonzero((wh >= min_size).all(dim=1)).flatten()


class BoxCoder:
    """R-CNN box coding: a box relative to a reference box as (dx, dy, dw, dh) = (wx (x - xr) / wr,
    wy (y - yr) / hr, ww log(w / wr), wh log(h / hr)) on centres and sizes. `weights` (10, 10, 5, 5) is
    Fast R-CNN's second stage, (1, 1, 1, 1) its RPN; decoding clamps dw, dh at log(1000 / 16)."""

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0), clamp: float | None = None):
        self.weights = weights
        self.clamp = math.log(1000.0 / 16) if clamp is None else clamp

    def encode(self, boxes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(N, 4) targets coding `boxes` against `reference` (both xyxy, same N)."""
        wx, wy, ww, wh = self.weights
        b = box_convert(boxes, "xyxy", "cxcywh")
        r = box_convert(reference, "xyxy", "cxcywh")
        return torch.stack(
            (
                wx * (b[:, 0] - r[:, 0]) / r[:, 2],
                wy * (b[:, 1] - r[:, 1]) / r[:, 3],
                ww * torch.log(b[:, 2] / r[:, 2]),
                wh * torch.log(b[:, 3] / r[:, 3]),
            ),
            -1,
        )

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(N, 4) xyxy boxes from (N, 4) codes against (N, 4) xyxy references."""
        wx, wy, ww, wh = self.weights
        r = box_convert(reference.to(deltas.dtype), "xyxy", "cxcywh")
        cx = deltas[:, 0] / wx * r[:, 2] + r[:, 0]
        cy = deltas[:, 1] / wy * r[:, 3] + r[:, 1]
        w = torch.exp((deltas[:, 2] / ww).clamp(max=self.clamp)) * r[:, 2]
        h = torch.exp((deltas[:, 3] / wh).clamp(max=self.clamp)) * r[:, 3]
        return box_convert(torch.stack((cx, cy, w, h), -1), "cxcywh", "xyxy")


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first. A box is dropped
    when its IoU with an already kept, higher-scoring box is above `iou_threshold`; equal scores keep
    their input order."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.detach().float(), descending=True, stable=True).indices
    iou = box_iou(boxes[order].detach().float(), boxes[order].detach().float()).cpu().numpy()
    over = iou > iou_threshold
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each class only (boxes of different classes never suppress each other): indices of the
    kept boxes, highest score first."""
    keep = [
        idx[nms(boxes[idx], scores[idx], iou_threshold)]
        for idx in (torch.nonzero(classes == c).flatten() for c in classes.unique())
    ]
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = torch.cat(keep)
    return kept[torch.sort(scores[kept].detach().float(), descending=True, stable=True).indices]
