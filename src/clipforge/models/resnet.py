"""OpenAI's ModifiedResNet image tower: 3-conv stem, anti-aliased strided bottlenecks, attention pooling."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers.attention import attention
from .vit import _check_images


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 conv residual block with 4x channel expansion; strided blocks downsample
    by average pooling (in the branch and the shortcut) instead of strided convs, as OpenAI's does."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Strided blocks downsample with an average pool after conv2, not with a strided conv.
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * 4, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * 4)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Pool a feature map with one attention query: the mean token (plus its position)."""

    def __init__(self, spatial: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial**2 + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) feature map -> (B, output_dim): the mean token attends to itself and every position."""
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+HW, C)
        hd = C // self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, self.heads, hd).transpose(1, 2)  # (B, h, 1, hd)
        k = self.k_proj(x).view(B, -1, self.heads, hd).transpose(1, 2)  # (B, h, 1+HW, hd)
        v = self.v_proj(x).view(B, -1, self.heads, hd).transpose(1, 2)
        out = attention(q, k, v)  # (B, h, 1, hd)
        return self.c_proj(out.transpose(1, 2).reshape(B, C))  # (B, E)


class ModifiedResNet(nn.Module):
    """ResNet image tower: (B, 3, S, S) images -> (B, output_dim) embeddings via attention pooling."""

    def __init__(
        self, layers: tuple[int, ...], output_dim: int, heads: int, image_size: int = 224, width: int = 64
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        stages = []
        for i, depth in enumerate(layers):
            planes = width * 2**i
            blocks = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            blocks += [Bottleneck(planes * 4, planes) for _ in range(depth - 1)]
            inplanes = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self.grad_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """Attention-pool projections ~ N(0, 1/width), and every bottleneck's last BatchNorm scale zeroed."""
        std = self.attnpool.c_proj.in_features**-0.5
        for lin in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(lin.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)  # each residual branch starts as identity

    # channels-last activations: oneDNN's convolutions run faster on them (benchmarks/levers.py)
    channels_last = True

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Three 3x3 convs (the first strided) and a 2x2 average pool: (B, 3, S, S) -> (B, width, S/4, S/4)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stem output and each stage's output, (B, C_i, H_i, W_i)."""
        _check_images(images, self.image_size)
        images = images.to(self.conv1.weight.dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.stem(images)
        maps = [x]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            maps.append(x)
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images -> (B, output_dim) attention-pooled embeddings."""
        return self.attnpool(self.feature_maps(images)[-1])

    def forward_intermediates(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The (B, output_dim) embedding plus the stem's and each stage's feature maps (`feature_maps`)."""
        maps = self.feature_maps(images)
        return {"image_embeds": self.attnpool(maps[-1]), "image_intermediates": maps}
