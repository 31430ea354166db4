"""ViLD training as a task for the generic trainer.

Every step trains the class-agnostic RPN (anchors matched at IoU 0.7 / 0.3 with low-quality matches,
256 sampled per image, half positive; BCE + smooth L1 with beta 1/9), then samples RoIs among the
proposals plus the ground truth (IoU >= 0.5 foreground, 25% of 512), and trains the box head's
class-agnostic refinement (smooth L1, beta 1, weights 10/10/5/5) and:

- ViLD-text (`text_weight`): cross-entropy of the region embeddings' cosine to [learned background,
  frozen text embeddings of the *base* classes] / 0.01. Novel classes are left out of the softmax
  (the paper's code multiplies their logits by 0 instead; here they never enter it).
- ViLD-image (`image_weight`, the paper's w): L1 (summed over the embedding) between the region
  embeddings of precomputed proposals and CLIP's image embeddings of those regions cropped at 1x and
  1.5x (averaged, re-normalised). The proposals come from the RPN of a ViLD trained on base classes
  (`proposals=CKPT`); the teacher embeddings are computed once before training and cached.

With an ensemble model the image objective trains the second head and the text objective the first.
Boxes of `novel` categories are dropped from the annotations; the objects stay in the images.
Every loss is per image (a leading batch dimension), so gradient accumulation stays exact.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data.detection import DetectionDataset, collate_detection, detection_dataset, flip_boxes
from ...detection import Matcher, roi_align, sample_balanced
from ...errors import ConfigError, ImageError
from ...settings import setting
from ...train.task import Task
from .model import ViLD


@dataclass(frozen=True)
class ViLDOptions:
    """Training options of the ViLD system (`--set name=value`, or the flags they generate)."""

    novel: str = setting("", help="comma-separated categories whose boxes are never trained on (objects stay)")
    text_weight: float = setting(1.0, help="weight of the ViLD-text classification loss (0: ViLD-image alone)")
    image_weight: float = setting(0.0, help="w: weight of the ViLD-image distillation loss (the paper's 0.5)")
    proposals: str = setting("", help="ViLD checkpoint whose RPN proposes the regions distilled (image_weight > 0)")
    distill_regions: int = setting(10, help="M: proposals per image distilled (the paper's 300)")
    crop_scales: str = setting("1,1.5", help="crop scales of the teacher's region embeddings, averaged")
    cache: str = setting("", help="file keeping the teacher embeddings (reused when its key matches)")
    rpn_batch: int = setting(256, help="anchors sampled per image for the RPN loss")
    roi_batch: int = setting(512, help="RoIs sampled per image for the box head")
    roi_positive: float = setting(0.25, help="fraction of sampled RoIs that are foreground (at most)")
    backbone_lr_scale: float = setting(0.1, help="learning rate of the CLIP image tower relative to --lr")
    lock_backbone: bool = setting(False, help="freeze the CLIP image tower (the detector's backbone)")

    def __post_init__(self) -> None:
        if self.text_weight < 0 or self.image_weight < 0 or self.text_weight + self.image_weight == 0:
            raise ConfigError("text_weight and image_weight cannot be negative, and one must be positive")
        if self.distill_regions < 1 or self.rpn_batch < 1 or self.roi_batch < 1:
            raise ConfigError("distill_regions, rpn_batch and roi_batch must be positive")
        if not 0 < self.roi_positive <= 1 or self.backbone_lr_scale < 0:
            raise ConfigError("roi_positive must be in (0, 1] and backbone_lr_scale non-negative")
        scales = crop_scales(self.crop_scales)
        if not scales or min(scales) <= 0:
            raise ConfigError(f"crop_scales must be positive numbers, got {self.crop_scales!r}")


def crop_scales(spec: str) -> list[float]:
    """'1,1.5' -> [1.0, 1.5]."""
    try:
        return [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"crop_scales must be comma-separated numbers, got {spec!r}") from None


def novel_names(spec: str) -> list[str]:
    """'star, hexagon' -> ['star', 'hexagon']."""
    return [n.strip() for n in spec.split(",") if n.strip()]


class DistillDetection(Dataset):
    """A detection dataset whose samples also carry their precomputed regions (in the S x S frame,
    flipped with the image) and the teacher's embeddings of them."""

    def __init__(self, base: DetectionDataset, boxes: torch.Tensor, embeds: torch.Tensor, valid: torch.Tensor) -> None:
        self.base, self.boxes, self.embeds, self.valid = base, boxes, embeds, valid
        self.categories = base.categories

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        s = self.base[key]
        i = s["index"]
        keep = self.valid[i]
        boxes = self.boxes[i][keep]
        if s["flipped"]:
            boxes = flip_boxes(boxes, self.base.size)
        return {**s, "distill_boxes": boxes, "distill_embeds": self.embeds[i][keep]}


@torch.no_grad()
def crop_embeddings(
    clip, images: torch.Tensor, boxes: list[torch.Tensor], scales: list[float], chunk: int = 256
) -> torch.Tensor:
    """CLIP image embeddings (R, E) of every box's crop from preprocessed `images`, each crop enlarged by
    each of `scales` about its centre and resized to CLIP's input (bilinear, RoIAlign with one sample per
    output pixel); the scales' unit-norm embeddings averaged and re-normalised. Crops go through CLIP
    `chunk` at a time."""
    from ...detection.roi import _rois

    size = clip.config.vision.image_size
    rois = _rois([b.float() for b in boxes])
    if len(rois) == 0:
        return torch.zeros(0, clip.config.embed_dim)
    total = torch.zeros(len(rois), clip.config.embed_dim)
    for s in scales:
        c = (rois[:, 1:3] + rois[:, 3:5]) / 2
        half = (rois[:, 3:5] - rois[:, 1:3]) / 2 * s
        grown = torch.cat((rois[:, :1], c - half, c + half), 1)
        for i in range(0, len(grown), chunk):
            crops = roi_align(images.float(), grown[i : i + chunk], size, sampling_ratio=1)
            total[i : i + chunk] += F.normalize(clip.encode_image(crops).float(), dim=-1).cpu()
    return F.normalize(total, dim=-1)


@torch.no_grad()
def distillation_targets(
    proposer: ViLD,
    teacher,
    dataset: DetectionDataset,
    regions: int,
    scales: list[float],
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every image: the top `regions` proposals of `proposer`'s RPN (N, M, 4), the teacher's
    embeddings of their crops (N, M, E), and which slots hold a proposal (N, M)."""
    from tqdm.auto import tqdm

    was_train = dataset.train
    dataset.train = False  # the regions are computed once, unflipped; samples flip them with the image
    proposer.eval()
    n, E = len(dataset), teacher.config.embed_dim
    boxes, embeds, valid = torch.zeros(n, regions, 4), torch.zeros(n, regions, E), torch.zeros(n, regions, dtype=bool)
    try:
        for start in tqdm(
            range(0, n, batch_size), desc="ViLD-image teacher", unit="batch", disable=None if progress else True
        ):
            items, where = [], []
            for i in range(start, min(n, start + batch_size)):
                try:
                    items.append(dataset[i])
                    where.append(i)
                except (ImageError, OSError):  # an undecodable image: training skips it, no regions here
                    pass
            if not items:
                continue
            images = torch.stack([it["image"] for it in items])
            pyr = proposer.pyramid(images)
            props = proposer.run_rpn(pyr, images.shape[-1], proposer.config.rpn_pre_nms_test, regions)[3]
            kept = [p[0] for p in props]
            emb = crop_embeddings(teacher, images, kept, scales)
            at = 0
            for i, b in zip(where, kept):
                boxes[i, : len(b)], embeds[i, : len(b)], valid[i, : len(b)] = b, emb[at : at + len(b)], True
                at += len(b)
    finally:
        dataset.train = was_train
    return boxes, embeds, valid


class ViLDTask(Task):
    """RPN + box head + ViLD-text and/or ViLD-image losses (see the module doc)."""

    def __init__(self, model: ViLD, options: ViLDOptions | None = None) -> None:
        super().__init__(model, options or ViLDOptions())
        self.labels: list[str] = []  # the base classes, in the order of the classifier
        self._category_index: dict[int, int] = {}
        self._label_embeds: torch.Tensor | None = None
        c = model.config
        self.rpn_matcher = Matcher(0.7, 0.3, allow_low_quality=True)
        self.roi_matcher = Matcher(0.5, 0.5)
        if self.options.image_weight > 0 and c.classifier == "learned":
            raise ConfigError("ViLD-image distils into the text space: a learned classifier cannot take image_weight")
        if c.ensemble and self.options.image_weight == 0:
            raise ConfigError("an ensemble's second head learns only from ViLD-image: give image_weight > 0")

    # --------------------------------------------------------------------------------------- data
    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """Images with boxes: synthetic[:n=,split=,max_objects=] (the shapes world; categories the 8 shapes)
        or a COCO instances file ANNOTATIONS.json[:IMAGES_DIR]. Boxes of `novel` categories are dropped."""
        m = self.model
        pre = m.clip.config.preprocess
        novel = novel_names(self.options.novel)
        ds = detection_dataset(spec, m.image_size, pre.mean, pre.std, train=True, seed=seed, exclude=novel)
        base = [c for c in ds.categories if c["id"] not in ds.exclude]
        if not base:
            raise ConfigError("every category is novel; leave at least one with boxes to train on")
        self.labels = [c["name"] for c in base]
        self._category_index = {c["id"]: i + 1 for i, c in enumerate(base)}  # 0 = background
        if m.config.classifier == "learned" and list(m.config.base_classes) != self.labels:
            raise ConfigError(
                f"this supervised detector's classes are {list(m.config.base_classes)}, the data's base classes "
                f"{self.labels}: build it with base_classes={','.join(self.labels)}"
            )
        if m.config.classifier == "text":  # saved with the model: the ensemble weighs base and novel labels apart
            m.config = replace(m.config, base_classes=tuple(self.labels))
        self._label_embeds = None
        if self.options.image_weight > 0:
            ds = self._with_teacher(ds)
        return ds

    def _with_teacher(self, ds: DetectionDataset) -> DistillDetection:
        from ...checkpoints import load

        o = self.options
        if not o.proposals:
            raise ConfigError(
                "ViLD-image distils CLIP's embeddings of proposals from an RPN trained on the base classes: train "
                "ViLD-text first (image_weight=0) and pass its checkpoint with --set proposals=RUN/model.safetensors"
            )
        scales = crop_scales(o.crop_scales)
        key = self._cache_key(ds, scales)
        if o.cache and Path(o.cache).is_file():
            from safetensors.torch import load_file

            t = load_file(o.cache)
            if "key" in t and bytes(t["key"].tolist()).decode() == key:
                return DistillDetection(ds, t["boxes"], t["embeds"], t["valid"].bool())
        proposer = load(o.proposals)
        if not isinstance(proposer, ViLD):
            raise ConfigError(f"proposals={o.proposals} is not a ViLD checkpoint (its RPN makes the proposals)")
        teacher = copy.deepcopy(self.model.clip).float().eval()  # CLIP as it is before training: the teacher
        boxes, embeds, valid = distillation_targets(proposer.float(), teacher, ds, o.distill_regions, scales)
        if o.cache:
            from safetensors.torch import save_file

            from ..._io import atomic_write

            tensors = {"boxes": boxes, "embeds": embeds, "valid": valid.to(torch.uint8)}
            tensors["key"] = torch.tensor(list(key.encode()), dtype=torch.uint8)
            atomic_write(o.cache, lambda tmp: save_file(tensors, tmp))
        return DistillDetection(ds, boxes, embeds, valid)

    def _cache_key(self, ds: DetectionDataset, scales: list[float]) -> str:
        h = hashlib.sha256()
        proposer = Path(self.options.proposals)
        h.update(proposer.read_bytes() if proposer.is_file() else self.options.proposals.encode())
        world = getattr(ds, "world", None)
        if world is not None:  # a synthetic split is a pure function of these
            h.update(repr((len(world), world.image_size, world.split, world.seed, world.max_objects)).encode())
        else:  # a COCO file: its images and annotations
            h.update(repr((ds.size, [(im["id"], im["file_name"]) for im in ds.images])).encode())
            h.update(repr(sorted((a["image_id"], a["bbox"]) for a in ds.coco["annotations"])).encode())
        h.update(repr(sorted(ds.exclude)).encode())
        h.update(repr((self.options.distill_regions, scales)).encode())
        for p in self.model.clip.visual.state_dict().values():
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return h.hexdigest()

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Images, per-image boxes and labels (class indices: 0 background, i for the i-th base class)."""
        batch = collate_detection(items)
        batch["labels"] = [
            torch.tensor([self._category_index[int(c)] for c in lab], dtype=torch.long) for lab in batch["labels"]
        ]
        return batch

    # --------------------------------------------------------------------------------------- model
    def configure(self, model: ViLD) -> None:
        """Freeze the backbone if asked, and whatever the chosen losses leave without gradients."""
        if self.options.lock_backbone:
            for p in model.clip.visual.parameters():
                p.requires_grad_(False)
        if self.options.text_weight == 0 or model.config.classifier == "learned":
            model.background.requires_grad_(self.options.text_weight > 0)
        if model.image_head is not None and self.options.image_weight == 0:
            for p in model.image_head.parameters():
                p.requires_grad_(False)

    def train_mode(self, model: ViLD) -> None:
        """Training mode, the frozen text tower kept in eval mode."""
        model.train()
        model.clip.text.eval()

    def lr_scale(self, name: str) -> float:
        """The CLIP image tower (the backbone) learns at `backbone_lr_scale` x --lr."""
        return self.options.backbone_lr_scale if name.startswith("clip.visual.") else 1.0

    def label_embeddings(self, model: ViLD) -> torch.Tensor:
        """(N_base, E) classifier of the base classes (text embeddings, computed once; or learned)."""
        if model.config.classifier == "learned":
            return model.class_embeddings_learned()
        device = next(model.parameters()).device
        if self._label_embeds is None or self._label_embeds.device != device:
            if not self.labels:
                raise ConfigError("the task has no labels yet: call dataset() first")
            self._label_embeds = model.encode_labels(self.labels)
        return self._label_embeds

    # --------------------------------------------------------------------------------------- step
    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-image losses (B,): rpn_objectness, rpn_box, and box, text, image as configured."""
        inner: ViLD = getattr(model, "module", model)
        o, c = self.options, inner.config
        images = batch["images"]
        B, S = images.shape[0], images.shape[-1]
        pyr = model(images)
        obj, deltas, anchors, props = inner.run_rpn(pyr, S, c.rpn_pre_nms_train, c.rpn_post_nms_train)
        flat_anchors = torch.cat(anchors)
        zero = obj.sum() * 0
        out = {k: [] for k in ("rpn_objectness", "rpn_box", "box", "text", "image")}
        rois, roi_labels, roi_targets = [], [], []
        for b in range(B):
            gt = batch["boxes"][b].to(images.device).float()
            labels = batch["labels"][b].to(images.device)
            lab, matched = self.rpn_matcher(gt, flat_anchors)
            pos, neg = sample_balanced(lab, o.rpn_batch, 0.5)
            idx = torch.cat((pos, neg))
            target = torch.cat((torch.ones(len(pos)), torch.zeros(len(neg)))).to(obj.device)
            out["rpn_objectness"].append(F.binary_cross_entropy_with_logits(obj[b, idx].float(), target))
            if len(pos):
                code = inner.rpn_coder.encode(gt[matched[pos]], flat_anchors[pos])
                loss = F.smooth_l1_loss(deltas[b, pos].float(), code, beta=1 / 9, reduction="sum") / len(idx)
            else:
                loss = zero
            out["rpn_box"].append(loss)
            cand = torch.cat((props[b][0], gt))
            lab, matched = self.roi_matcher(gt, cand)
            pos, neg = sample_balanced(lab, o.roi_batch, o.roi_positive)
            rois.append(cand[torch.cat((pos, neg))])
            cls = torch.zeros(len(pos) + len(neg), dtype=torch.long, device=images.device)
            if len(gt):
                cls[: len(pos)] = labels[matched[pos]]
                roi_targets.append(inner.box_coder.encode(gt[matched[pos]], cand[pos]))
            else:
                roi_targets.append(torch.zeros(0, 4, device=images.device))
            roi_labels.append(cls)
        emb, box = inner.head(inner.region_features(pyr, rois))
        embeds = self.label_embeddings(inner) if o.text_weight > 0 else None
        at = 0
        for b in range(B):
            n = len(rois[b])
            fg = int((roi_labels[b] > 0).sum())
            if fg:
                loss = F.smooth_l1_loss(box[at : at + fg], roi_targets[b], beta=1.0, reduction="sum") / max(1, n)
            else:
                loss = zero
            out["box"].append(loss)
            if embeds is not None:  # every loss has one entry per image (accumulation slices them)
                logits = inner.class_logits(emb[at : at + n], embeds)
                out["text"].append(o.text_weight * F.cross_entropy(logits, roi_labels[b]) if n else zero)
            at += n
        if o.image_weight > 0:
            regions = [r.to(images.device).float() for r in batch["distill_boxes"]]
            head = inner.image_head if inner.image_head is not None else inner.head
            student, _ = head(inner.region_features(pyr, regions))
            at = 0
            for b, r in enumerate(regions):
                t = batch["distill_embeds"][b].to(images.device).float()
                if len(r):
                    l1 = (student[at : at + len(r)] - t).abs().sum(dim=1).mean()
                    out["image"].append(o.image_weight * l1)
                else:
                    out["image"].append(zero)
                at += len(r)
        return {k: torch.stack(v) for k, v in out.items() if v}

    def loss(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over images of each per-image loss."""
        return {k: v.float().mean() for k, v in outputs.items()}
