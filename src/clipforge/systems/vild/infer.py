"""ViLD inference: proposals -> region embeddings -> scores over any labels (+ the ensemble), per-class
NMS, boxes back in each image's pixels; the COCO evaluation on synthetic scenes or a COCO file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ...data.detection import collate_detection, detection_dataset, letterbox, synthetic_coco
from ...dense import parse_labels
from ...detection import Detections, batched_nms, clip_boxes
from ...errors import ConfigError
from ...transforms import image_to_tensor
from .model import ViLD


def label_scores(model: ViLD, feats: torch.Tensor, label_embeds: torch.Tensor, novel: torch.Tensor | None):
    """(R, N) class scores of region features and the (R, 4) box codes: p_text (softmax over [background,
    labels] / T, background dropped); an ensemble combines it with p_image (softmax over the labels of the
    image head) as p_text^l p_image^(1-l) on base and p_text^(1-l) p_image^l on novel labels (l = 2/3)."""
    emb, deltas = model.head(feats)
    p = F.softmax(model.class_logits(emb, label_embeds), dim=-1)[:, 1:]
    if model.image_head is not None:
        emb_i, _ = model.image_head(feats)
        p_img = F.softmax(emb_i @ label_embeds.float().T / model.config.temperature, dim=-1)
        lam = model.config.ensemble_weight
        is_novel = novel if novel is not None else torch.zeros(label_embeds.shape[0], dtype=torch.bool)
        w_text = torch.where(is_novel.to(p.device), 1 - lam, lam)[None]
        p = p.clamp_min(1e-12) ** w_text * p_img.clamp_min(1e-12) ** (1 - w_text)
    return p, deltas


@torch.no_grad()
def detect_tensors(
    model: ViLD, images: torch.Tensor, label_embeds: torch.Tensor, novel: torch.Tensor | None = None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per preprocessed (B, 3, S, S) image: boxes (D, 4) xyxy in the S x S frame, scores (D,), label
    indices (D,), best first, at most `config.detections`."""
    c = model.config
    S = images.shape[-1]
    pyr = model.pyramid(images)
    props = model.run_rpn(pyr, S, c.rpn_pre_nms_test, c.rpn_post_nms_test)[3]
    boxes = [p[0] for p in props]
    feats = model.region_features(pyr, boxes)
    scores, codes = label_scores(model, feats, label_embeds, novel)
    out, at = [], 0
    for b in boxes:
        s = scores[at : at + len(b)]
        refined = clip_boxes(model.box_coder.decode(codes[at : at + len(b)], b), (S, S))
        at += len(b)
        r, k = torch.nonzero(s > c.score_threshold, as_tuple=True)
        cand_boxes, cand_scores = refined[r], s[r, k]
        keep = batched_nms(cand_boxes, cand_scores, k, c.nms)[: c.detections]
        out.append((cand_boxes[keep], cand_scores[keep], k[keep]))
    return out


def novel_mask(model: ViLD, labels: Sequence[str], novel: Sequence[str] | None = None) -> torch.Tensor:
    """Which labels are novel (for the ensemble's weights): those named in `novel`, else those the model
    never saw boxes of (its `base_classes`, by name)."""
    if novel is not None:
        return torch.tensor([n in set(novel) for n in labels], dtype=torch.bool)
    base = set(model.config.base_classes)
    return torch.tensor([n not in base for n in labels], dtype=torch.bool)


def to_image(boxes: torch.Tensor, scale: float, size: tuple[int, int]) -> torch.Tensor:
    """Boxes in the letterboxed S x S frame -> in the original (width, height) image's pixels."""
    boxes = (boxes / scale).clamp(min=0)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(max=size[0])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(max=size[1])
    return boxes


@torch.no_grad()
def detect(
    model: ViLD,
    images: Iterable[str | Path | Image.Image],
    labels: str | Sequence[str],
    templates: str | None = None,
    novel: str | Sequence[str] | None = None,
) -> list[Detections]:
    """Detect `labels` (any texts) in images (files or PIL): one `Detections` per image, boxes in its own
    pixels, best first. `novel` names the labels an ensemble treats as novel (default: those not among
    the classes it was trained on)."""
    from ...transforms import load_image

    labels = parse_labels(labels)
    mask = novel_mask(model, labels, parse_labels(novel) if novel else None)
    model.eval()
    device = next(model.parameters()).device
    pre = model.clip.config.preprocess
    embeds = model.encode_labels(labels, templates).to(device)
    out = []
    for image in images:
        image = image if isinstance(image, Image.Image) else load_image(image)
        boxed, scale = letterbox(image.convert("RGB"), model.image_size)
        x = image_to_tensor(boxed, pre.mean, pre.std)[None].to(device)
        ((boxes, scores, classes),) = detect_tensors(model, x, embeds, mask)
        boxes = to_image(boxes, scale, image.size)
        out.append(Detections(boxes.cpu().numpy(), scores.cpu().numpy(), classes.cpu().numpy(), labels))
    return out


@torch.no_grad()
def predict_dataset(
    model: ViLD, ds, labels: Sequence[str], category_ids: Sequence[int], batch_size: int = 32, progress: bool = False,
    limit: int | None = None, novel: torch.Tensor | None = None,
) -> list[dict]:  # fmt: skip
    """COCO results of the model on a detection dataset (boxes mapped back to each image's pixels);
    `novel` (N,) marks the labels an ensemble treats as novel (default: `novel_mask`)."""
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    embeds = model.encode_labels(list(labels)).to(device)
    novel = novel_mask(model, labels) if novel is None else novel
    n = len(ds) if limit is None else min(limit, len(ds))
    rows: list[dict] = []
    for start in tqdm(range(0, n, batch_size), desc="detecting", unit="batch", disable=not progress):
        batch = collate_detection([ds[i] for i in range(start, min(n, start + batch_size))])
        results = detect_tensors(model, batch["images"].to(device), embeds, novel)
        for (boxes, scores, classes), image_id, scale, size in zip(
            results, batch["image_ids"], batch["scales"], batch["sizes"]
        ):
            boxes = to_image(boxes, scale, size)
            det = Detections(boxes.cpu().numpy(), scores.cpu().numpy(), classes.cpu().numpy(), list(labels))
            rows += det.coco(int(image_id), list(category_ids))
    return rows


def ground_truth(ds, limit: int | None = None) -> dict:
    """The dataset's COCO ground truth (synthetic scenes rendered as COCO; a COCO file as it is), cut to
    the first `limit` images."""
    if hasattr(ds, "world"):
        gt = synthetic_coco(ds.world if limit is None else _first(ds.world, limit))
    else:
        gt = ds.coco
        if limit is not None:
            keep = {int(im["id"]) for im in ds.images[:limit]}
            gt = {**gt, "images": [im for im in gt["images"] if int(im["id"]) in keep]}
            gt["annotations"] = [a for a in ds.coco["annotations"] if a["image_id"] in keep]
    return gt


def _first(world, n: int):
    from ...data.synthetic import SyntheticWorld

    return SyntheticWorld(min(n, len(world)), world.image_size, world.split, world.seed, world.max_objects)


def evaluate_detection(
    model: ViLD,
    data: str,
    labels: str | None = None,
    novel: str | None = None,
    max_images: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO AP of the model on `data` (synthetic[:...] or ANNOTATIONS.json[:IMAGES]): the 12 numbers and
    per-class AP; with `novel` (comma-separated category names) also novel_ap/novel_ap50 and base_ap/base_ap50.
    `labels` replaces the category names as the texts embedded (one per category, in order)."""
    from ...eval.detection import coco_evaluate

    pre = model.clip.config.preprocess
    ds = detection_dataset(data, model.image_size, pre.mean, pre.std, train=False)
    names = [c["name"] for c in ds.categories]
    texts = parse_labels(labels) if labels else names
    if len(texts) != len(names):
        raise ConfigError(f"--labels gives {len(texts)} texts for {len(names)} categories ({', '.join(names)})")
    ids = [int(c["id"]) for c in ds.categories]
    # an ensemble weighs labels by whether their categories were trained on (by name, whatever the texts)
    base = set(model.config.base_classes)
    mask = torch.tensor([n not in base for n in names], dtype=torch.bool)
    rows = predict_dataset(model, ds, texts, ids, batch_size, progress, max_images, mask)
    gt = ground_truth(ds, max_images)
    metrics = coco_evaluate(gt, rows)
    if novel:
        novel_list = parse_labels(novel)
        unknown = [n for n in novel_list if n not in names]
        if unknown:
            raise ConfigError(f"novel categories {unknown} are not among {', '.join(names)}")
        novel_ids = [i for i, n in zip(ids, names) if n in novel_list]
        base_ids = [i for i in ids if i not in novel_ids]
        for split, cats in (("novel", novel_ids), ("base", base_ids)):
            if cats:
                m = coco_evaluate(gt, rows, categories=cats)
                metrics[f"{split}_ap"], metrics[f"{split}_ap50"] = m["AP"], m["AP50"]
    return metrics
