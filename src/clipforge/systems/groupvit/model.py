"""GroupViT (Xu et al., CVPR 2022): a ViT whose learnable group tokens gather the patch tokens into
segments, trained with captions alone. Each grouping stage runs joint self-attention over image and
group tokens, then a grouping block assigns every token to one group (softmax over groups, hard by a
straight-through Gumbel-softmax in training, argmax at inference) and merges each group's tokens by
assignment-weighted averaging. Stage outputs: 196 patches -> 64 -> 8 segments in the paper's ViT-S.
The pooled final segments are the image embedding; each segment, projected, is classified like CLIP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ...config import PreprocessConfig, TextConfig
from ...errors import ConfigError
from ...layers.mlp import Mlp
from ...layers.transformer import Transformer
from ...models.clip import build_text_tower


@dataclass(frozen=True)
class GroupViTConfig:
    """A GroupViT: the grouping image tower, the text tower and the joint space."""

    embed_dim: int = 256  # joint embedding width
    image_size: int = 224
    patch_size: int = 16
    stem: str = "patch"  # "patch": one strided conv (the paper); "conv": 3x3 stride-2 convs (Xiao et al. 2021)
    width: int = 384  # image token width
    head_width: int = 64  # channels per attention head (ViT-S: 6 heads)
    depths: tuple[int, ...] = (6, 3, 3)  # blocks per stage; one more stage than grouping blocks
    groups: tuple[int, ...] = (64, 8)  # group tokens (= segments out) of each grouping stage
    mlp_ratio: float = 4.0
    text: TextConfig = field(default_factory=lambda: TextConfig(width=256, layers=12, act="quick_gelu"))
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    gumbel_tau: float = 1.0  # temperature of the training-time Gumbel noise
    threshold: float = 0.9  # inference: a segment whose best class is less probable is background (paper: VOC)
    templates: str = "photo"  # prompt templates of class names at inference ("a photo of a {}.")
    # what a segment's embedding is read from: "tokens", its final token (the paper's; after attention it also
    # carries the rest of the image), or "local", the mean over its pixels' patches of a per-patch MLP of the
    # patch embeddings (only its own pixels speak for it; clipforge's, not the paper's)
    segment_readout: str = "tokens"
    maps: str = "soft"  # pixel -> group at inference: product of the stages' "soft" assignments (the paper's) or "hard"
    # a learned background embedding in the joint space (trained by the segment loss; clipforge's, not the
    # paper's): at inference a segment closer to it than to every class is background
    learned_background: bool = False
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        for name in ("depths", "groups"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.depths) != len(self.groups) + 1:
            raise ConfigError(f"depths {self.depths} needs one stage more than groups {self.groups}")
        if any(d < 0 for d in self.depths) or any(g <= 0 for g in self.groups):
            raise ConfigError("depths cannot be negative and groups must be positive")
        if self.image_size % self.patch_size or self.width % self.head_width:
            raise ConfigError("image_size must divide by patch_size and width by head_width")
        if self.stem not in ("patch", "conv"):
            raise ConfigError(f"stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            raise ConfigError(
                f"a conv stem halves the size per conv: patch_size must be a power of 2, got {self.patch_size}"
            )
        if self.segment_readout not in ("tokens", "local"):
            raise ConfigError(f"segment_readout must be 'tokens' or 'local', got {self.segment_readout!r}")
        if self.maps not in ("soft", "hard"):
            raise ConfigError(f"maps must be 'soft' or 'hard', got {self.maps!r}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold is a probability, got {self.threshold}")

    @property
    def heads(self) -> int:
        """Attention heads of the image tower."""
        return self.width // self.head_width


class GroupingBlock(nn.Module):
    """Assign every token to one of `groups_out` groups and merge each group's tokens into it.

    Group tokens are mixed over the group axis, attend to the tokens (cross-attention + MLP), then the
    assignment is a softmax over groups of (W_q g)(W_k x)^T / sqrt(C): hard (straight-through Gumbel in
    training, argmax in eval) for the merge, soft for segmentation maps. A group is the
    assignment-weighted average of its tokens (divided by count + 1, so an empty group is 0)."""

    def __init__(self, width: int, heads: int, groups_in: int, groups_out: int, mlp_ratio: float, tau: float) -> None:
        super().__init__()
        self.tau = tau
        self.norm_tokens, self.norm_groups = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mix = nn.Sequential(nn.Linear(groups_in, width // 2), nn.GELU(), nn.Linear(width // 2, groups_out))
        self.norm_mixed = nn.LayerNorm(width)
        self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_cross_mlp, self.cross_mlp = nn.LayerNorm(width), Mlp(width, int(width * mlp_ratio), "gelu")
        self.norm_query = nn.LayerNorm(width)
        self.assign_q, self.assign_k = nn.Linear(width, width), nn.Linear(width, width)
        self.assign_v, self.assign_out = nn.Linear(width, width), nn.Linear(width, width)
        self.norm_out, self.out_mlp = nn.LayerNorm(width), Mlp(width, int(width * mlp_ratio), "gelu")

    def assign(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, G, L) logits -> one-hot over groups (dim 1) with straight-through gradients; Gumbel noise
        in training only."""
        dtype = logits.dtype
        if self.training:  # Gumbel(0, 1) noise from clamped uniforms: finite, and reproducible under a seed
            u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-10, 1 - 1e-7)
            logits = (logits.float() - torch.log(-torch.log(u))) / self.tau
        soft = logits.float().softmax(dim=1)
        hard = F.one_hot(soft.argmax(dim=1), logits.shape[1]).transpose(1, 2).to(soft.dtype)
        return (hard - soft.detach() + soft).to(dtype)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (B, L, C) and group tokens (B, G_in, C) -> segments (B, G_out, C), the soft and the hard
        assignment (B, G_out, L)."""
        x, g = self.norm_tokens(x), self.norm_groups(g)
        q = self.norm_mixed(self.mix(g.transpose(1, 2)).transpose(1, 2))  # (B, G_out, C)
        h = q + self.cross(q, x, x, need_weights=False)[0]
        q = self.norm_query(h + self.cross_mlp(self.norm_cross_mlp(h)))
        logits = self.assign_q(q) @ self.assign_k(x).transpose(1, 2) / math.sqrt(x.shape[-1])  # (B, G_out, L)
        soft, hard = logits.float().softmax(dim=1), self.assign(logits)
        weights = hard / (hard.sum(dim=-1, keepdim=True) + 1)
        s = self.assign_out(weights @ self.assign_v(x)) + q  # (B, G_out, C)
        return s + self.out_mlp(self.norm_out(s)), soft, hard


class GroupingStage(nn.Module):
    """Joint self-attention over tokens and this stage's group tokens, then grouping."""

    def __init__(
        self, width: int, heads: int, depth: int, groups: int, prev_groups: int | None, mlp_ratio: float, tau: float
    ) -> None:
        super().__init__()
        if prev_groups is None:  # the first stage's group tokens are learned outright
            self.group_token = nn.Parameter(torch.empty(1, groups, width))
            nn.init.trunc_normal_(self.group_token, std=0.02)
            self.from_previous = None
        else:  # later ones: a zero-initialised parameter plus a mix of the previous stage's group tokens
            self.group_token = nn.Parameter(torch.zeros(1, groups, width))
            self.from_previous = nn.Sequential(
                nn.LayerNorm(width), _GroupMix(prev_groups, width // 2, groups), nn.LayerNorm(width)
            )
        self.blocks = Transformer(width, depth, heads, mlp_ratio, "gelu")
        self.blocks.init_weights()
        self.grouping = GroupingBlock(width, heads, groups, groups, mlp_ratio, tau)

    def forward(
        self, x: torch.Tensor, previous: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, C) tokens -> (B, G, C) segments, this stage's group tokens after the blocks, the soft and
        hard assignments (B, G, L)."""
        g = self.group_token.to(x.dtype).expand(x.shape[0], -1, -1)
        if self.from_previous is not None and previous is not None:
            g = g + self.from_previous(previous)
        n = x.shape[1]
        y = self.blocks(torch.cat([x, g], dim=1))  # (B, L + G, C)
        x, g = y[:, :n], y[:, n:]
        segments, soft, hard = self.grouping(x, g)
        return segments, g, soft, hard


class _GroupMix(nn.Module):
    """An MLP over the group axis: (B, G_in, C) -> (B, G_out, C)."""

    def __init__(self, groups_in: int, hidden: int, groups_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(groups_in, hidden), nn.GELU(), nn.Linear(hidden, groups_out))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        """Mix over groups."""
        return self.net(g.transpose(1, 2)).transpose(1, 2)


@dataclass
class GroupingOutput:
    """What `GroupViT.image_groups` returns."""

    pooled: torch.Tensor  # (B, E) image embedding (unnormalised): the mean of the final segments, projected
    segments: torch.Tensor  # (B, G, E) each final segment projected into the joint space (unnormalised)
    soft: list[torch.Tensor]  # per grouping stage, (B, G_i, L_i) soft assignments (softmax over groups)
    hard: list[torch.Tensor]  # the same, one-hot


class GroupViT(nn.Module):
    """The grouping image tower and a CLIP text tower in one space, with learned temperatures.

    Args:
        config: the architecture (`from_config` builds every module from it).
    """

    def __init__(self, *, config: GroupViTConfig) -> None:
        super().__init__()
        c = self.config = config
        self.grid = c.image_size // c.patch_size
        self.patch_embed = (
            _conv_stem(c.width, c.patch_size)
            if c.stem == "conv"
            else nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size)
        )
        self.patch_norm = nn.LayerNorm(c.width)
        self.positional_embedding = nn.Parameter(torch.empty(self.grid**2, c.width))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        stages, previous = [], None
        for depth, groups in zip(c.depths, c.groups):
            stages.append(GroupingStage(c.width, c.heads, depth, groups, previous, c.mlp_ratio, c.gumbel_tau))
            previous = groups
        self.stages = nn.ModuleList(stages)
        self.final_blocks = Transformer(c.width, c.depths[-1], c.heads, c.mlp_ratio, "gelu")
        self.final_blocks.init_weights()
        self.final_norm = nn.LayerNorm(c.width)
        self.image_projection = nn.Linear(c.width, c.embed_dim, bias=False)
        self.text = build_text_tower(_text_shell(c))
        self.logit_scale = nn.Parameter(torch.tensor(float(c.init_logit_scale)))
        self.multi_label_logit_scale = nn.Parameter(torch.tensor(float(c.init_logit_scale)))
        self.max_logit_scale = c.max_logit_scale
        if c.segment_readout == "local":
            self.local_mlp = Mlp(c.width, int(c.width * c.mlp_ratio), "gelu")
            self.local_norm = nn.LayerNorm(c.width)
            self.local_projection = nn.Linear(c.width, c.embed_dim)
            nn.init.normal_(self.local_projection.bias, std=0.02)
        if c.learned_background:
            self.background_embedding = nn.Parameter(torch.randn(c.embed_dim) / math.sqrt(c.embed_dim))

    @classmethod
    def from_config(cls, config: GroupViTConfig) -> GroupViT:
        """A randomly initialised GroupViT of `config`."""
        return cls(config=config)

    @classmethod
    def from_clip(cls, config: GroupViTConfig, clip: nn.Module) -> GroupViT:
        """A GroupViT whose text tower, joint width, temperature and preprocessing are `clip`'s (the
        grouping image tower is new: a CLIP has none)."""
        cc = clip.config
        config = replace(config, embed_dim=cc.embed_dim, text=cc.text, preprocess=cc.preprocess)
        model = cls.from_config(config)
        model.text.load_state_dict(clip.text.state_dict())
        with torch.no_grad():
            model.logit_scale.copy_(clip.logit_scale)
        return model

    @property
    def image_size(self) -> int:
        """Input resolution of the image tower."""
        return self.config.image_size

    def image_groups(self, images: torch.Tensor) -> GroupingOutput:
        """(B, 3, S, S) preprocessed images -> pooled embedding, segment embeddings and the stages' maps."""
        S = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (S, S):
            raise ConfigError(f"expected images of shape (B, 3, {S}, {S}), got {tuple(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, L, C)
        x = self.patch_norm(x) + self.positional_embedding.to(x.dtype)
        patches = x
        soft, hard, previous = [], [], None
        for stage in self.stages:
            x, previous, s, h = stage(x, previous)
            soft.append(s)
            hard.append(h)
        x = self.final_norm(self.final_blocks(x))  # (B, G, C)
        pooled = self.image_projection(x.mean(dim=1))
        if self.config.segment_readout == "local":
            return GroupingOutput(pooled, self.local_segments(patches, hard), soft, hard)
        return GroupingOutput(pooled, self.image_projection(x), soft, hard)

    def local_segments(self, patches: torch.Tensor, hard: list[torch.Tensor]) -> torch.Tensor:
        """(B, G, E) each final group's embedding from its own patches only: the stages' hard assignments
        composed (patch -> final group), the mean of a per-patch MLP over the group's patches (each
        LayerNormed), projection; an empty group reads as the projection's bias. The readout names the groups
        but does not shape them: no gradient flows from it into the assignments (through them it was 50x
        the rest of the gradient, and it pulls a whole image into the group it names)."""
        composed = compose([h.detach() for h in hard])
        weights = composed / composed.sum(dim=-1, keepdim=True).clamp(min=1)
        return self.local_projection(weights @ self.local_norm(patches + self.local_mlp(patches)))

    def forward(self, images: torch.Tensor, segments: bool = False) -> torch.Tensor | tuple:
        """(B, 3, S, S) -> (B, E) unnormalised image embeddings (what training's DDP wrapper calls); with
        `segments`, (pooled, the (B, G, E) final segments' embeddings, the stages' hard assignments)."""
        if segments:
            out = self.image_groups(images)
            return out.pooled, out.segments, tuple(out.hard)
        return self.encode_image(images)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, E) unnormalised image embeddings."""
        return self.image_groups(images).pooled

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, E) unnormalised text embeddings."""
        return self.text(tokens)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clipped at `max_logit_scale`."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def multi_label_scale(self) -> torch.Tensor:
        """The multi-label loss's own temperature, clipped the same way."""
        return self.multi_label_logit_scale.exp().clamp(max=self.max_logit_scale)

    def pixel_groups(self, soft: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(B, G, H, W) weight of each final group at every pixel: the product of the stages' assignment maps
        on the patch grid (soft: probabilities; hard: one-hot compositions), upsampled bilinearly to `size`."""
        maps = compose([s.float() for s in soft])  # (B, G, L)
        B, G, L = maps.shape
        grid = maps.reshape(B, G, self.grid, self.grid)
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


def compose(maps: list[torch.Tensor]) -> torch.Tensor:
    """The stages' assignments, each (B, G_i, G_{i-1}) with patches as G_0, multiplied: (B, G_last, L), the
    weight of every final group at every patch (one-hot where the maps are hard)."""
    composed = maps[0]
    for m in maps[1:]:
        composed = m @ composed
    return composed


def _conv_stem(width: int, patch: int) -> nn.Sequential:
    """log2(patch) 3x3 stride-2 convs (BatchNorm, ReLU), channels doubling from width/2^k, then a 1x1 conv to
    `width`: the patch grid of a strided patch conv, reached by convolutions that learn faster."""
    layers: list[nn.Module] = []
    steps = patch.bit_length() - 1
    channels = [3] + [max(16, width // 2 ** (steps - i)) for i in range(steps)]
    for cin, cout in zip(channels, channels[1:]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(channels[-1], width, 1))


def _text_shell(c: GroupViTConfig):  # noqa: ANN202 - what build_text_tower reads of a CLIPConfig
    from ...config import CLIPConfig

    return CLIPConfig(embed_dim=c.embed_dim, text=c.text)


def describe(c: GroupViTConfig) -> str:
    """One line about a preset (`clipforge models groupvit`)."""
    stages = " -> ".join(str(g) for g in ((c.image_size // c.patch_size) ** 2, *c.groups))
    return f"image {c.image_size:<4} width {c.width:<4} depths {c.depths} tokens {stages}"
