"""Multi-head self-attention: `F.scaled_dot_product_attention`, or explicit matmul-softmax-matmul
for half-precision CPU inputs of moderate length, where PyTorch's CPU flash kernel is several times
slower (its backward especially; `benchmarks/levers.py` measures both).

Parameter names (`in_proj_weight`, `in_proj_bias`, `out_proj`) follow `nn.MultiheadAttention`,
which OpenAI's and OpenCLIP's checkpoints use, so their state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


EXPLICIT_MAX_TOKENS = 128  # above this no faster, and the (B, H, N, N) scores cost more memory than the speed is worth


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, H, N, d) tensors, with an optional causal mask."""
    n, m = q.shape[-2], k.shape[-2]
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16) or max(n, m) > EXPLICIT_MAX_TOKENS:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    # in fp32: for short sequences these two matmuls are a small share of the FLOPs
    scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-2, -1)  # (B, H, N, M)
    if causal:
        scores = scores.masked_fill(torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, N, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        out = attention(qkv[0], qkv[1], qkv[2], causal)  # (B, H, N, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D))
