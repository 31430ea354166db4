"""Metrics as pure functions of scores and labels (no models, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose label is among the k highest scores, for each k (k capped at #classes)."""
    out = {}
    order = logits.argsort(dim=1, descending=True)
    for k in ks:
        hit = (order[:, : min(k, logits.shape[1])] == labels[:, None]).any(dim=1)
        out[f"top{k}"] = hit.float().mean().item()
    return out


def mean_per_class_recall(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over classes present in `labels` of (correct predictions of the class / its count)."""
    recalls = []
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            recalls.append((preds[mask] == c).float().mean().item())
    return sum(recalls) / len(recalls)


def _ranks(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-scored positive in each row. sim (Q, G), positive (Q, G) bool."""
    best_pos = sim.masked_fill(~positive, float("-inf")).max(dim=1).values  # (Q,)
    return (sim > best_pos[:, None]).sum(dim=1) + 1


def retrieval_metrics(
    similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image<->text retrieval from an (images, captions) similarity matrix.

    `caption_image[j]` is the index of the image caption j describes (several captions per image
    allowed). Image->text counts a hit when any of the image's captions is in the top k; text->image
    when the caption's image is. Also the median and mean rank (1-based) in each direction.
    """
    n_img, n_txt = similarity.shape
    positive = caption_image[None, :] == torch.arange(n_img, device=similarity.device)[:, None]  # (I, T)
    if not positive.any(dim=1).all():
        raise ValueError("every image needs at least one caption")
    i2t = _ranks(similarity, positive).float()
    t2i = _ranks(similarity.T, positive.T).float()
    out: dict[str, float] = {}
    for name, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = (ranks <= k).float().mean().item()
        out[f"{name}_median_rank"] = ranks.quantile(0.5).item()  # midpoint for even counts, as numpy
        out[f"{name}_mean_rank"] = ranks.mean().item()
    return out
