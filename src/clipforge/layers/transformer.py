"""Pre-LayerNorm residual transformer used by both CLIP towers."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .mlp import Mlp


class ResidualBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), act)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        rows: torch.Tensor | None = None,
        shape: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """(B, N, D) tokens, or packed (T, D) ones with their `rows` in the (B, N) grid `shape`."""
        x = x + self.attn(self.ln_1(x), causal, rows, shape)
        return x + self.mlp(self.ln_2(x))

    def forward_at(
        self,
        x: torch.Tensor,
        query: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        shape: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """This block's output at one token per sequence, (B, D) (see `Attention.forward_at`)."""
        y = x.reshape(-1, x.shape[-1]).index_select(0, query)
        y = y + self.attn.forward_at(self.ln_1(x), query, key_mask, rows, shape)
        return y + self.mlp(self.ln_2(y))


class Transformer(nn.Module):
    """A stack of ResidualBlocks on (B, N, D) tokens; optional gradient checkpointing per block."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads, mlp_ratio, act, eps) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(
        self, x: torch.Tensor, causal: bool = False, intermediates: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Run all blocks; if `intermediates` is a list, append every block's output to it."""
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal=causal)
            if intermediates is not None:
                intermediates.append(x)
        return x

    def pooled(self, x: torch.Tensor, index: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """`forward(x, causal)[arange(B), index]`, (B, D), computing only what that row depends on.

        The last block runs for the pooled token alone (its keys and values still come from every
        token). With `causal`, tokens after each sequence's `index` can never reach it, so they are
        dropped from every block (the batch is packed), as is padding after an end-of-text token.
        """
        B, N, D = x.shape
        blocks = list(self.resblocks)
        if not blocks:
            return x[torch.arange(B, device=x.device), index]
        run = self._run
        if causal:
            key_mask = torch.arange(N, device=x.device) <= index[:, None]  # (B, N): the tokens each row needs
            rows = key_mask.flatten().nonzero().squeeze(1)  # their flat positions, row-major
            query = key_mask.sum(dim=1).cumsum(dim=0) - 1  # each sequence's last kept token, in packed order
            x = x.reshape(B * N, D).index_select(0, rows)  # (T, D)
            for block in blocks[:-1]:
                x = run(block, x, True, rows, (B, N))
            return run(blocks[-1].forward_at, x, query, key_mask, rows, (B, N))
        for block in blocks[:-1]:
            x = run(block, x)
        query = index + torch.arange(B, device=x.device) * N
        return run(blocks[-1].forward_at, x, query)

    def _run(self, fn, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def init_weights(self) -> None:
        """OpenAI's scaled init: residual-branch outputs shrink with depth."""
        layers = len(self.resblocks)
        attn_std = self.width**-0.5
        proj_std = attn_std * (2 * max(layers, 1)) ** -0.5  # (no blocks, nothing to set)
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)
