"""Benchmark runners behind `clipforge eval` (results in the spirit of CLIP_benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from .datasets import CaptionedImages, LabelledImages, captioned_dataset, labelled_dataset
from .features import image_features, text_features
from .metrics import mean_per_class_recall, retrieval_metrics, topk_accuracy
from .probe import few_shot, linear_probe
from .zeroshot import zero_shot_classifier

TASKS = ("zeroshot", "retrieval", "linear-probe", "fewshot")


def zeroshot(
    model: torch.nn.Module, ds: LabelledImages, templates: Any = "photo", feats: torch.Tensor | None = None
) -> dict[str, float]:
    clf = zero_shot_classifier(model, ds.classnames, templates)
    feats = image_features(model, ds) if feats is None else feats
    logits = clf.logits(feats)
    labels = torch.tensor(ds.labels)
    out = topk_accuracy(logits, labels, (1, 5))
    out["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(1), labels, len(ds.classnames))
    out["samples"] = len(labels)
    return out


def retrieval(model: torch.nn.Module, ds: CaptionedImages) -> dict[str, float]:
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


def run_eval(
    model: torch.nn.Module,
    task: str,
    data: str,
    templates: Any = "photo",
    model_name: str = "",
    ks: tuple[int, ...] = (1, 2, 4, 8, 16),
) -> dict[str, Any]:
    """Run one benchmark; returns {"dataset", "model", "task", "metrics"}."""
    if task not in TASKS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    model.eval()
    size = model.config.vision.image_size
    if task == "zeroshot":
        metrics = zeroshot(model, labelled_dataset(data, "test", size), templates)
    elif task == "retrieval":
        metrics = retrieval(model, captioned_dataset(data, size))
    elif task == "linear-probe":
        metrics = linear_probe(*_probe_data(model, data))
    else:
        xtr, ytr, xte, yte = _probe_data(model, data)
        metrics = few_shot(xtr, ytr, xte, yte, ks)
        test = labelled_dataset(data, "test", size)
        metrics["zero-shot"] = {"top1": zeroshot(model, test, templates, feats=xte)["top1"]}
    return {"dataset": data, "model": model_name, "task": task, "metrics": metrics}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of a result's metrics (nested dicts flattened as `key/sub`)."""
    rows: list[tuple[str, Any]] = []
    for k, v in result["metrics"].items():
        if isinstance(v, dict):
            rows += [(f"{k}/{sk}", sv) for sk, sv in v.items()]
        else:
            rows.append((k, v))
    head = f"{result['task']} on {result['dataset']} ({result['model'] or 'model'})\n\n| metric | value |\n|---|---|\n"
    return head + "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows)


def write_json(obj: Any, path: str | Path) -> None:
    """Atomic JSON write."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))
