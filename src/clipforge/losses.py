"""Contrastive losses as pure functions of (normalised) embeddings.

`image` and `text` are (N, E) L2-normalised embeddings with row i of each forming a pair;
`scale` is exp(logit_scale) (already clipped). Under torch.distributed, `gather=True` gathers both
sides from all ranks (with gradients) so every rank uses the global batch's negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, rank, world_size


def clip_logits(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits_per_image, logits_per_text) = scale * image @ text.T and its transpose."""
    logits = scale * image @ text.T  # (N, N)
    return logits, logits.T


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    gather: bool = False,
    local_loss: bool = False,
) -> torch.Tensor:
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


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    *,
    gather: bool = False,
) -> torch.Tensor:
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


class _ChunkedClipLoss(torch.autograd.Function):
    """Exact symmetric InfoNCE computed block by block: memory O(chunk^2) instead of O(N^2).

    Forward keeps running log-sum-exps of every row and column. Backward recomputes each block of
    logits L and uses dLoss/dL_ij = (P_ij + Q_ij - 2 delta_ij) / 2N, with P the row softmax and Q the
    column softmax, to accumulate the gradients of both embedding sets and of the scale.
    """

    @staticmethod
    def forward(ctx, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        n = image.shape[0]
        row_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=image.device)
        col_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=image.device)
        for i in range(0, n, chunk):
            for j in range(0, n, chunk):
                block = scale * image[i : i + chunk] @ text[j : j + chunk].T  # (c, c)
                row_lse[i : i + chunk] = torch.logaddexp(row_lse[i : i + chunk], block.logsumexp(dim=1))
                col_lse[j : j + chunk] = torch.logaddexp(col_lse[j : j + chunk], block.logsumexp(dim=0))
        diag = scale * (image * text).sum(dim=1)  # (N,) logits of the true pairs
        ctx.save_for_backward(image, text, scale, row_lse, col_lse)
        ctx.chunk = chunk
        return ((row_lse - diag).mean() + (col_lse - diag).mean()) / 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        image, text, scale, row_lse, col_lse = ctx.saved_tensors
        n, chunk = image.shape[0], ctx.chunk
        g_image, g_text = torch.zeros_like(image), torch.zeros_like(text)
        g_scale = torch.zeros((), dtype=torch.float32, device=image.device)
        coef = grad / (2 * n)
        for i in range(0, n, chunk):
            for j in range(0, n, chunk):
                sim = image[i : i + chunk] @ text[j : j + chunk].T  # (c, c) cosine similarities
                logits = scale * sim
                g = torch.exp(logits - row_lse[i : i + chunk, None]) + torch.exp(logits - col_lse[None, j : j + chunk])
                if i == j:  # rows and columns share one block grid, so true pairs sit only in i == j blocks
                    g.diagonal().sub_(2.0)
                g = g * coef  # dLoss/dlogits for the block
                g_image[i : i + chunk] += scale * g @ text[j : j + chunk]
                g_text[j : j + chunk] += scale * g.T @ image[i : i + chunk]
                g_scale += (g * sim).sum()
        return g_image, g_text, g_scale.reshape(scale.shape), None


def clip_loss_chunked(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float, chunk: int = 1024
) -> torch.Tensor:
    """`clip_loss` with the same value and gradients, without materialising the N x N logits.

    Peak memory is a few chunk x chunk blocks, so the batch size is limited by the towers, not the loss.
    """
    scale_t = scale if isinstance(scale, torch.Tensor) else torch.tensor(float(scale))
    return _ChunkedClipLoss.apply(image.float(), text.float(), scale_t.float().to(image.device), chunk)
