"""The systems registry. Every system (CLIP, and the family built on it) is one package that
describes itself with a `System` and registers it by name; the trainer, the checkpoint format and the
`clipforge` command then serve it without knowing anything about it.

A system brings:
- `model`: an `nn.Module` class with `from_config(config)` and a `.config` attribute;
- `config`: the model's config dataclass (stored beside the weights, so `load` can rebuild it);
- `task`: a `clipforge.train.Task` subclass (data, collate, forward, loss and optional hooks);
- `options`: the task's training options dataclass (set with `--set key=value` or generated flags);
- `presets`, `evaluators`, `recipes`, `verbs` (CLI subcommands), `studies` and `importers`.

Built-in systems are imported on first use; third-party packages register theirs through the
`clipforge.systems` entry-point group (a module that calls `register_system` when imported).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, UnknownModelError

BUILTIN_SYSTEMS = (
    "clipforge.systems.clip",
    "clipforge.systems.lseg",
    "clipforge.systems.groupvit",
    "clipforge.systems.vild",
)
DEFAULT_SYSTEM = "clip"  # what `clipforge train` trains when it names no system
CORE_VERBS = ("train", "eval", "models", "convert", "data", "study", "segment", "detect")
# `clipforge train` options of its own; a system's options generate flags beside them and TrainConfig's
TRAIN_COMMAND_OPTIONS = ("recipe", "model", "data", "set", "pretrained", "val_data", "val_task", "clip")
ENTRY_POINT_GROUP = "clipforge.systems"


@dataclass(frozen=True)
class NoOptions:
    """The options of a task that has none."""


@dataclass(frozen=True)
class Verb:
    """A `clipforge` subcommand: `add_arguments(parser)` declares its options, `run(args)` returns the
    exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Evaluator:
    """A benchmark `clipforge eval --task NAME` runs: `run(model, data, **options) -> {"metric": value}`.

    `options` maps extra `clipforge eval` flags to their argparse keywords (e.g. `{"--templates": {...}}`);
    each flag reaches `run` as the keyword of its name (`--batch-size` -> `batch_size`); flags several
    evaluators share are declared once."""

    name: str
    help: str
    run: Callable[..., dict[str, Any]]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A named training run: preset, data, and settings, each overridable on the command line.

    `doc` carries the command that runs it and what a correct run reaches."""

    name: str
    doc: str
    model: str | None = None  # preset name
    data: str | None = None  # --data spec
    settings: Mapping[str, Any] = field(default_factory=dict)  # model config fields and task options
    train: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields
    clip: str | None = None  # systems built on a CLIP: the CLIP to start from (--clip)


@dataclass(frozen=True)
class Pretrained:
    """Weights a name resolves to: `clipforge.load(name)`, or `create_model(name, pretrained=tag)`.

    `fetch()` returns a local file or folder (downloading it once, or from the package) that
    `clipforge.load` reads; `cached()` says whether that needs no download."""

    name: str
    tag: str
    description: str
    fetch: Callable[[], Any]
    cached: Callable[[], bool] = lambda: True
    aliases: Sequence[str] = ()
    load_options: Mapping[str, Any] = field(default_factory=dict)  # passed to clipforge.load


@dataclass(frozen=True)
class System:
    """Everything the core needs to train, save, load, evaluate and command one system."""

    name: str
    description: str
    model: type
    config: type
    task: type
    presets: Mapping[str, Any]
    default_preset: str
    options: type = NoOptions
    aliases: Mapping[str, str] = field(default_factory=dict)  # other spellings of preset names
    evaluators: Mapping[str, Evaluator] = field(default_factory=dict)
    recipes: Mapping[str, Recipe] = field(default_factory=dict)
    verbs: Sequence[Verb] = ()
    studies: Mapping[str, Verb] = field(default_factory=dict)  # `clipforge study NAME`; the first is the default
    exporters: Mapping[str, Callable[[Any, Any], Any]] = field(default_factory=dict)  # save(format=...)
    importers: Sequence[Callable[..., Any]] = ()  # foreign checkpoint layouts: return a model or None
    sample_data: str = ""  # a --data spec that needs no files (contract tests, smoke runs)
    describe: Callable[[Any], str] | None = None  # one line about a preset's config (`clipforge models`)
    pretrained: Sequence[Pretrained] = ()  # weights by name
    # Systems built on a CLIP: `from_clip(config, clip)` is a model of `config` whose CLIP parts take
    # `clip`'s architecture and weights (`clipforge train SYSTEM --clip NAME|PATH`); `default_clip` is
    # what a run starts from when neither --clip nor --model is given.
    from_clip: Callable[[Any, Any], Any] | None = None
    default_clip: str | None = None
    # Systems that label pixels: `segmenter(model, images, labels, **options)` -> one
    # `clipforge.dense.Segmentation` per PIL image (`clipforge segment`)
    segmenter: Callable[..., Any] | None = None
    # Systems that box objects: `detector(model, images, labels, **options)` -> one
    # `clipforge.detection.Detections` per PIL image, in its pixels (`clipforge detect`)
    detector: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config) or not dataclasses.is_dataclass(self.options):
            raise ConfigError(f"system {self.name!r}: config and options must be dataclasses")
        clash = {f.name for f in dataclasses.fields(self.config)} & {f.name for f in dataclasses.fields(self.options)}
        if clash:
            raise ConfigError(f"system {self.name!r}: config and options share field names {sorted(clash)}")
        if self.default_preset not in self.presets:
            raise ConfigError(f"system {self.name!r}: default preset {self.default_preset!r} is not a preset")

    def preset(self, name: str) -> Any:
        """The config of preset `name` (or one of its aliases); UnknownModelError names close matches."""
        return find_preset(self.presets, self.aliases, name, self.name)

    def build(self, config: Any) -> Any:
        """A randomly initialised model of `config`."""
        return self.model.from_config(config)


def find_preset(presets: Mapping[str, Any], aliases: Mapping[str, str], name: str, system: str) -> Any:
    """`presets[name]`, or the preset an alias names; UnknownModelError names close matches."""
    key = aliases.get(name, name)
    if key not in presets:
        close = difflib.get_close_matches(name, [*presets, *aliases], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown {system} model {name!r}.{hint} Known: {', '.join(presets)} (`clipforge models`)"
        )
    return presets[key]


_SYSTEMS: dict[str, System] = {}
_loaded = False


def systems_with(hook: str) -> list[str]:
    """Names of the registered systems that provide `hook` (e.g. "segmenter", "detector"), for help texts
    and errors that list them."""
    return [n for n in list_systems() if getattr(get_system(n), hook) is not None]


def register_system(system: System, *, replace: bool = False) -> System:
    """Make `system` available to the trainer, checkpoints and CLI under `system.name`."""
    if not isinstance(system, System):
        raise ConfigError(f"register_system takes a clipforge.registry.System, got {type(system).__name__}")
    if system.name in _SYSTEMS and not replace and _SYSTEMS[system.name] is not system:
        raise ConfigError(f"a system named {system.name!r} is already registered (pass replace=True to override)")
    _check_names(system)
    _SYSTEMS[system.name] = system
    return system


def _check_names(system: System) -> None:
    """A system's commands, studies and option flags must not collide with the core's or another
    system's: one bad plug-in must not break the `clipforge` command for everyone."""
    from .train.config import TrainConfig

    others = [s for s in _SYSTEMS.values() if s.name != system.name]
    taken = {*CORE_VERBS, *(v.name for s in others for v in s.verbs)}
    studies = {*(n for s in others for n in s.studies), *(s.name for s in others)}
    clashes = [v.name for v in system.verbs if v.name in taken]
    clashes += [n for n in [*system.studies, system.name] if n in studies]
    flags = {f.name for f in dataclasses.fields(TrainConfig)} | set(TRAIN_COMMAND_OPTIONS)
    clashes += [f.name for f in dataclasses.fields(system.options) if f.name in flags]
    if clashes:
        raise ConfigError(f"system {system.name!r}: names already taken by clipforge or another system: {clashes}")


def unregister_system(name: str) -> None:
    """Remove a registered system (tests, notebooks)."""
    _SYSTEMS.pop(name, None)


def _load_systems() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    from importlib.metadata import entry_points

    for module in BUILTIN_SYSTEMS:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plug-in must not take the built-in systems down with it
            import warnings

            warnings.warn(f"clipforge: cannot load system plug-in {ep.name!r} ({ep.value}): {e}", stacklevel=2)


def list_systems() -> list[str]:
    """Names of every registered system, built-in ones first."""
    _load_systems()
    return list(_SYSTEMS)


def get_system(name: str) -> System:
    """The registered system `name`; UnknownModelError names the known ones."""
    _load_systems()
    if name not in _SYSTEMS:
        close = difflib.get_close_matches(name, list(_SYSTEMS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown system {name!r}.{hint} Known: {', '.join(_SYSTEMS)}")
    return _SYSTEMS[name]


def find_pretrained(name: str, tag: str | None = None) -> Pretrained | None:
    """The pretrained weights of any system called `name` (or an alias of it), with `tag` if given."""
    for system_name in list_systems():
        for entry in get_system(system_name).pretrained:
            if name in (entry.name, *entry.aliases) and tag in (None, entry.tag):
                return entry
    return None


def all_pretrained() -> list[tuple[str, Pretrained]]:
    """(system name, entry) for every pretrained name of every registered system."""
    return [(s, entry) for s in list_systems() for entry in get_system(s).pretrained]


def system_of(model: Any) -> System:
    """The registered system whose model class `model` is an instance of."""
    _load_systems()
    for system in reversed(list(_SYSTEMS.values())):  # later registrations may subclass earlier models
        if isinstance(model, system.model):
            return system
    raise ConfigError(
        f"{type(model).__name__} is not the model of any registered system ({', '.join(_SYSTEMS)}); "
        "register it with clipforge.register_system"
    )
