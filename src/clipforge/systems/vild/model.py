"""ViLD (Gu et al., ICLR 2022): a two-stage detector whose classifier is CLIP's text space.

The backbone is the CLIP image tower (a ResNet's stages C2-C5, or a ViT's token grid resampled to each
level); a small FPN gives levels P_l at strides 2^l; a class-agnostic RPN proposes boxes; RoIAlign pools
each region, and the box head gives a class-agnostic box refinement and a **region embedding** in CLIP's
space. Regions are classified by the cosine to frozen text embeddings of the labels plus one learned
background embedding, over a fixed temperature 0.01 (ViLD-text). ViLD-image distils region embeddings
towards CLIP's embeddings of the cropped regions; ViLD-ensemble gives that objective its own head.
The CLIP (text tower frozen) is part of the model, so a checkpoint detects any labels on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ...config import CLIPConfig
from ...detection import BoxCoder, clip_boxes, grid_anchors, multilevel_roi_align, nms, remove_small_boxes
from ...errors import ConfigError
from ...models import CLIP
from ...models.vit import VisionTransformer

CLASSIFIERS = ("text", "learned")


@dataclass(frozen=True)
class ViLDConfig:
    """A ViLD detector: the CLIP it is built on, the FPN / RPN / box head, and inference settings."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)  # image tower = backbone and teacher; text tower = classifier
    fpn_dim: int = 256  # width of the pyramid and the RPN
    levels: tuple[int, ...] = (2, 3, 4, 5)  # pyramid levels l (stride 2^l)
    anchor_scale: float = 8.0  # one anchor size per level: anchor_scale x stride (ViLD's 8)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    roi_size: int = 7  # RoIAlign output side
    head_dim: int = 1024  # the box head's two fully connected layers
    ensemble: bool = False  # ViLD-ensemble: a second head, distilled, for the image objective
    classifier: str = "text"  # text (ViLD) or learned (a supervised detector's classifier over `base_classes`)
    temperature: float = 0.01  # fixed: logits = cosine / temperature
    templates: str = "photo"  # prompt templates labels are embedded in (a set name or file)
    base_classes: tuple[str, ...] = ()  # classes trained with boxes (set by training; ensemble weights use it)
    ensemble_weight: float = 2 / 3  # lambda: text head's weight on base classes, image head's on novel ones
    # proposals
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_nms: float = 0.7
    # detections
    nms: float = 0.5  # per-class NMS
    score_threshold: float = 0.0
    detections: int = 100  # per image (COCO scores at most 100)

    def __post_init__(self) -> None:
        for name in ("levels", "anchor_ratios", "base_classes"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        lv = list(self.levels)
        if not lv or min(lv) < 1 or lv != list(range(lv[0], lv[0] + len(lv))):
            raise ConfigError(f"levels must be consecutive pyramid levels >= 1 (e.g. 2,3,4), got {self.levels}")
        if self.classifier == "learned" and self.ensemble:
            raise ConfigError("a learned classifier has no text space to distil into: ensemble needs classifier=text")
        if self.temperature <= 0 or not 0 <= self.ensemble_weight <= 1:
            raise ConfigError("temperature must be positive and ensemble_weight in [0, 1]")
        if self.fpn_dim <= 0 or self.head_dim <= 0 or self.roi_size <= 0:
            raise ConfigError("fpn_dim, head_dim and roi_size must be positive")

    @property
    def strides(self) -> tuple[int, ...]:
        """The stride of each pyramid level, 2^l."""
        return tuple(2**level for level in self.levels)


class FPN(nn.Module):
    """Lateral 1x1 convs, top-down nearest-neighbour sums, 3x3 output convs: one map per level."""

    def __init__(self, channels: Sequence[int], dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.output = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in channels)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Maps finest first -> pyramid finest first, each (B, dim, h_l, w_l)."""
        x = self.lateral[-1](maps[-1])
        out = [self.output[-1](x)]
        for i in range(len(maps) - 2, -1, -1):
            x = self.lateral[i](maps[i]) + F.interpolate(x, size=maps[i].shape[-2:], mode="nearest")
            out.insert(0, self.output[i](x))
        return out


class RPNHead(nn.Module):
    """Shared over levels: 3x3 conv + ReLU, then A objectness logits and 4A box codes per position."""

    def __init__(self, dim: int, anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.objectness = nn.Conv2d(dim, anchors, 1)
        self.deltas = nn.Conv2d(dim, 4 * anchors, 1)
        for m in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim, h, w) -> objectness (B, h*w*A) and box codes (B, h*w*A, 4), anchor order of grid_anchors."""
        t = F.relu(self.conv(x))
        B = x.shape[0]
        obj = self.objectness(t).permute(0, 2, 3, 1).reshape(B, -1)
        deltas = self.deltas(t).permute(0, 2, 3, 1).reshape(B, -1, 4)
        return obj, deltas


class BoxHead(nn.Module):
    """Flatten the RoI features, two fully connected layers with ReLU, then a class-agnostic box code
    (4) and the region embedding projected into the CLIP space ("project-to-clip")."""

    def __init__(self, in_features: int, dim: int, embed_dim: int, boxes: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.project = nn.Linear(dim, embed_dim)
        self.deltas = nn.Linear(dim, 4) if boxes else None
        if self.deltas is not None:
            nn.init.normal_(self.deltas.weight, std=0.001)
            nn.init.zeros_(self.deltas.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(R, C, k, k) -> unit-norm region embeddings (R, E) and box codes (R, 4) (None without)."""
        h = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        emb = F.normalize(self.project(h).float(), dim=-1)
        return emb, self.deltas(h).float() if self.deltas is not None else None


class ViLD(nn.Module):
    """The detector (see the module doc). Build it with `from_config` or `from_clip`."""

    def __init__(self, config: ViLDConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIP.from_config(config.clip)
        visual = self.clip.visual
        self.is_vit = isinstance(visual, VisionTransformer)
        if self.is_vit:
            width = visual.conv1.out_channels
            channels = [width] * len(config.levels)
        else:
            stage = visual.conv3.out_channels * 4
            channels = [stage * 2 ** (level - 2) for level in config.levels]
            if max(config.levels) > 5 or min(config.levels) < 2:
                raise ConfigError(f"a ResNet backbone has levels 2-5 (strides 4-32), got {config.levels}")
        self.fpn = FPN(channels, config.fpn_dim)
        self.rpn = RPNHead(config.fpn_dim, len(config.anchor_ratios))
        embed_dim = self.clip.text.text_projection.shape[1]
        flat = config.fpn_dim * config.roi_size**2
        self.head = BoxHead(flat, config.head_dim, embed_dim)
        self.image_head = BoxHead(flat, config.head_dim, embed_dim, boxes=False) if config.ensemble else None
        self.background = nn.Parameter(torch.randn(embed_dim) * 0.01)
        self.learned = (
            nn.Parameter(torch.randn(len(config.base_classes), embed_dim) * 0.01)
            if config.classifier == "learned"
            else None
        )
        self.rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        for p in self.clip.text.parameters():
            p.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)
        self._freeze_unused()

    @classmethod
    def from_config(cls, config: ViLDConfig) -> ViLD:
        """A randomly initialised ViLD of `config`."""
        if config.classifier == "learned" and not config.base_classes:
            raise ConfigError("a learned classifier needs its classes: set base_classes (training sets it)")
        return cls(config)

    @classmethod
    def from_clip(cls, config: ViLDConfig, clip: CLIP) -> ViLD:
        """A ViLD of `config` on `clip`'s architecture and weights (FPN, RPN and heads are new)."""
        model = cls.from_config(replace(config, clip=clip.config))
        model.clip.load_state_dict(clip.state_dict())
        return model

    def _freeze_unused(self) -> None:
        """Image-tower parts the detector never reads (a ResNet's attention pool, a ViT's head) are frozen,
        so every trainable parameter gets a gradient."""
        visual = self.clip.visual
        unused = [visual.ln_post] if self.is_vit else [visual.attnpool, *self._stages()[max(self.config.levels) - 1 :]]
        for m in unused:
            for p in m.parameters():
                p.requires_grad_(False)
        if self.is_vit and isinstance(getattr(visual, "proj", None), nn.Parameter):
            visual.proj.requires_grad_(False)

    def _stages(self) -> list[nn.Module]:
        """A ResNet tower's four stages."""
        v = self.clip.visual
        return [v.layer1, v.layer2, v.layer3, v.layer4]

    @property
    def image_size(self) -> int:
        """Input resolution (the CLIP image tower's)."""
        return self.clip.config.vision.image_size

    # ------------------------------------------------------------------------------------ features
    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) -> one (B, fpn_dim, S / 2^l, S / 2^l) map per level."""
        visual = self.clip.visual
        S = images.shape[-1]
        if self.is_vit:
            x = visual.tokens(images)[:, 1:]  # (B, g*g, D)
            g = visual.grid
            grid = x.transpose(1, 2).reshape(x.shape[0], -1, g, g)
            maps = [
                F.interpolate(grid, size=(S // s, S // s), mode="bilinear", align_corners=False)
                for s in self.config.strides
            ]  # a simple feature pyramid from the last map (ViTDet-style)
        else:  # C2..C5 at strides 4..32, run only as deep as the pyramid reads
            x = images.to(visual.conv1.weight.dtype)
            if visual.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = visual.stem(x)
            stages = []
            for stage in self._stages()[: max(self.config.levels) - 1]:
                x = stage(x)
                stages.append(x)
            maps = [stages[level - 2] for level in self.config.levels]
        return self.fpn([m.to(self.fpn.lateral[0].weight.dtype) for m in maps])

    def anchors(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, (h*w*A, 4) anchors of size anchor_scale x stride."""
        c = self.config
        return [
            grid_anchors(tuple(p.shape[-2:]), s, (c.anchor_scale * s,), c.anchor_ratios, p.device)
            for p, s in zip(pyramid, c.strides)
        ]

    def rpn_outputs(self, pyramid: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Objectness (B, N) and box codes (B, N, 4) over all levels' anchors, and each level's count."""
        outs = [self.rpn(p) for p in pyramid]
        return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1), [o[0].shape[1] for o in outs]

    @torch.no_grad()
    def proposals(
        self,
        objectness: torch.Tensor,
        deltas: torch.Tensor,
        anchors: Sequence[torch.Tensor],
        counts: Sequence[int],
        size: int,
        pre_nms: int,
        post_nms: int,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image, (boxes (P, 4), objectness logits (P,)): each level's top `pre_nms` anchors decoded,
        clipped, tiny boxes dropped, NMS at rpn_nms over all levels, the best `post_nms` kept."""
        out = []
        flat_anchors = torch.cat(list(anchors))
        starts = [sum(counts[:i]) for i in range(len(counts))]
        for b in range(objectness.shape[0]):
            idx = []
            for start, n in zip(starts, counts):
                k = min(pre_nms, n)
                idx.append(start + objectness[b, start : start + n].float().topk(k).indices)
            idx = torch.cat(idx)
            boxes = clip_boxes(self.rpn_coder.decode(deltas[b, idx].float(), flat_anchors[idx]), (size, size))
            scores = objectness[b, idx].float()
            keep = remove_small_boxes(boxes, 1e-3)
            boxes, scores = boxes[keep], scores[keep]
            keep = nms(boxes, scores, self.config.rpn_nms)[:post_nms]
            out.append((boxes[keep], scores[keep]))
        return out

    def run_rpn(
        self, pyramid: Sequence[torch.Tensor], size: int, pre_nms: int, post_nms: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """The RPN over a pyramid of S x S images: objectness (B, N), box codes (B, N, 4), each level's
        anchors, and per image the proposals (boxes, objectness logits) they give (`proposals`)."""
        anchors = self.anchors(pyramid)
        obj, deltas, counts = self.rpn_outputs(pyramid)
        return obj, deltas, anchors, self.proposals(obj, deltas, anchors, counts, size, pre_nms, post_nms)

    def region_features(self, pyramid: Sequence[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """(R, fpn_dim, k, k) RoIAlign features of every image's boxes (concatenated in order)."""
        return multilevel_roi_align(list(pyramid), list(self.config.strides), boxes, self.config.roi_size)

    # ------------------------------------------------------------------------------------ classifier
    @torch.no_grad()
    def encode_labels(self, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """(N, E) unit-norm text embeddings of the labels, each averaged over `templates` (default: the
        model's own), fp32. A learned classifier returns its class vectors (labels must be its classes)."""
        from ...eval.zeroshot import zero_shot_classifier

        if not labels:
            raise ConfigError("give at least one label")
        if self.learned is not None:
            known = list(self.config.base_classes)
            missing = [n for n in labels if n not in known]
            if missing:
                raise ConfigError(f"a supervised (learned-classifier) detector knows only {known}, not {missing}")
            return F.normalize(self.learned[[known.index(n) for n in labels]].float(), dim=-1)
        device = next(self.parameters()).device
        with torch.autocast(device.type, enabled=False):
            return zero_shot_classifier(self.clip, list(labels), templates or self.config.templates).weights

    def class_logits(self, regions: torch.Tensor, label_embeds: torch.Tensor) -> torch.Tensor:
        """(R, 1 + N) logits: cosine to [background, labels] / temperature."""
        bg = F.normalize(self.background.float(), dim=0)[None]
        classes = torch.cat([bg, label_embeds.float()])
        return regions.float() @ classes.T / self.config.temperature

    def class_embeddings_learned(self) -> torch.Tensor:
        """The learned classifier's (N_base, E) unit-norm class vectors (supervised detector only)."""
        if self.learned is None:
            raise ConfigError("this detector classifies by text, not learned class vectors")
        return F.normalize(self.learned.float(), dim=-1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid of (B, 3, S, S) images (training goes through the task; detection through `detect`)."""
        return self.pyramid(images)

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        c = self.config
        return f"levels={c.levels}, classifier={c.classifier}, ensemble={c.ensemble}, temperature={c.temperature}"


def describe(config: ViLDConfig) -> str:
    """One line about a preset (`clipforge models vild`)."""
    v = config.clip.vision
    kind = "ensemble" if config.ensemble else config.classifier
    return (
        f"{v.kind:<6} image {v.image_size:<4} embed {config.clip.embed_dim:<5} FPN {config.fpn_dim} "
        f"levels {config.levels} ({kind})"
    )
