"""Causal text transformer pooled at the end-of-text token (the highest id in each sequence)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import Transformer


class TextTransformer(nn.Module):
    """Causal text tower: (B, L) token ids -> (B, output_dim) embeddings taken at each end-of-text token."""

    def __init__(
        self,
        context_length: int,
        vocab_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, eps)
        self.ln_final = nn.LayerNorm(width, eps=eps)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        self.transformer.init_weights()

    def embed(self, text: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings, (B, L, width). L may be shorter than context_length."""
        if text.ndim != 2 or text.shape[1] > self.context_length:
            raise ValueError(
                f"expected token ids of shape (B, L) with L <= {self.context_length}, got {tuple(text.shape)}; "
                "use clipforge.tokenize(texts)"
            )
        return self.token_embedding(text) + self.positional_embedding[: text.shape[1]]  # (B, L, D)

    def tokens(self, text: torch.Tensor, intermediates: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Final-LayerNormed token features, (B, L, width)."""
        return self.ln_final(self.transformer(self.embed(text), causal=True, intermediates=intermediates))

    def pool(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Take each sequence's end-of-text position (its argmax id, as OpenAI does) and project."""
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """The end-of-text embedding, (B, E). Exact but cheaper than pooling `tokens()`: tokens after
        each end-of-text (padding) are dropped, and the last block runs for the end-of-text token only."""
        x = self.transformer.pooled(self.embed(text), text.argmax(dim=-1), causal=True)
        return self.ln_final(x) @ self.text_projection

    def forward_intermediates(self, text: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The (B, E) embedding via every token, plus every block's output and the final tokens, (B, L, width)."""
        inter: list[torch.Tensor] = []
        x = self.tokens(text, intermediates=inter)
        return {"text_embeds": self.pool(x, text), "text_intermediates": inter, "text_tokens": x}
