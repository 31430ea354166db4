"""Multi-head self-attention: `F.scaled_dot_product_attention`, or explicit matmul-softmax-matmul
for half-precision CPU inputs of moderate length, where PyTorch's CPU flash kernel is several times
slower (its backward especially; `benchmarks/levers.py` measures both).

Parameter names (`in_proj_weight`, `in_proj_bias`, `out_proj`) follow `nn.MultiheadAttention`,
which OpenAI's and OpenCLIP's checkpoints use, so their state dicts load without renaming.

Besides the plain (B, N, D) layout, `Attention` takes *packed* tokens: the valid tokens of a batch
of variable-length sequences as (T, D) rows plus their flat positions in the padded (B, N) grid,
so the projections and the MLP never touch padding (`Transformer.pooled` uses it for causal text).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXPLICIT_MAX_TOKENS = 128  # above this no faster, and the (B, H, N, N) scores cost more memory than the speed is worth


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, H, N, d) tensors, with an optional causal mask or a boolean
    `mask` broadcastable to (B, H, N, M) that is True where a query may attend to a key."""
    n, m = q.shape[-2], k.shape[-2]
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16) or max(n, m) > EXPLICIT_MAX_TOKENS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    # in fp32: for short sequences these two matmuls are a small share of the FLOPs
    scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-2, -1)  # (B, H, N, M)
    if causal:
        scores = scores.masked_fill(torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def pad_rows(x: torch.Tensor, rows: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Packed (T, C) rows -> (batch, length, C), zeros where no row was given."""
    return x.new_zeros(batch * length, x.shape[-1]).index_copy(0, rows, x).view(batch, length, -1)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, over (B, N, D) or packed (T, D) tokens."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def _split(self, t: torch.Tensor, parts: int) -> torch.Tensor:
        """(B, N, parts * D) -> (parts, B, H, N, D // H)."""
        B, N, C = t.shape
        return t.view(B, N, parts, self.heads, C // parts // self.heads).permute(2, 0, 3, 1, 4)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        rows: torch.Tensor | None = None,
        shape: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); or, with `rows` and `shape` = (B, N), packed (T, D) -> (T, D).
        Packed sequences must be causal prefixes of the grid (padding only after each sequence)."""
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (..., 3D)
        if rows is not None:
            qkv = pad_rows(qkv, rows, *shape)
        B, N, D = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = self._split(qkv, 3)
        out = attention(q, k, v, causal).transpose(1, 2).reshape(B, N, D)
        if rows is not None:
            out = out.reshape(B * N, D).index_select(0, rows)
        return self.out_proj(out)

    def forward_at(
        self,
        x: torch.Tensor,
        query: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        shape: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The output for one query token per sequence, (B, D), skipping every other query.

        `x` is (B, N, D), or packed (T, D) with `rows`/`shape`; `query` indexes its flattened leading
        dimensions (one entry per sequence); `key_mask` (B, N) is True for the keys each query sees."""
        D = x.shape[-1]
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(x.reshape(-1, D).index_select(0, query), w[:D], b[:D])  # (B, D)
        kv = F.linear(x, w[D:], b[D:])  # (..., 2D)
        if rows is not None:
            kv = pad_rows(kv, rows, *shape)
        B, N = kv.shape[:2]
        k, v = self._split(kv, 2)
        q = q.view(B, self.heads, 1, D // self.heads)
        mask = None if key_mask is None else key_mask.view(B, 1, 1, N)
        return self.out_proj(attention(q, k, v, mask=mask).reshape(B, D))
