"""`clipforge eval`: run a registered evaluator of the model's system, and report its metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from ..errors import ConfigError
from ..registry import Evaluator, get_system, list_systems, system_of


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the first GPU if there is one, else the CPU; any other name as torch.device takes it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA GPU")
    return device


def evaluator_options(evaluator: Evaluator, value: Callable[[str, dict[str, Any]], Any]) -> dict[str, Any]:
    """The keyword options to call `evaluator.run` with: each declared flag (`--batch-size`) becomes its
    keyword (`batch_size`) with `value(keyword, argparse_kwargs)`; options left as None are not passed."""
    out = {}
    for flag, kwargs in evaluator.options.items():
        keyword = flag.lstrip("-").replace("-", "_")
        v = value(keyword, dict(kwargs))
        if v is not None:
            out[keyword] = v
    return out


def evaluator_names() -> list[str]:
    """Every evaluator name of every registered system (what `clipforge eval --task` accepts)."""
    return list(dict.fromkeys([*(name for s in list_systems() for name in get_system(s).evaluators), *FILE_TASKS]))


def run_eval(model: torch.nn.Module, task: str, data: str, *, model_name: str = "", **options: Any) -> dict[str, Any]:
    """Run evaluator `task` of the model's system on `data`; returns {"dataset", "model", "task", "metrics"}.

    `options` are the evaluator's own keyword options (e.g. `templates="photo"` for zero-shot)."""
    system = system_of(model)
    if task not in system.evaluators:
        raise ConfigError(
            f"unknown evaluation task {task!r} for a {system.name} model; choose one of {', '.join(system.evaluators)}"
        )
    model.eval()
    metrics = system.evaluators[task].run(model, data, **options)
    return {"dataset": data, "model": model_name, "task": task, "metrics": metrics}


FILE_TASKS = ("segmentation", "detection")  # tasks that also score a user's own prediction files


def score_files(task: str, pred: str | None, gt: str | None, classes: str | None) -> dict[str, Any]:
    """Score prediction files against ground-truth files (no model): {"dataset", "model", "task", "metrics"}.

    segmentation: folders of indexed-PNG masks of the same names, and a class-name list.
    detection: COCO results JSON against a COCO instances JSON (the 12 COCO numbers and per-class AP)."""
    if task not in FILE_TASKS:
        raise ConfigError(f"--pred/--gt score files for {', '.join(FILE_TASKS)}, not {task!r}")
    if task == "detection":
        if not pred or not gt:
            raise ConfigError("scoring detections needs --pred RESULTS.json and --gt INSTANCES.json (COCO formats)")
        from .detection import coco_evaluate

        return {"dataset": str(gt), "model": str(pred), "task": task, "metrics": coco_evaluate(gt, pred)}
    if not pred or not gt or not classes:
        raise ConfigError("scoring segmentation files needs --pred DIR, --gt DIR and --classes FILE")
    from .segmentation import score_folders

    return {"dataset": str(gt), "model": str(pred), "task": task, "metrics": score_folders(pred, gt, classes)}


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
