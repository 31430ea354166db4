"""The two-tower CLIP model: an image tower and a text tower projected into one space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig
from .resnet import ModifiedResNet
from .text import TextTransformer
from .vit import VisionTransformer


@dataclass
class CLIPOutput:
    image_embeds: torch.Tensor  # (B, E), L2-normalised
    text_embeds: torch.Tensor  # (B, E), L2-normalised
    logit_scale: torch.Tensor  # scalar, exp(t) clipped to max_logit_scale

    @property
    def logits_per_image(self) -> torch.Tensor:
        return self.logit_scale * self.image_embeds @ self.text_embeds.T


class CLIP(nn.Module):
    """`encode_image`/`encode_text` return projected, *unnormalised* embeddings, as OpenAI's do."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        v, t = config.vision, config.text
        if v.kind == "vit":
            self.visual: nn.Module = VisionTransformer(
                v.image_size, v.patch_size, v.width, v.layers, v.heads, config.embed_dim, v.mlp_ratio, v.act, v.ln_eps
            )
        else:
            self.visual = ModifiedResNet(v.layers, config.embed_dim, v.heads, v.image_size, v.width)
        self.text = TextTransformer(
            t.context_length, t.vocab_size, t.width, t.layers, t.heads, config.embed_dim, t.mlp_ratio, t.act, t.ln_eps
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.text(text)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clipped so it never exceeds `config.max_logit_scale` (100)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> CLIPOutput:
        return CLIPOutput(
            image_embeds=F.normalize(self.encode_image(images).float(), dim=-1),  # fp32 under autocast too
            text_embeds=F.normalize(self.encode_text(text).float(), dim=-1),
            logit_scale=self.scale(),
        )

    def forward_intermediates(
        self, images: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Per-layer tokens (ViT/text blocks) or feature maps (ResNet stages) plus the embeddings."""
        out: dict[str, Any] = {}
        if images is not None:
            out.update(self.visual.forward_intermediates(images))
        if text is not None:
            out.update(self.text.forward_intermediates(text))
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of storing them (less memory, ~30% more compute)."""
        self.text.transformer.grad_checkpointing = enable
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enable
        else:
            self.visual.grad_checkpointing = enable
