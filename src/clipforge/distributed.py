"""Rank/world helpers and cross-rank feature gathering that keeps gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        ctx.n, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)  # reduced in place below
        if dist.get_backend() == "nccl":
            out = torch.empty((ctx.n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad)
            return out
        dist.all_reduce(grad)  # gloo has no reduce-scatter
        return grad.narrow(0, ctx.rank * ctx.n, ctx.n)


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL when
    CUDA is available, else gloo, with collectives timing out after CLIPFORGE_DIST_TIMEOUT seconds
    (default 600). Without torchrun: rank 0 of 1, on CUDA if available."""
    import os
    from datetime import timedelta

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not is_distributed():
        # a collective waiting for a rank that died fails after this long instead of hanging
        timeout = timedelta(seconds=float(os.environ.get("CLIPFORGE_DIST_TIMEOUT", "600")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    return rank(), world_size(), torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def collective_device() -> torch.device:
    """Where a tensor made for a collective must live: this rank's GPU under NCCL (which takes no CPU
    tensors), else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar over ranks (itself when not distributed)."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def any_across_ranks(flag: bool) -> bool:
    """True on every rank if it is True on any (keeps collective decisions in step)."""
    if not is_distributed():
        return flag
    t = torch.tensor(float(flag), device=collective_device())
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, in rank order, differentiably.

    Every rank must pass the same number of rows. Backward sums the gradients of all ranks for each
    shard, so the gradient reaching a rank's features is world_size x the gradient of the (identical)
    loss on one rank; DDP's gradient averaging divides that factor back out. Single-process: `x`.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
