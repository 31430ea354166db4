"""The two-tower CLIP model: an image tower and a text tower projected into one space."""

from __future__ import annotations

import math
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
    """What `CLIP.forward` returns."""

    image_embeds: torch.Tensor  # (B, E), L2-normalised
    text_embeds: torch.Tensor  # (B, E), L2-normalised
    logit_scale: torch.Tensor  # scalar, exp(t) clipped to max_logit_scale

    @property
    def logits_per_image(self) -> torch.Tensor:
        """(B_images, B_texts) scaled cosine similarities."""
        return self.logit_scale * self.image_embeds @ self.text_embeds.T


def build_image_tower(config: CLIPConfig) -> nn.Module:
    """The image tower of `config`: a ViT or OpenAI's ModifiedResNet, projecting to `embed_dim`."""
    v = config.vision
    if v.kind == "vit":
        return VisionTransformer(
            v.image_size, v.patch_size, v.width, v.layers, v.heads, config.embed_dim, v.mlp_ratio, v.act, v.ln_eps
        )
    return ModifiedResNet(v.layers, config.embed_dim, v.heads, v.image_size, v.width)


def build_text_tower(config: CLIPConfig) -> TextTransformer:
    """The causal text tower of `config`, pooled at end-of-text and projected to `embed_dim`."""
    t = config.text
    return TextTransformer(
        t.context_length, t.vocab_size, t.width, t.layers, t.heads, config.embed_dim, t.mlp_ratio, t.act, t.ln_eps
    )


class CLIP(nn.Module):
    """An image tower and a text tower projected into one space, with a learned temperature.

    `encode_image`/`encode_text` return projected, *unnormalised* embeddings, as OpenAI's do;
    `forward` returns normalised embeddings and the clipped scale.

    Args:
        visual: image tower, `(B, 3, H, W) -> (B, E)`.
        text: text tower, `(B, L)` token ids `-> (B, E)`.
        init_logit_scale: initial log-temperature `t` (the paper: log(1 / 0.07)).
        max_logit_scale: `exp(t)` is clipped to this (the paper: 100).
        init_logit_bias: initial learned logit bias, for the sigmoid (SigLIP) loss; None: no bias.
        config: the architecture the towers were built from; stored beside the weights by
            `clipforge.save` so `clipforge.load` can rebuild the model (`from_config` sets it).
    """

    def __init__(
        self,
        *,
        visual: nn.Module,
        text: TextTransformer,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = 100.0,
        init_logit_bias: float | None = None,
        config: CLIPConfig | None = None,
    ) -> None:
        super().__init__()
        if config is not None and (
            config.max_logit_scale != max_logit_scale or (config.init_logit_bias is None) != (init_logit_bias is None)
        ):
            raise ValueError(
                "config disagrees with max_logit_scale / init_logit_bias; build the model with from_config"
            )
        self.config = config
        self.visual = visual
        self.text = text
        self.max_logit_scale = max_logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))

    @classmethod
    def from_config(cls, config: CLIPConfig) -> CLIP:
        """A randomly initialised CLIP of `config` (image tower first, then text: the RNG order of OpenAI's)."""
        visual = build_image_tower(config)
        text = build_text_tower(config)
        return cls(
            visual=visual,
            text=text,
            init_logit_scale=config.init_logit_scale,
            max_logit_scale=config.max_logit_scale,
            init_logit_bias=config.init_logit_bias,
            config=config,
        )

    def add_logit_bias(self, value: float = -10.0) -> None:
        """Give the model a learned logit bias (for the sigmoid loss), recorded in its config so it is
        saved and rebuilt with the weights; a model that has one keeps it."""
        if self.logit_bias is not None:
            return
        self.logit_bias = nn.Parameter(torch.tensor(float(value), device=self.logit_scale.device))
        if self.config is not None:
            self.config = self.config.replace(init_logit_bias=float(value))

    @property
    def image_size(self) -> int:
        """Input resolution of the image tower."""
        return self.config.vision.image_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, E) unnormalised embeddings."""
        return self.visual(images)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids (trailing padding may be trimmed) -> (B, E) unnormalised embeddings."""
        return self.text(text)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clipped so it never exceeds `config.max_logit_scale` (100)."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> CLIPOutput:
        """Normalised embeddings of both towers (fp32 under autocast too) and the clipped scale."""
        return CLIPOutput(
            image_embeds=F.normalize(self.encode_image(images).float(), dim=-1),
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

    def lock(self, tower: str, unlocked: int = 0) -> None:
        """Freeze the `"image"` or `"text"` tower except its last `unlocked` blocks (ViT, text) or
        stages (ResNet) and its head; `unlocked=0` freezes all of it, projection included (LiT).
        Frozen BatchNorm layers stay in eval mode under `train()` (see `train`)."""
        if tower not in ("image", "text"):
            raise ValueError(f"tower must be 'image' or 'text', got {tower!r}")
        module = self.visual if tower == "image" else self.text
        for p in module.parameters():
            p.requires_grad_(False)
        if unlocked <= 0:
            self.train(self.training)
            return
        if hasattr(module, "transformer"):
            groups: list[nn.Module] = list(module.transformer.resblocks)
            heads = [getattr(module, n) for n in ("ln_post", "ln_final") if hasattr(module, n)]
            params = [getattr(module, n) for n in ("proj", "text_projection") if hasattr(module, n)]
        else:  # ModifiedResNet
            groups = [module.layer1, module.layer2, module.layer3, module.layer4]
            heads, params = [module.attnpool], []
        for part in groups[-unlocked:] + heads:
            for p in part.parameters():
                p.requires_grad_(True)
        for p in params:
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> CLIP:
        """As `nn.Module.train`, except that BatchNorm layers whose parameters are all frozen stay in
        eval mode: a locked ResNet tower keeps its running statistics, as locking promises."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    params = list(m.parameters())
                    if params and not any(p.requires_grad for p in params):
                        m.eval()
        return self
