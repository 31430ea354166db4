"""Vision Transformer image tower in OpenAI's CLIP layout (class token, ln_pre, ln_post, proj)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import Transformer


class VisionTransformer(nn.Module):
    """ViT image tower: (B, 3, S, S) images -> (B, output_dim) class-token embeddings."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.transformer.init_weights()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch, class-token and position embeddings after ln_pre: (B, 1 + grid**2, width)."""
        _check_images(images, self.image_size)
        x = self.conv1(images)  # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, N, D)
        return self.ln_pre(x)

    def tokens(self, images: torch.Tensor, intermediates: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Transformer output for all tokens, class token first: (B, 1 + grid**2, width)."""
        return self.transformer(self.embed(images), intermediates=intermediates)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The class token's embedding; the last block runs for the class token only (exact)."""
        x = self.embed(images)
        cls = self.transformer.pooled(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return self.ln_post(cls) @ self.proj  # (B, E)

    def forward_intermediates(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Embedding plus every block's tokens and the projected per-patch embeddings (dense tasks)."""
        inter: list[torch.Tensor] = []
        x = self.tokens(images, intermediates=inter)
        projected = self.ln_post(x) @ self.proj  # (B, N, E)
        return {"image_embeds": projected[:, 0], "image_intermediates": inter, "image_tokens": projected}


def _check_images(images: torch.Tensor, size: int) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
        raise ValueError(
            f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}; "
            f"preprocess them with clipforge.image_transform({size})"
        )
