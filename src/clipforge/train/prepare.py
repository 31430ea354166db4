"""One place that turns a system name, a recipe and command-line settings into a ready run:
model (seeded), task, training data and TrainConfig. `clipforge train` and the systems' own
commands (quickstart, studies) use it, so a recipe means the same everywhere."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..registry import Recipe, System, get_system
from ..settings import field_names, override
from .config import TrainConfig
from .task import Task


@dataclass
class Run:
    """Everything `clipforge.train.train` needs, and where it came from."""

    system: System
    preset: str
    data: str
    task: Task
    dataset: Dataset | None  # None when asked not to load it
    config: TrainConfig | None  # None when the training settings name no output folder

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


def build_model(system: System, config: Any, seed: int | None = None) -> torch.nn.Module:
    """A randomly initialised model of `config`, seeded without touching the global RNG state."""
    if seed is None:
        return system.build(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return system.build(config)


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
) -> Run:
    """Model, task, data and TrainConfig of a run; explicit arguments win over the recipe's values,
    which win over the system's defaults. The model and the data are seeded with the training seed."""
    system = get_system(system) if isinstance(system, str) else system
    r = recipe_of(system, recipe)
    preset = model or r.model or system.default_preset
    data = data or r.data
    if load_data and not data:
        raise ConfigError(f"give training data (--data); for example --data {system.sample_data or 'synthetic'}")
    config_changes, option_changes = split_settings(system, {**r.settings, **(settings or {})})
    train_settings = {**r.train, **(train or {})}
    train_config = TrainConfig.from_dict(train_settings) if "out" in train_settings else None
    seed = train_settings.get("seed", 0)
    config = override(system.preset(preset), config_changes)
    options = override(system.options(), option_changes)
    task = system.task(build_model(system, config, seed=seed), options)
    dataset = task.dataset(data, seed=seed) if load_data else None
    return Run(system, preset, data or "", task, dataset, train_config)
