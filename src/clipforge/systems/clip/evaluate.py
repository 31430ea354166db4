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


def zeroshot(
    model: torch.nn.Module, ds: LabelledImages, templates: Any = "photo", feats: torch.Tensor | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean per-class recall of the zero-shot classifier on `ds`."""
    clf = zero_shot_classifier(model, ds.classnames, templates)
    feats = image_features(model, ds) if feats is None else feats
    logits = clf.logits(feats)
    labels = torch.tensor(ds.labels)
    out = topk_accuracy(logits, labels, (1, 5))
    out["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(1), labels, len(ds.classnames))
    out["samples"] = len(labels)
    return out


def retrieval(model: torch.nn.Module, ds: CaptionedImages) -> dict[str, float]:
    """Image->text and text->image recall@k and median rank over every caption of every image."""
    img = torch.nn.functional.normalize(image_features(model, ds), dim=-1)
    txt = torch.nn.functional.normalize(text_features(model, ds.captions), dim=-1)
    out = retrieval_metrics(img @ txt.T, torch.tensor(ds.caption_image))
    out.update(images=len(ds.images), captions=len(ds.captions))
    return out


def _probe_data(model: torch.nn.Module, spec: str) -> tuple[torch.Tensor, ...]:
    size = model.config.vision.image_size
    train, test = labelled_dataset(spec, "train", size), labelled_dataset(spec, "test", size)
    return (
        image_features(model, train),
        torch.tensor(train.labels),
        image_features(model, test),
        torch.tensor(test.labels),
    )


def _zeroshot(model: torch.nn.Module, data: str, templates: Any = "photo") -> dict[str, Any]:
    return zeroshot(model, labelled_dataset(data, "test", model.config.vision.image_size), templates)


def _retrieval(model: torch.nn.Module, data: str) -> dict[str, Any]:
    return retrieval(model, captioned_dataset(data, model.config.vision.image_size))


def _linear_probe(model: torch.nn.Module, data: str) -> dict[str, Any]:
    return linear_probe(*_probe_data(model, data))


def _fewshot(
    model: torch.nn.Module, data: str, templates: Any = "photo", ks: tuple[int, ...] = (1, 2, 4, 8, 16)
) -> dict[str, Any]:
    xtr, ytr, xte, yte = _probe_data(model, data)
    metrics: dict[str, Any] = few_shot(xtr, ytr, xte, yte, ks)
    test = labelled_dataset(data, "test", model.config.vision.image_size)
    metrics["zero-shot"] = {"top1": zeroshot(model, test, templates, feats=xte)["top1"]}
    return metrics


EVALUATORS = {
    e.name: e
    for e in (
        Evaluator("zeroshot", "zero-shot classification of labelled images", _zeroshot, TEMPLATES),
        Evaluator("retrieval", "image<->text retrieval over captioned images", _retrieval),
        Evaluator("linear-probe", "logistic regression on frozen image features", _linear_probe),
        Evaluator("fewshot", "k-shot linear probes beside zero-shot", _fewshot, TEMPLATES),
    )
}
