"""RoIAlign (He et al. 2017) as a sparse matrix of bilinear weights times the feature map, and its
multi-level form for feature pyramids. Same sampling as the common CUDA/C++ kernels with `aligned=True`:
every output bin averages `sampling_ratio` x `sampling_ratio` bilinear samples at the sub-bin centres, a
sample more than one pixel outside the map counts as 0 and one within a pixel of the edge takes the
edge's value. The backward pass is the matrix's transpose."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def _rois(boxes: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """(R, 5) [image index, x0, y0, x1, y1] from that tensor or from a list of per-image (Ri, 4) boxes."""
    if isinstance(boxes, (list, tuple)):
        if not boxes:
            return torch.zeros(0, 5)
        return torch.cat(
            [torch.cat((torch.full((len(b), 1), i, dtype=b.dtype, device=b.device), b), 1) for i, b in enumerate(boxes)]
        )
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ConfigError(f"rois must be (R, 5) [image, x0, y0, x1, y1] or a list of (Ri, 4), got {tuple(boxes.shape)}")
    return boxes


def _neighbours(p: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For (R, n) sample coordinates along one axis of length `size` (R, 1): the low and high neighbour
    indices and their weights. Samples more than one pixel outside weigh 0; nearer ones clamp to the edge."""
    inside = (p >= -1) & (p <= size)
    p = p.clamp(min=0)
    low = p.floor().long()
    at_edge = low >= size - 1
    low = torch.minimum(low, size - 1)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(p), p - low.float())
    return low, high, (1 - frac) * inside, frac * inside


def _pool(
    flat: torch.Tensor,
    rois: torch.Tensor,
    scale: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    base: torch.Tensor,
    output_size: tuple[int, int],
    s: int,
    aligned: bool,
) -> torch.Tensor:
    """RoIAlign of every roi from `flat` (N, C), the concatenation of flattened (H*W, C) maps: roi r reads the
    map of `height[r]` x `width[r]` starting at row `base[r]`, at `scale[r]`. RoIAlign is linear in the
    features, so this is one sparse (R*PH*PW, N) matrix of bilinear weights (sub-samples averaged in) times
    `flat`; its backward pass is the transpose. Returns (R, C, PH, PW) fp32."""
    ph, pw = output_size
    R, dev = len(rois), flat.device
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1].float() * scale - offset
    y0 = rois[:, 2].float() * scale - offset
    rw = rois[:, 3].float() * scale - offset - x0
    rh = rois[:, 4].float() * scale - offset - y0
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    frac_x = (torch.arange(pw * s, device=dev, dtype=torch.float32) + 0.5) / (pw * s)
    frac_y = (torch.arange(ph * s, device=dev, dtype=torch.float32) + 0.5) / (ph * s)
    W, H = width[:, None].long(), height[:, None].long()
    xl, xh, wx_l, wx_h = _neighbours(x0[:, None] + rw[:, None] * frac_x[None, :], W)  # (R, PW*s)
    yl, yh, wy_l, wy_h = _neighbours(y0[:, None] + rh[:, None] * frac_y[None, :], H)  # (R, PH*s)
    bins = (torch.arange(ph * s, device=dev) // s)[:, None] * pw + (torch.arange(pw * s, device=dev) // s)[None, :]
    rows = (torch.arange(R, device=dev)[:, None] * (ph * pw) + bins.flatten()[None]).flatten().repeat(4)
    start = base[:, None, None].long()
    cols, vals = [], []
    for ys, wy, xs, wx in ((yl, wy_l, xl, wx_l), (yl, wy_l, xh, wx_h), (yh, wy_h, xl, wx_l), (yh, wy_h, xh, wx_h)):
        cols.append((start + ys[:, :, None] * W[:, :, None] + xs[:, None, :]).flatten())
        vals.append((wy[:, :, None] * wx[:, None, :]).flatten())
    matrix = torch.sparse_coo_tensor(
        torch.stack((rows, torch.cat(cols))),
        torch.cat(vals) / (s * s),
        (R * ph * pw, len(flat)),
        check_invariants=False,
    )
    with torch.autocast(dev.type, enabled=False):
        out = torch.sparse.mm(matrix, flat.float())  # (R*PH*PW, C)
    return out.view(R, ph, pw, -1).permute(0, 3, 1, 2)


def _flatten(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """(R, C, PH, PW) features of the boxes pooled from `features` (B, C, H, W).

    boxes: (R, 5) [image index, x0, y0, x1, y1] or a list of B per-image (Ri, 4) xyxy boxes, in input-image
    pixels; `spatial_scale` maps them to the feature map (1 / stride). `aligned` shifts by half a pixel so a
    box's edge is a pixel's edge (Detectron2's default); without it a box is at least 1 x 1 feature pixel."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if sampling_ratio < 1:
        raise ConfigError(f"sampling_ratio must be a positive number of samples per bin side, got {sampling_ratio}")
    rois = _rois(boxes).to(features.device)
    B, C, H, W = features.shape
    if len(rois) == 0:
        return features.new_zeros(0, C, ph, pw)
    full = torch.full((len(rois),), 1.0, device=features.device)
    out = _pool(
        _flatten(features), rois, full * spatial_scale, full * H, full * W, rois[:, 0].long() * H * W,
        (ph, pw), sampling_ratio, aligned,
    )  # fmt: skip
    return out.to(features.dtype)


def roi_levels(
    boxes: torch.Tensor, min_level: int, max_level: int, canonical_size: float = 224.0, canonical_level: int = 4
) -> torch.Tensor:
    """FPN's level of each (R, 4) xyxy box: floor(canonical_level + log2(sqrt(area) / canonical_size)),
    clamped to [min_level, max_level] (Lin et al. 2017, eq. 1)."""
    size = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    level = torch.floor(canonical_level + torch.log2(size / canonical_size + 1e-8))
    return level.clamp(min_level, max_level).long()


def multilevel_roi_align(
    features: list[torch.Tensor],
    strides: list[int],
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    sampling_ratio: int = 2,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> torch.Tensor:
    """RoIAlign over a feature pyramid: each box is pooled from the level `roi_levels` gives it (level
    log2(stride) of each map in `features`). Returns (R, C, PH, PW) in the order of the boxes."""
    rois = _rois(boxes)
    levels = [int(math.log2(s)) for s in strides]
    if [2**v for v in levels] != list(strides):
        raise ConfigError(f"pyramid strides must be powers of two, got {strides}")
    which = roi_levels(rois[:, 1:], min(levels), max(levels), canonical_size, canonical_level)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if len(rois) == 0:
        return features[0].new_zeros(0, features[0].shape[1], ph, pw)
    rois = rois.to(features[0].device)
    pos = torch.tensor([levels.index(int(v)) for v in which.tolist()], device=rois.device)
    sizes = torch.tensor([f.shape[-2:] for f in features], device=rois.device)  # (L, 2) h, w
    starts = torch.tensor([0] + [f.shape[0] * f.shape[2] * f.shape[3] for f in features[:-1]]).cumsum(0)
    h, w = sizes[pos, 0], sizes[pos, 1]
    base = starts.to(rois.device)[pos] + rois[:, 0].long() * h * w
    scale = 1.0 / torch.tensor(list(strides), dtype=torch.float32, device=rois.device)[pos]
    flat = torch.cat([_flatten(f) for f in features])
    return _pool(flat, rois, scale, h, w, base, (ph, pw), sampling_ratio, True).to(features[0].dtype)
