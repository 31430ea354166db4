"""Save and load the model of any registered system.

clipforge's own format is safetensors with the system's name and config in the file's metadata
(or a directory with `model.safetensors` + `config.json`), so `load` rebuilds the model through the
registry without being told what it is. Files in other layouts (OpenAI, OpenCLIP, Hugging Face CLIP)
are offered to each system's importers; `save(format=...)` uses a system's exporters. Nothing is
ever unpickled as code, and every write is atomic.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import settings
from ._io import atomic_directory, atomic_write
from .errors import CheckpointError, ConfigError
from .registry import get_system, list_systems, system_of
from .torchscript import is_torchscript, read_torchscript_state_dict

FORMAT_VERSION = 1
LEGACY_SYSTEM = "clip"  # clipforge files that name no system were written when CLIP was the only one
_SIDE_FILES = ("preprocessor_config.json", "open_clip_config.json")  # read with a directory's weights
_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pt",
)


@dataclass
class Checkpoint:
    """A weights file as read: its tensors and whatever config came with them."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None  # the stored config (clipforge's, or a Hugging Face config.json)
    flavour: str  # "clipforge" | "hf" | "" (weights alone)
    system: str | None  # the system a clipforge file names
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # other JSON files of a directory, parsed
    torchscript: bool = False  # read from a TorchScript archive (how OpenAI released its models)


# ----------------------------------------------------------------------------------------- reading
MIN_SAFE_TORCH = (2, 10)  # earlier torch.load(weights_only=True) can run code or corrupt memory


def check_safe_torch(version: str | None = None) -> None:
    """Refuse to unpickle with a torch whose restricted unpickler has known holes: before 2.6 it handed
    TorchScript archives to the code-running loader (CVE-2025-32434); before 2.10 crafted storages could
    read and write out of bounds (CVE-2026-24747)."""
    version = version or torch.__version__
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < MIN_SAFE_TORCH:
        raise CheckpointError(
            f"torch {version} cannot load .pt/.bin files safely (its weights_only unpickler has known flaws, "
            "CVE-2025-32434 and CVE-2026-24747); upgrade with pip install 'torch>=2.10', or use .safetensors files"
        )


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of one weights file, never unpickling code."""
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    if is_torchscript(str(path)):
        return read_torchscript_state_dict(str(path)), {"torchscript": "1"}
    check_safe_torch()
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for foreign files (KeyError, EOFError, ...)
        raise CheckpointError(
            f"{path} is not a checkpoint clipforge can read (safetensors, a torch state dict or a TorchScript "
            f"archive); torch.load(weights_only=True) said: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    return _unwrap(obj, path), _training_checkpoint_meta(obj)


def _training_checkpoint_meta(obj: Any) -> dict[str, str]:
    """clipforge's own training checkpoint (checkpoints/last.pt) names its system and config: metadata as a
    safetensors file would carry it. Anything else (a foreign file, an unknown system, a config that is
    not JSON) gets none and is offered to the importers like any state dict."""
    if not isinstance(obj, dict) or obj.get("system") not in list_systems():
        return {}
    if not isinstance(obj.get("model_config"), dict):
        return {}
    try:
        return {"clipforge_system": obj["system"], "clipforge_config": json.dumps(obj["model_config"])}
    except (TypeError, ValueError):
        return {}


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside training checkpoints ({'state_dict': ...}) and strip DDP's `module.`."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not contain a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _collapse_blocks(keys: set[str]) -> list[str]:
    """Sorted keys, with whole missing/extra blocks shown once as `...resblocks.4.*`."""
    return sorted({re.sub(r"(resblocks|layer\d)\.(\d+)\..*", r"\1.\2.*", k) for k in keys})


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(sd, strict=True)`, or a CheckpointError listing every missing, unexpected
    and mis-shaped weight (whole blocks collapsed)."""
    expected = model.state_dict()
    missing = _collapse_blocks(set(expected) - set(sd))
    unexpected = _collapse_blocks(set(sd) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{title} ({len(items)}): {'; '.join(items[:8])}{more}")
        raise CheckpointError(f"{source} does not match the model architecture:\n  " + "\n  ".join(parts))
    model.load_state_dict(sd, strict=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it or delete the folder and save again") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds {type(data).__name__}, not a JSON object")
    return data


def _native(stored: Any, where: Path) -> tuple[dict[str, Any], str, str]:
    """(config dict, flavour "clipforge", system name) of clipforge's own metadata, checked."""
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        raise CheckpointError(f"{where}: clipforge metadata without a config object; the file is damaged")
    system = stored.get("system", LEGACY_SYSTEM)
    if not isinstance(system, str):
        raise CheckpointError(f"{where}: clipforge metadata names no valid system")
    return stored["config"], "clipforge", system


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """The tensors of a weights file or directory and the config stored with them."""
    path = Path(path)
    side: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        stored = _read_json(path / "config.json") if (path / "config.json").exists() else None
        side = {name: _read_json(path / name) for name in _SIDE_FILES if (path / name).exists()}
        order = (
            sorted(_WEIGHT_FILES, key=lambda f: "open_clip" not in f)
            if "open_clip_config.json" in side
            else _WEIGHT_FILES
        )
        files = [path / f for f in order if (path / f).exists()]
        if not files:
            raise CheckpointError(f"{path} has no weights file (looked for {', '.join(_WEIGHT_FILES)})")
        sd, meta = _read_file(files[0])
        if stored is not None and "clipforge" in stored:
            return Checkpoint(path, sd, *_native(stored["clipforge"], path / "config.json"), side)
        if stored is not None and ("text_config" in stored or "vision_config" in stored):
            return Checkpoint(path, sd, stored, "hf", None, side)
    elif not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    else:
        sd, meta = _read_file(path)
    if "clipforge_config" not in meta:
        return Checkpoint(path, sd, None, "", None, side, bool(meta.get("torchscript")))
    try:
        stored = {"config": json.loads(meta["clipforge_config"]), "system": meta.get("clipforge_system", LEGACY_SYSTEM)}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the config in its metadata is not valid JSON ({e}); the file is damaged") from e
    return Checkpoint(path, sd, *_native(stored, path))


def resolve(name: str | os.PathLike[str], tag: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(local path, load options) of a checkpoint path, an `hf-hub:ORG/REPO` name, or a pretrained name
    a system registers (`ViT-B-32`, `RN50`, `shapes`, ...), downloading it once where needed."""
    from .hub import hub_folder
    from .registry import all_pretrained, find_pretrained

    text = str(name)
    if tag is None and Path(text).exists():
        return Path(text), {}
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:") :].partition("@")
        return hub_folder(repo, revision or None), {}
    entry = find_pretrained(text, tag)
    if entry is not None:
        return Path(entry.fetch()), dict(entry.load_options)
    if tag is not None:
        tags = [e.tag for _, e in all_pretrained() if text in (e.name, *e.aliases)]
        raise CheckpointError(f"no pretrained {text!r} with tag {tag!r}; tags: {', '.join(tags) or 'none'}")
    known = ", ".join(dict.fromkeys(e.name for _, e in all_pretrained()))
    presets = [s for s in list_systems() if text in get_system(s).presets or text in get_system(s).aliases]
    if presets:
        raise CheckpointError(
            f"{text} is a {presets[0]} architecture without trained weights (a preset); give a checkpoint, "
            f"hf-hub:ORG/REPO or a pretrained name ({known}; clipforge models --pretrained). An untrained "
            f"{text} is clipforge.create_model({text!r})"
        )
    raise CheckpointError(
        f"checkpoint not found: {text} (not a file or folder, not hf-hub:ORG/REPO, and not a pretrained name: "
        f"{known}; see clipforge models --pretrained)"
    )


def load(path: str | os.PathLike[str], model: Any = None, *, tag: str | None = None, **options: Any) -> nn.Module:
    """Load the model of any registered system; returns it in eval mode.

    `path` is a checkpoint file or folder, `hf-hub:ORG/REPO` (an OpenCLIP or transformers repository,
    through the Hugging Face cache), or a pretrained name (`ViT-B-32`, `RN50`, ... OpenAI's weights,
    downloaded once and checked; `shapes`, the CLIP trained on the synthetic world, shipped with
    clipforge); `tag` picks among a name's weights. A clipforge file names its system and config, so
    nothing else is needed. Other layouts are offered to each system's importers (OpenAI, OpenCLIP and
    Hugging Face CLIP weights come back as a `CLIP`). `model` (a preset name or config) and `options`
    (e.g. `act="gelu"`) are passed to the importer where the weights cannot tell the architecture."""
    path, defaults = resolve(path, tag)
    named = defaults.pop("model", None)  # the architecture a pretrained name comes with
    model = named if model is None else model
    options = {**defaults, **options}
    ckpt = read_checkpoint(path)
    if ckpt.system is not None:
        system = get_system(ckpt.system)
        for importer in system.importers:  # a system may read its own files itself (presets, options)
            net = importer(ckpt, model, **options)
            if net is not None:
                return net.eval()
        if options:
            raise ConfigError(f"unknown load option(s) {', '.join(options)} for a {system.name} checkpoint")
        config = system.preset(model) if isinstance(model, str) else model
        if config is None:
            try:
                config = settings.from_dict(system.config, ckpt.config)
            except ConfigError as e:
                raise CheckpointError(f"{ckpt.path}: its stored {system.name} config is invalid: {e}") from None
        net = system.build(config)
        load_state_dict_checked(net, ckpt.state_dict, f"{ckpt.path} ({system.name})")
        return net.eval()
    for name in list_systems():
        for importer in get_system(name).importers:
            net = importer(ckpt, model, **options)
            if net is not None:
                return net.eval()
    sample = ", ".join(list(ckpt.state_dict)[:5])
    raise CheckpointError(
        f"{ckpt.path} is not a checkpoint of any registered system ({', '.join(list_systems())}): "
        f"no layout matched its keys ({sample} ...)"
    )


# ----------------------------------------------------------------------------------------- writing
def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, detached, on the CPU and contiguous (what safetensors writes)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save(model: nn.Module, path: str | os.PathLike[str], format: str = "clipforge") -> Path:
    """Write `model` atomically.

    - `clipforge` (default): `path.safetensors` with the system and config in its metadata, or a
      directory with `model.safetensors` + `config.json` when `path` has no `.safetensors` suffix.
    - any format the model's system exports (CLIP: `hf` for transformers, `openai` for OpenAI's and
      OpenCLIP's key layout)."""
    path = Path(path)
    system = system_of(model)
    if format != "clipforge":
        if format not in system.exporters:
            formats = ", ".join(["clipforge", *system.exporters])
            raise CheckpointError(f"unknown format {format!r} for a {system.name} model; use {formats}")
        try:
            return system.exporters[format](model, path)
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"could not write {path} ({e}); nothing there was changed") from None
    if getattr(model, "config", None) is None:
        raise CheckpointError(f"this {system.name} model has no config to store; build it with from_config")
    sd = state_dict_for_saving(model)
    config = settings.to_dict(model.config)
    meta = {
        "format": "clipforge",
        "clipforge_version": str(FORMAT_VERSION),
        "clipforge_system": system.name,
        "clipforge_config": json.dumps(config),
    }
    stored = json.dumps({"clipforge": {"version": FORMAT_VERSION, "system": system.name, "config": config}}, indent=2)

    def write(folder: Path) -> None:
        save_file(sd, str(folder / "model.safetensors"), metadata=meta)
        (folder / "config.json").write_text(stored, encoding="utf-8")

    try:
        if path.suffix == ".safetensors":
            atomic_write(path, lambda t: save_file(sd, t, metadata=meta))
        else:
            atomic_directory(path, write)
    except (OSError, SafetensorError) as e:  # safetensors reports a failed write as its own error
        raise CheckpointError(f"could not write {path} ({e}); nothing there was changed") from None
    return path
