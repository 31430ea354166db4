"""The CLIP system's evaluators: zero-shot classification, retrieval, linear probe and few-shot
probes (results in the spirit of CLIP_benchmark), each returning named metrics."""

from __future__ import annotations

from typing import Any

import torch

from ...eval.datasets import CaptionedImages, LabelledImages, captioned_dataset, labelled_dataset
from ...eval.features import image_features, text_features
from ...eval.metrics import mean_per_class_recall, retrieval_metrics, topk_accuracy
from ...eval.probe import few_shot, linear_probe
from ...eval.zeroshot import zero_shot_classifier
from ...registry import Evaluator

TEMPLATES = {"--templates": {"default": "photo", "help": "prompt template set or file (zeroshot, fewshot)"}}
BATCH = {"--batch-size": {"type": int, "default": 128, "help": "images per forward pass"}}


def zeroshot(
    model: torch.nn.Module,
    ds: LabelledImages,
    templates: Any = "photo",
    feats: torch.Tensor | None = None,
    batch_size: int = 128,
) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean per-class recall of the zero-shot classifier on `ds` (also under
    CLIP_benchmark's names `acc1`, `acc5`)."""
    clf = zero_shot_classifier(model, ds.classnames, templates)
    feats = image_features(model, ds, batch_size=batch_size) if feats is None else feats
    logits = clf.logits(feats).cpu()  # features passed in may live on a GPU
    labels = torch.tensor(ds.labels)
    out = topk_accuracy(logits, labels, (1, 5))
    out["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(1), labels, len(ds.classnames))
    out.update(acc1=out["top1"], acc5=out["top5"], samples=len(labels))
    return out


def retrieval(model: torch.nn.Module, ds: CaptionedImages, batch_size: int = 128) -> dict[str, float]:
    """Image->text and text->image recall@k and median rank over every caption of every image (also
    under CLIP_benchmark's names: `image_retrieval_recall@k` is text->image, `text_retrieval_recall@k`
    image->text)."""
    img = torch.nn.functional.normalize(image_features(model, ds, batch_size=batch_size), dim=-1)
    txt = torch.nn.functional.normalize(text_features(model, ds.captions, batch_size=2 * batch_size), dim=-1)
    out = retrieval_metrics(img @ txt.T, torch.tensor(ds.caption_image))
    for k in (1, 5, 10):
        out[f"image_retrieval_recall@{k}"] = out[f"text_to_image_R@{k}"]
        out[f"text_retrieval_recall@{k}"] = out[f"image_to_text_R@{k}"]
    out.update(images=len(ds.images), captions=len(ds.captions))
    return out


def _probe_data(model: torch.nn.Module, spec: str, batch_size: int = 128) -> tuple[torch.Tensor, ...]:
    size = model.config.vision.image_size
    train, test = labelled_dataset(spec, "train", size), labelled_dataset(spec, "test", size)
    return (
        image_features(model, train, batch_size=batch_size),
        torch.tensor(train.labels),
        image_features(model, test, batch_size=batch_size),
        torch.tensor(test.labels),
    )


def _zeroshot(model: torch.nn.Module, data: str, templates: Any = "photo", batch_size: int = 128) -> dict[str, Any]:
    ds = labelled_dataset(data, "test", model.config.vision.image_size)
    return zeroshot(model, ds, templates, batch_size=batch_size)


def _retrieval(model: torch.nn.Module, data: str, batch_size: int = 128) -> dict[str, Any]:
    return retrieval(model, captioned_dataset(data, model.config.vision.image_size), batch_size)


def _linear_probe(model: torch.nn.Module, data: str, batch_size: int = 128) -> dict[str, Any]:
    return linear_probe(*_probe_data(model, data, batch_size))


def _fewshot(
    model: torch.nn.Module,
    data: str,
    templates: Any = "photo",
    batch_size: int = 128,
    ks: tuple[int, ...] = (1, 2, 4, 8, 16),
) -> dict[str, Any]:
    xtr, ytr, xte, yte = _probe_data(model, data, batch_size)
    metrics: dict[str, Any] = few_shot(xtr, ytr, xte, yte, ks)
    test = labelled_dataset(data, "test", model.config.vision.image_size)
    metrics["zero-shot"] = {"top1": zeroshot(model, test, templates, feats=xte)["top1"]}
    return metrics


EVALUATORS = {
    e.name: e
    for e in (
        Evaluator("zeroshot", "zero-shot classification of labelled images", _zeroshot, {**TEMPLATES, **BATCH}),
        Evaluator("retrieval", "image<->text retrieval over captioned images", _retrieval, BATCH),
        Evaluator("linear-probe", "logistic regression on frozen image features", _linear_probe, BATCH),
        Evaluator("fewshot", "k-shot linear probes beside zero-shot", _fewshot, {**TEMPLATES, **BATCH}),
    )
}
