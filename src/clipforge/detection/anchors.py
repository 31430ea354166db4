"""Anchors on a feature grid, IoU matching of anchors/proposals to ground truth, and balanced sampling
of positives and negatives: what a region proposal network and an R-CNN box head train with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .boxes import box_iou


def cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> torch.Tensor:
    """(len(sizes) * len(ratios), 4) xyxy anchors centred on 0: for each size s and ratio r = h / w,
    area s^2 with w = s / sqrt(r), h = s sqrt(r)."""
    out = []
    for s in sizes:
        for r in ratios:
            if s <= 0 or r <= 0:
                raise ConfigError(f"anchor sizes and ratios must be positive, got size {s}, ratio {r}")
            w, h = s / r**0.5, s * r**0.5
            out.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(
    grid: tuple[int, int], stride: int, sizes: tuple[float, ...], ratios: tuple[float, ...], device=None
) -> torch.Tensor:
    """(H * W * A, 4) xyxy anchors of an (H, W) feature map of this stride, centred on each cell's centre
    ((x + 0.5) stride, (y + 0.5) stride); ordered by row, column, then anchor (the layout of a conv head's
    (A * k, H, W) output permuted to (H, W, A, k))."""
    h, w = grid
    base = cell_anchors(sizes, ratios).to(device)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack((cx, cy, cx, cy), -1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


@dataclass(frozen=True)
class Matcher:
    """Assign each candidate box (anchor or proposal) to its best ground-truth box by IoU: positive at
    IoU >= `high`, negative below `low`, ignored in between. With `allow_low_quality`, the candidates each
    ground-truth box overlaps most are positive too (Faster R-CNN's RPN rule), so no box is left without one."""

    high: float
    low: float
    allow_low_quality: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= 1:
            raise ConfigError(f"matcher thresholds need 0 <= low <= high <= 1, got low {self.low}, high {self.high}")

    def __call__(self, gt: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, matched): labels (N,) 1 positive, 0 negative, -1 ignored; matched (N,) the index of
        each candidate's best ground-truth box (0 where there is none)."""
        n = len(candidates)
        if len(gt) == 0:
            return torch.zeros(n, dtype=torch.long, device=candidates.device), torch.zeros(
                n, dtype=torch.long, device=candidates.device
            )
        iou = box_iou(gt.float(), candidates.float())  # (G, N)
        best, matched = iou.max(dim=0)
        labels = torch.full((n,), -1, dtype=torch.long, device=candidates.device)
        labels[best < self.low] = 0
        labels[best >= self.high] = 1
        if self.allow_low_quality:
            top = iou.max(dim=1, keepdim=True).values
            _, c = torch.nonzero((iou == top) & (top > 0), as_tuple=True)
            labels[c] = 1  # positive, still matched to its own best box (as Faster R-CNN)
        return labels, matched


def sample_balanced(
    labels: torch.Tensor, total: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of at most `total` candidates: up to `positive_fraction` of them positive (label 1), the
    rest negative (label 0), drawn at random; -1 is never drawn."""
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    n_pos = min(len(pos), int(total * positive_fraction))
    n_neg = min(len(neg), total - n_pos)
    pos = pos[torch.randperm(len(pos), generator=generator)[:n_pos].to(pos.device)]
    neg = neg[torch.randperm(len(neg), generator=generator)[:n_neg].to(neg.device)]
    return pos, neg
