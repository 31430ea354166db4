"""LSeg (Li et al., ICLR 2022): a dense image encoder whose per-pixel embeddings are classified by
text. The image side is the CLIP image tower (ViT blocks tapped at four depths, or the ResNet's four
stages) under a DPT decoder (reassemble, RefineNet fusion, upsample) giving one embedding per pixel at
half resolution; the text side is the CLIP text tower, frozen, embedding each label. Per-pixel logits
are the cosine of the two times a fixed 1/0.07; optional spatial-regularisation blocks (one kernel
shared by every label channel, so any number and order of labels works) follow, then x2 upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ...config import CLIPConfig
from ...errors import ConfigError
from ...models import CLIP
from ...models.vit import VisionTransformer

READOUTS = ("project", "add", "ignore")
BLOCK_KINDS = ("bottleneck", "depthwise")
ACTIVATIONS = {"relu": F.relu, "lrelu": F.leaky_relu, "tanh": torch.tanh}


@dataclass(frozen=True)
class LSegConfig:
    """An LSeg model: the CLIP it is built on and its decoder."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)  # image tower = backbone, text tower = label encoder
    features: int = 256  # F: the decoder's width (the paper's 256)
    taps: tuple[int, ...] = ()  # ViT: the 4 blocks (0-based) reassembled; (): evenly spaced, ending at the last
    readout: str = "project"  # ViT: how the class token joins each patch token (project: concat, Linear, GELU)
    blocks: int = 0  # spatial-regularisation blocks after the logits (0: none, the released default)
    block_kind: str = "bottleneck"  # bottleneck (conv + max over labels) or depthwise (conv)
    block_act: str = "lrelu"  # activation between regularisation blocks
    logit_scale: float = 1 / 0.07  # fixed: cosine x 14.29, as the released code (not learned)
    clip_dense: bool = False  # add CLIP's own per-position embedding to the pixel embedding (MaskCLIP)
    templates: str = "bare"  # prompt templates labels are embedded in (a set name or file; bare: the label alone)

    def __post_init__(self) -> None:
        if isinstance(self.taps, list):
            object.__setattr__(self, "taps", tuple(self.taps))
        if self.features <= 0:
            raise ConfigError(f"features must be positive, got {self.features}")
        if self.readout not in READOUTS:
            raise ConfigError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.block_kind not in BLOCK_KINDS or self.block_act not in ACTIVATIONS:
            raise ConfigError(f"block_kind must be one of {BLOCK_KINDS} and block_act one of {tuple(ACTIVATIONS)}")
        if self.blocks < 0 or self.logit_scale <= 0:
            raise ConfigError("blocks cannot be negative and logit_scale must be positive")
        if self.clip.vision.kind == "vit":
            layers = self.clip.vision.layers
            if self.taps and (len(self.taps) != 4 or not all(0 <= t < layers for t in self.taps)):
                raise ConfigError(f"taps must be 4 block indices in 0..{layers - 1}, got {self.taps}")
        elif self.taps:
            raise ConfigError("taps apply to ViT image towers; a ResNet tower is tapped after each of its 4 stages")

    def vit_taps(self) -> tuple[int, ...]:
        """The 4 tapped ViT blocks (ViT-B/32's 2, 5, 8, 11 for 12 layers)."""
        if self.taps:
            return self.taps
        n = self.clip.vision.layers
        return tuple(max(0, round(n * (k + 1) / 4) - 1) for k in range(4))


class ResidualConvUnit(nn.Module):
    """x + BN(conv(ReLU(BN(conv(ReLU(x)))))) at constant width."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W) -> (B, F, H, W)."""
        y = self.bn1(self.conv1(F.relu(x)))
        return x + self.bn2(self.conv2(F.relu(y)))


class FusionBlock(nn.Module):
    """RefineNet fusion: previous + RCU(skip), RCU, bilinear resize (align_corners), 1x1 conv. The
    deepest block has no skip level (and no unit for one)."""

    def __init__(self, features: int, skip: bool = True) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(features) if skip else None
        self.unit = ResidualConvUnit(features)
        self.out = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """Fuse `x` (B, F, h, w) with the skip level of the same size; output (B, F, *size)."""
        if skip is not None and self.skip_unit is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), size=size, mode="bilinear", align_corners=True)
        return self.out(x)


class LabelBlock(nn.Module):
    """Spatial regularisation of (B, N, H, W) logits: one 3x3 kernel shared by every label channel
    (and, bottleneck, the max over labels added), so no label mixes into another by position."""

    def __init__(self, kind: str, act: str | None) -> None:
        super().__init__()
        self.kind, self.act = kind, act
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W) -> (B, N, H, W)."""
        B, N, H, W = x.shape
        y = self.conv(x.reshape(B * N, 1, H, W)).reshape(B, N, H, W)
        if self.kind == "bottleneck":
            y = y + x.max(dim=1, keepdim=True).values
        return ACTIVATIONS[self.act](y) if self.act else y


def _resample(channels: int, factor: float) -> nn.Module:
    """Bring a ViT token grid to a level's stride: transposed conv up, identity, or strided conv down."""
    if factor >= 2:
        k = int(round(factor))
        return nn.ConvTranspose2d(channels, channels, k, stride=k)
    if factor > 0.75:
        return nn.Identity()
    return nn.Conv2d(channels, channels, 3, stride=int(round(1 / factor)), padding=1)


class Reassemble(nn.Module):
    """DPT's reassemble for a ViT: each tapped block's tokens -> readout -> (B, C_l, H/s_l, W/s_l) at
    strides 4, 8, 16, 32, with C_l = width/8, /4, /2, /1 (ViT-B/32: 96, 192, 384, 768)."""

    def __init__(self, width: int, patch: int, readout: str) -> None:
        super().__init__()
        self.readout = readout
        self.channels = [max(1, width // 8), max(1, width // 4), max(1, width // 2), width]
        if readout == "project":
            self.project = nn.ModuleList(nn.Sequential(nn.Linear(2 * width, width), nn.GELU()) for _ in range(4))
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, c, 1), _resample(c, patch / stride))
            for c, stride in zip(self.channels, (4, 8, 16, 32))
        )

    def forward(self, tokens: Sequence[torch.Tensor], grid: int) -> list[torch.Tensor]:
        """Four (B, 1 + g*g, D) token tensors -> four feature maps."""
        out = []
        for i, x in enumerate(tokens):
            cls, patches = x[:, :1], x[:, 1:]  # (B, 1, D), (B, g*g, D)
            if self.readout == "project":
                patches = self.project[i](torch.cat([patches, cls.expand_as(patches)], dim=-1))
            elif self.readout == "add":
                patches = patches + cls
            maps = patches.transpose(1, 2).reshape(x.shape[0], -1, grid, grid)  # (B, D, g, g)
            out.append(self.levels[i](maps))
        return out


class LSeg(nn.Module):
    """A CLIP whose image tower feeds a DPT decoder to per-pixel embeddings, classified by label text.

    Args:
        clip: the CLIP model; its text tower (and temperature) are frozen, its image tower is trained.
        features: decoder width F.
        taps: ViT blocks tapped (4 of them); ignored for a ResNet tower, tapped after each stage.
        readout: how a ViT's class token joins each patch token.
        blocks, block_kind, block_act: spatial regularisation after the logits.
        logit_scale: the fixed scale of the cosine logits.
        clip_dense: add CLIP's own per-position embedding to the decoder's (zero-initialised head).
        templates: the prompt templates labels are embedded in (`clipforge.eval.load_templates`).
        config: the LSegConfig the model was built from (`from_config` sets it; save/load use it).
    """

    def __init__(
        self,
        *,
        clip: CLIP,
        features: int,
        taps: Sequence[int],
        readout: str = "project",
        blocks: int = 0,
        block_kind: str = "bottleneck",
        block_act: str = "lrelu",
        logit_scale: float = 1 / 0.07,
        clip_dense: bool = False,
        templates: str = "bare",
        config: LSegConfig | None = None,
    ) -> None:
        super().__init__()
        self.config, self.clip = config, clip
        self.taps, self.logit_scale, self.clip_dense = tuple(taps), logit_scale, clip_dense
        self.templates = templates
        visual = clip.visual
        self.is_vit = isinstance(visual, VisionTransformer)
        if self.is_vit:
            self.reassemble = Reassemble(visual.conv1.out_channels, visual.patch_size, readout)
            channels = self.reassemble.channels
        else:
            self.reassemble = None
            width = visual.conv3.out_channels
            channels = [width * 4 * 2**i for i in range(4)]  # layer1..layer4 outputs
        self.scratch = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in channels)
        self.fusion = nn.ModuleList(FusionBlock(features, skip=i < 3) for i in range(4))
        embed_dim = clip.text.text_projection.shape[1]
        self.head = nn.Conv2d(features, embed_dim, 1)
        if clip_dense:  # training starts from CLIP's own dense embedding
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.regularise = nn.ModuleList(
            LabelBlock(block_kind, block_act if i < blocks - 1 else None) for i in range(blocks)
        )
        self._freeze_unused()

    @classmethod
    def from_config(cls, config: LSegConfig) -> LSeg:
        """A randomly initialised LSeg of `config` (CLIP first, then the decoder)."""
        return cls(
            clip=CLIP.from_config(config.clip),
            features=config.features,
            taps=config.vit_taps() if config.clip.vision.kind == "vit" else (),
            readout=config.readout,
            blocks=config.blocks,
            block_kind=config.block_kind,
            block_act=config.block_act,
            logit_scale=config.logit_scale,
            clip_dense=config.clip_dense,
            templates=config.templates,
            config=config,
        )

    @classmethod
    def from_clip(cls, config: LSegConfig, clip: CLIP) -> LSeg:
        """An LSeg of `config` on `clip`'s architecture and weights (the decoder is new)."""
        model = cls.from_config(replace(config, clip=clip.config))
        model.clip.load_state_dict(clip.state_dict())
        return model

    def _freeze_unused(self) -> None:
        """The text tower and temperature are frozen (labels are embedded, never trained); image-tower
        parts the decoder does not read (a ResNet's attention pool, ViT blocks past the last tap, the
        ViT head) are frozen too, so every trainable parameter has a gradient (DDP needs that)."""
        for p in self.clip.parameters():
            p.requires_grad_(False)
        visual = self.clip.visual
        if self.is_vit:
            used = [visual.conv1, visual.ln_pre, *visual.transformer.resblocks[: max(self.taps) + 1]]
            params = [visual.class_embedding, visual.positional_embedding]
            if self.clip_dense:
                used += list(visual.transformer.resblocks[max(self.taps) + 1 :]) + [visual.ln_post]
                params.append(visual.proj)
        else:
            used = [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]
            used += [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
            params = []
            if self.clip_dense:
                used += [visual.attnpool.v_proj, visual.attnpool.c_proj]
                params.append(visual.attnpool.positional_embedding)
        for p in [q for m in used for q in m.parameters()] + params:
            p.requires_grad_(True)

    # ------------------------------------------------------------------------------------ image side
    def _levels(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Four feature maps at strides 4, 8, 16, 32, and CLIP's own dense embedding (or None)."""
        visual = self.clip.visual
        if self.is_vit:
            inter: list[torch.Tensor] = []
            x = visual.tokens(images, intermediates=inter)  # (B, 1 + g*g, D)
            levels = self.reassemble([inter[t] for t in self.taps], visual.grid)
            dense = None
            if self.clip_dense:
                g = visual.grid
                dense = (visual.ln_post(x[:, 1:]) @ visual.proj).transpose(1, 2).reshape(x.shape[0], -1, g, g)
            return levels, dense
        maps = visual.feature_maps(images)  # stem, layer1..layer4
        dense = None
        if self.clip_dense:  # the attention pool's value path at every position (MaskCLIP)
            pool, last = visual.attnpool, maps[-1]
            B, C, H, W = last.shape
            pos = pool.positional_embedding[1:].to(last.dtype)
            if pos.shape[0] != H * W:
                s = int(round(pos.shape[0] ** 0.5))
                pos = pos.T.reshape(1, C, s, s)
                pos = F.interpolate(pos, size=(H, W), mode="bilinear", align_corners=False).reshape(C, H * W).T
            tokens = last.flatten(2).transpose(1, 2) + pos  # (B, HW, C)
            dense = pool.c_proj(pool.v_proj(tokens)).transpose(1, 2).reshape(B, -1, H, W)
        return maps[1:], dense

    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, E, S/2, S/2) unit-norm pixel embeddings."""
        levels, dense = self._levels(images)
        levels = [conv(x) for conv, x in zip(self.scratch, levels)]  # each (B, F, h_l, w_l)
        S = images.shape[-2:]
        x = self.fusion[3](levels[3], None, levels[2].shape[-2:])
        x = self.fusion[2](x, levels[2], levels[1].shape[-2:])
        x = self.fusion[1](x, levels[1], levels[0].shape[-2:])
        x = self.fusion[0](x, levels[0], (S[0] // 2, S[1] // 2))  # (B, F, S/2, S/2)
        emb = self.head(x)  # (B, E, S/2, S/2)
        if dense is not None:
            emb = emb + F.interpolate(dense.to(emb.dtype), size=emb.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(emb.float(), dim=1)

    # ------------------------------------------------------------------------------------- text side
    @torch.no_grad()
    def encode_labels(self, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """(N, E) unit-norm embeddings of the labels, each averaged over `templates` (default: the
        model's own, those it was trained with), in fp32."""
        from ...eval.zeroshot import zero_shot_classifier

        if not labels:
            raise ConfigError("give at least one label")
        device = next(self.parameters()).device
        with torch.autocast(device.type, enabled=False):
            return zero_shot_classifier(self.clip, list(labels), templates or self.templates).weights

    # ------------------------------------------------------------------------------------- together
    def forward(self, images: torch.Tensor, label_embeds: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images and (N, E) unit-norm label embeddings -> (B, N, S, S) logits."""
        return self.classify(self.encode_pixels(images), label_embeds, images.shape[-2:])

    def classify(self, pixels: torch.Tensor, label_embeds: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Logits (B, N, *size) of `encode_pixels`' output for a label set: one image pass serves any
        number of label sets."""
        logits = self.logit_scale * torch.einsum("behw,ne->bnhw", pixels, label_embeds.float())
        for block in self.regularise:
            logits = block(logits)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)

    @property
    def image_size(self) -> int:
        """Input resolution of the image tower."""
        return self.clip.config.vision.image_size

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"taps={self.taps}, logit_scale={self.logit_scale:.4g}, clip_dense={self.clip_dense}"


def describe(config: LSegConfig) -> str:
    """One line about a preset (`clipforge models lseg`)."""
    v = config.clip.vision
    return f"{v.kind:<6} image {v.image_size:<4} embed {config.clip.embed_dim:<5} decoder F={config.features}"
