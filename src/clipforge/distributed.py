"""Rank/world helpers and cross-rank feature gathering that keeps gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, in rank order, differentiably.

    Backward sums the gradients of all ranks for each shard, so the gradient reaching a rank's
    features is world_size x the gradient of the (identical) loss on one rank; DDP's gradient
    averaging divides that factor back out. Single-process: returns `x` unchanged.
    """
    if not is_distributed() or world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)
