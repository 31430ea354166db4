"""One place that turns a system name, a recipe and command-line settings into a ready run:
model (seeded, or pretrained), task, training data, TrainConfig and validation. `clipforge train`
and the quickstart use it, so a recipe means the same everywhere."""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ..distributed import rank
from ..errors import ConfigError
from ..registry import Recipe, System, get_system
from ..settings import field_names, override
from .config import TrainConfig
from .task import Task


@dataclass
class Run:
    """Everything `clipforge.train.train` needs, and where it came from."""

    system: System
    task: Task
    dataset: Dataset | None  # None when asked not to load it
    config: TrainConfig | None  # None when the training settings name no output folder
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None  # validation during training

    @property
    def model(self) -> torch.nn.Module:
        """The model being trained (the task holds it)."""
        return self.task.model


def split_settings(system: System, settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings divided into model-config changes and task-option changes (their names never clash);
    a name in neither is an error naming the valid ones."""
    config_heads = {f.name for f in dataclasses.fields(system.config)}
    option_heads = {f.name for f in dataclasses.fields(system.options)}
    config, options = {}, {}
    for key, value in settings.items():
        head = key.partition(".")[0]
        if head in option_heads:
            options[key] = value
        elif head in config_heads:
            config[key] = value
        else:
            valid = field_names(system.config) + field_names(system.options)
            close = difflib.get_close_matches(key, valid, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown {system.name} setting {key!r}{hint}; valid: {', '.join(valid)}")
    return config, options


def seeded(build: Callable[[], Any], seed: int | None = None) -> Any:
    """`build()` under `torch.manual_seed(seed)` (if given), leaving the global RNG state as it was."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_model(system: System, config: Any, seed: int | None = None) -> torch.nn.Module:
    """A randomly initialised model of `config`, seeded without touching the global RNG state."""
    return seeded(lambda: system.build(config), seed)


def recipe_of(system: System, name: str | None) -> Recipe:
    """The named recipe of `system` (an empty one for None)."""
    if name is None:
        return Recipe(name="", doc="")
    if name not in system.recipes:
        known = ", ".join(system.recipes) or "none"
        raise ConfigError(f"unknown {system.name} recipe {name!r}; known: {known}")
    return system.recipes[name]


def prepare_run(
    system: str | System,
    *,
    recipe: str | None = None,
    model: str | None = None,
    data: str | None = None,
    settings: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    load_data: bool = True,
    pretrained: str | None = None,
    val_data: str | None = None,
    val_task: str | None = None,
    clip: str | torch.nn.Module | None = None,
) -> Run:
    """Model, task, data and TrainConfig of a run; explicit arguments win over the recipe's values,
    which win over the system's defaults. The model and the data are seeded with the training seed.

    `pretrained` (a path or a name `clipforge.load` resolves) starts from those weights and their
    architecture; `val_data` is evaluated with the system's evaluator `val_task` (default: its first)
    every `eval_every` steps and at the end.

    Systems built on a CLIP (`System.from_clip`) take its architecture and weights from `clip` (a CLIP
    model, or a path or name `clipforge.load` resolves; "none" for a random one of the preset's shape);
    default: the recipe's, else the system's `default_clip`; when `model` names a preset and `clip` is not
    given, the preset's CLIP starts from random weights (a note says so)."""
    system = get_system(system) if isinstance(system, str) else system
    r = recipe_of(system, recipe)
    preset = model or r.model or system.default_preset
    data = data or r.data
    if load_data and not data:
        raise ConfigError(f"give training data (--data); for example --data {system.sample_data or 'synthetic'}")
    config_changes, option_changes = split_settings(system, {**r.settings, **(settings or {})})
    train_settings = {**r.train, **(train or {})}
    if train and "epochs" in train and "steps" not in train:
        train_settings.pop("steps", None)  # an explicit --epochs replaces the recipe's --steps
    if train and "steps" in train and "epochs" not in train:
        train_settings.pop("epochs", None)
    train_config = TrainConfig.from_dict(train_settings) if "out" in train_settings else None
    seed = train_settings.get("seed", 0)
    options = override(system.options(), option_changes)
    clip = _clip_source(system, clip, r.clip, model, pretrained)
    if pretrained:
        explicit = split_settings(system, settings or {})[0]  # a recipe's architecture settings give way
        net = _pretrained(system, pretrained, model, explicit)
    elif clip is not None:
        net = _from_clip(system, clip, override(system.preset(preset), config_changes), config_changes, seed)
    else:
        net = build_model(system, override(system.preset(preset), config_changes), seed=seed)
    task = system.task(net, options)
    dataset = task.dataset(data, seed=seed) if load_data else None
    evaluate = _validation(system, val_data, val_task) if val_data else None
    return Run(system, task, dataset, train_config, evaluate)


def train_recipe(
    system: str,
    recipe: str,
    out: str,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
    clip: str | torch.nn.Module | None = None,
    settings: Mapping[str, Any] | None = None,
    data: str | None = None,
    model: str | None = None,
) -> torch.nn.Module:
    """Train `recipe` of `system` into `out` with these few settings changed, replacing an earlier run
    there and checkpointing only at the end; the model comes back on the CPU in eval mode. What the
    studies run, fold after fold."""
    from .loop import train

    run = prepare_run(
        system,
        recipe=recipe,
        clip=clip,
        settings=settings,
        data=data,
        model=model,
        train={
            "out": str(out),
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "progress": progress,
            "overwrite": True,
            "checkpoint_every_s": 1e9,
        },
    )
    train(run.task, run.dataset, run.config)
    return run.model.cpu().eval()


def _pretrained(system: System, name: str, model: str | None, config_changes: Mapping[str, Any]) -> torch.nn.Module:
    from ..checkpoints import load
    from ..registry import system_of

    if model:
        raise ConfigError("--pretrained and --model both name the architecture; give one")
    if config_changes:
        raise ConfigError(
            f"--pretrained fixes the architecture, so {', '.join(config_changes)} cannot be set (options can)"
        )
    net = load(name)
    if system_of(net) is not system:
        raise ConfigError(f"{name} holds a {system_of(net).name} model, not {system.name}")
    return net


def _clip_source(
    system: System, clip: str | torch.nn.Module | None, recipe_clip: str | None, model: str | None, pretrained: Any
) -> str | torch.nn.Module | None:
    """The CLIP a run of a CLIP-based system starts from, or None for random weights."""
    if system.from_clip is None:
        if clip is not None:
            raise ConfigError(f"the {system.name} system is not built on a CLIP; --clip does not apply")
        return None
    if pretrained:
        if clip is not None:
            raise ConfigError("--pretrained already holds the CLIP the model was built on; give --clip or --pretrained")
        return None
    if clip is None and model is None:
        clip = recipe_clip or system.default_clip
    if clip is None or isinstance(clip, str) and clip.lower() in ("none", "random"):
        if clip is None and rank() == 0:  # --model without --clip: say so, a random text tower names nothing
            print(
                f"note: --model {model} without --clip: the CLIP starts from random weights (its text tower is "
                f"frozen, so labels keep random embeddings); pass --clip NAME|PATH to build on trained weights",
                file=sys.stderr,
            )
        return None
    return clip


def _from_clip(
    system: System, clip: str | torch.nn.Module, config: Any, changes: Mapping[str, Any], seed: int
) -> torch.nn.Module:
    from ..checkpoints import load
    from ..models import CLIP

    clip_changes = [k for k in changes if k.partition(".")[0] == "clip"]
    if clip_changes:
        name = clip if isinstance(clip, str) else "the given CLIP"
        raise ConfigError(
            f"this run builds on --clip {name}, whose architecture it keeps, so {', '.join(clip_changes)} cannot "
            "be set; pass --clip none to start from a random CLIP of your own shape"
        )
    net = load(clip) if isinstance(clip, str) else clip
    if not isinstance(net, CLIP):
        raise ConfigError(f"--clip {clip} holds a {type(net).__name__}, not a CLIP model")
    return seeded(lambda: system.from_clip(config, net), seed)


def _validation(system: System, data: str, task: str | None) -> Callable[[torch.nn.Module], dict[str, float]]:
    """Runs evaluator `task` of `system` on `data` and flattens its metrics (`fewshot/1-shot/top1`)."""
    if not system.evaluators:
        raise ConfigError(f"the {system.name} system has no evaluators to run on --val-data")
    name = task or next(iter(system.evaluators))
    if name not in system.evaluators:
        raise ConfigError(f"unknown {system.name} evaluator {name!r}; choose one of {', '.join(system.evaluators)}")
    from ..eval.run import evaluator_options

    evaluator = system.evaluators[name]
    defaults = evaluator_options(evaluator, lambda _, kwargs: kwargs.get("default"))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}

        def flatten(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping):
                for k, v in value.items():
                    flatten(f"{prefix}/{k}" if prefix else str(k), v)
            elif isinstance(value, (int, float)):
                out[prefix] = value

        flatten("", evaluator.run(model, data, **defaults))
        return out

    return evaluate
