"""One optimiser step's gradients: plain, or accumulated exactly over micro-batches by gradient caching.

With `accum_steps` K, the outputs of all K micro-batches are computed without gradients, the task's
loss over the whole batch is back-propagated to those cached outputs once, and each micro-batch is
then re-run and back-propagated with its slice of the cached gradient (Gao et al. 2021). The result
equals one big batch's gradients wherever the forward does not depend on the micro-batch (BatchNorm
in training mode does); BatchNorm's running statistics are kept from the first pass only. Each re-run
starts from the random state its first pass started from, so random draws in the forward (dropout,
Gumbel noise, sampled anchors) are the same in both passes and the gradient is that of the loss the
first pass computed (random draws are then made per micro-batch, not for the whole batch at once).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..precision import autocast, resolve_precision
from .config import TrainConfig
from .task import Task


def _split(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """`parts` equal micro-batches: every tensor (with a batch dimension) and list is sliced."""
    n = next(len(v) for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim)
    size = n // parts
    return [
        {k: v[i * size : (i + 1) * size] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
        for i in range(parts)
    ]


class Stepper:
    """Computes gradients for one global step (plain or gradient-cached accumulation)."""

    def __init__(
        self, task: Task, model: nn.Module, cfg: TrainConfig, device: torch.device, precision: str | None = None
    ) -> None:
        self.task, self.model, self.cfg, self.device = task, model, cfg, device
        self.precision = precision or resolve_precision(cfg.precision, device)
        # fp16 gradients underflow without loss scaling; the scaler is a no-op in other precisions
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def _forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with autocast(self.precision, self.device):
            return self.task.forward(self.model, batch)

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Back-propagate `batch`'s losses into the parameters' gradients; returns the losses, detached."""
        if self.cfg.accum_steps == 1:
            losses = self.task.loss(self._forward(batch))
            self.scaler.scale(sum(losses.values())).backward()
            return {k: v.detach() for k, v in losses.items()}
        return self._cached(batch)

    def _cached(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        chunks = _split(batch, self.cfg.accum_steps)
        states, cached = [], []
        with torch.no_grad():
            for c in chunks:  # the random state each micro-batch starts from, so that its re-run draws the same
                states.append(_random_state(self.device))  # noise (Gumbel, dropout, sampled anchors)
                cached.append(self._forward(c))
        after = _random_state(self.device)
        leaves = {
            k: (
                torch.cat([c[k].float() for c in cached]) if cached[0][k].ndim else cached[0][k].float()
            ).requires_grad_(True)
            for k in cached[0]
        }
        losses = self.task.loss(leaves)
        self.scaler.scale(sum(losses.values())).backward()
        sizes = [len(next(v for v in c.values() if v.ndim)) for c in cached]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        no_sync = getattr(self.model, "no_sync", None)
        statistics = _batchnorm_statistics(self.model)  # the re-run must not count its batches twice
        for j, chunk in enumerate(chunks):
            ctx = no_sync() if no_sync is not None and j < len(chunks) - 1 else contextlib.nullcontext()
            with ctx:
                _set_random_state(states[j], self.device)
                out = self._forward(chunk)
                tensors, grads = [], []
                for k, leaf in leaves.items():
                    if leaf.grad is None or not out[k].requires_grad:  # e.g. the output of a frozen part
                        continue
                    g = leaf.grad[offsets[j] : offsets[j] + sizes[j]] if leaf.ndim else leaf.grad / len(chunks)
                    tensors.append(out[k])
                    grads.append(g.to(out[k].dtype))
                if tensors:
                    torch.autograd.backward(tensors, grads)
        for buffer, value in statistics:
            buffer.copy_(value)
        _set_random_state(after, self.device)  # as after one pass over the batch
        return {k: v.detach() for k, v in losses.items()}


def _random_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The default generators' states that a forward on `device` draws from: the CPU's, and the GPU's."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_random_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _batchnorm_statistics(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every running statistic BatchNorm would update in this forward."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            out += [(b, b.clone()) for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return out
