"""Contrastive losses as pure functions of (normalised) embeddings.

`image` and `text` are (N, E) L2-normalised embeddings with row i of each forming a pair;
`scale` is exp(logit_scale) (already clipped). Under torch.distributed, `gather=True` gathers both
sides from all ranks (with gradients) so every rank uses the global batch's negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, rank, world_size


def clip_logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits_per_image, logits_per_text) = scale * image @ text.T and its transpose."""
    logits = scale * image @ text.T  # (N, N)
    return logits, logits.T


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float, *,
              gather: bool = False, local_loss: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE of the CLIP paper: mean of image->text and text->image cross-entropy.

    With `gather=True` under torch.distributed: `local_loss=False` computes the full global N x N
    loss on every rank; `local_loss=True` computes only this rank's rows against all columns
    (less memory); the mean of the local losses over ranks equals the global loss.
    """
    image, text = image.float(), text.float()
    if not gather or world_size() == 1:
        logits_i, logits_t = clip_logits(image, text, scale)
        labels = torch.arange(image.shape[0], device=image.device)
        return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    if not local_loss:
        return clip_loss(all_image, all_text, scale)
    n = image.shape[0]
    labels = torch.arange(n, device=image.device) + rank() * n
    logits_i = scale * image @ all_text.T  # (n, N)
    logits_t = scale * text @ all_image.T  # (n, N)
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def siglip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                bias: torch.Tensor | float, *, gather: bool = False) -> torch.Tensor:
    """Sigmoid loss (Zhai et al., 2023): every pair is an independent binary problem.

    loss = -sum_ij log sigmoid(z_ij * (scale * <i, t_j> + bias)) / N_local, z = +1 on pairs, -1 else.
    With `gather=True`, this rank's images are scored against every rank's texts.
    """
    image, text = image.float(), text.float()
    n = image.shape[0]
    all_text = gather_with_grad(text) if gather else text
    offset = rank() * n if gather else 0
    logits = scale * image @ all_text.T + bias  # (n, N)
    signs = -torch.ones_like(logits)
    signs[torch.arange(n, device=logits.device), torch.arange(n, device=logits.device) + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / n
