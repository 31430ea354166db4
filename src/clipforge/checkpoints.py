"""Save and load CLIP weights: clipforge's own safetensors format, OpenAI (state dict or TorchScript),
OpenCLIP state dicts and Hugging Face CLIP directories.

Every source is first turned into clipforge's key layout (`visual.*`, `text.*`, `logit_scale`), which
is OpenAI's layout with the text tower under `text.`. The architecture comes from the stored config
(clipforge, Hugging Face), else from `model=`, else it is inferred from the weight shapes.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import hf
from ._io import atomic_write
from .config import CLIPConfig, TextConfig, VisionConfig
from .errors import CheckpointError
from .models import CLIP
from .presets import get_config
from .torchscript import is_torchscript, read_torchscript_state_dict

FORMAT_VERSION = 1
_IGNORED_KEYS = {"input_resolution", "context_length", "vocab_size", "text.attn_mask", "attn_mask"}
_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pt",
)


# ----------------------------------------------------------------------------------------- reading
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
        return read_torchscript_state_dict(str(path)), {}
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for foreign files (KeyError, EOFError, ...)
        raise CheckpointError(
            f"{path} is not a checkpoint clipforge can read (safetensors, a torch state dict or a TorchScript "
            f"archive); torch.load(weights_only=True) said: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    return _unwrap(obj, path), {}


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


def _to_clipforge_layout(sd: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in clipforge keys, detected layout: 'clipforge' | 'hf' | 'openai')."""
    sd = {k: v for k, v in sd.items() if k not in _IGNORED_KEYS}
    if hf.is_hf_state_dict(sd):
        return hf.hf_to_clipforge(sd), "hf"
    if "text.token_embedding.weight" in sd:
        return sd, "clipforge"
    if "token_embedding.weight" in sd and "text_projection" in sd:
        return {k if k.startswith("visual.") or k == "logit_scale" else f"text.{k}": v for k, v in sd.items()}, "openai"
    sample = ", ".join(list(sd)[:5])
    raise CheckpointError(f"{source} is not a CLIP checkpoint: no text/vision tower weights found (keys: {sample} ...)")


def _count(sd: dict[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd for m in [pat.match(k)] if m})


def infer_config(sd: dict[str, torch.Tensor], act: str = "quick_gelu") -> CLIPConfig:
    """Architecture from weight shapes (clipforge key layout), as OpenAI's `build_model` does.

    Heads are width // 64 and the activation is `act`: neither is stored in the weights.
    """
    try:
        if "visual.proj" in sd:
            width, _, patch, _ = sd["visual.conv1.weight"].shape
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = VisionConfig(
                kind="vit",
                image_size=patch * grid,
                width=width,
                patch_size=patch,
                layers=_count(sd, "visual.transformer.resblocks."),
                act=act,
                mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
            )
        else:
            grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = VisionConfig(
                kind="resnet",
                image_size=grid * 32,
                width=sd["visual.layer1.0.conv1.weight"].shape[0],
                layers=tuple(_count(sd, f"visual.layer{i}.") for i in range(1, 5)),
                act=act,
            )
        tw = sd["text.ln_final.weight"].shape[0]
        text = TextConfig(
            context_length=sd["text.positional_embedding"].shape[0],
            vocab_size=sd["text.token_embedding.weight"].shape[0],
            width=tw,
            layers=_count(sd, "text.transformer.resblocks."),
            act=act,
            mlp_ratio=sd["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / tw,
        )
        return CLIPConfig(embed_dim=sd["text.text_projection"].shape[1], vision=vision, text=text)
    except KeyError as e:
        raise CheckpointError(f"cannot infer the architecture: weight {e.args[0]!r} is missing") from e


def _collapse_blocks(keys: set[str]) -> list[str]:
    """Sorted keys, with whole missing/extra blocks shown once as `...resblocks.4.*`."""
    return sorted({re.sub(r"(resblocks|layer\d)\.(\d+)\..*", r"\1.\2.*", k) for k in keys})


def _check_and_load(model: CLIP, sd: dict[str, torch.Tensor], source: str) -> None:
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


def _resolve(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """(raw state dict, stored config dict or None, config flavour 'clipforge' | 'hf' | '')."""
    if path.is_dir():
        cfg_path = path / "config.json"
        stored = json.loads(cfg_path.read_text()) if cfg_path.exists() else None
        files = [path / f for f in _WEIGHT_FILES if (path / f).exists()]
        if not files:
            raise CheckpointError(f"{path} has no weights file (looked for {', '.join(_WEIGHT_FILES)})")
        sd, meta = _read_file(files[0])
        if stored is not None and "clipforge" in stored:
            return sd, stored["clipforge"]["config"], "clipforge"
        if stored is not None and ("text_config" in stored or "vision_config" in stored):
            return sd, stored, "hf"
        return sd, _meta_config(meta), "clipforge" if _meta_config(meta) else ""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    sd, meta = _read_file(path)
    return sd, _meta_config(meta), "clipforge" if _meta_config(meta) else ""


def _meta_config(meta: dict[str, str]) -> dict[str, Any] | None:
    return json.loads(meta["clipforge_config"]) if "clipforge_config" in meta else None


def load(path: str | os.PathLike[str], model: str | CLIPConfig | None = None, *, act: str | None = None) -> CLIP:
    """Load a CLIP model from any supported checkpoint; returns it in eval mode.

    `model` (preset name or CLIPConfig) names the architecture where the weights cannot tell it,
    e.g. `model="ViT-B-32-gelu"` for an OpenCLIP GELU checkpoint. Without it, a config stored with
    the weights is used, else the architecture is inferred from the shapes with `act` (default
    QuickGELU, as in OpenAI's weights).
    """
    path = Path(path)
    raw, stored, flavour = _resolve(path)
    sd, layout = _to_clipforge_layout(raw, str(path))
    if model is not None:
        cfg = get_config(model) if isinstance(model, str) else model
    elif flavour == "clipforge" and stored is not None:
        cfg = CLIPConfig.from_dict(stored)
    elif flavour == "hf" and stored is not None:
        cfg = hf.config_from_hf(stored)
    else:
        if act is None:
            warnings.warn(
                f"{path}: the activation cannot be read from the weights; assuming QuickGELU "
                "(OpenAI's). Pass model='<name>-gelu' or act='gelu' for GELU-trained weights.",
                stacklevel=2,
            )
        cfg = infer_config(sd, act or "quick_gelu")
    if act is not None:
        cfg = cfg.replace(vision={"act": act}, text={"act": act})
    net = CLIP(cfg)
    _check_and_load(net, sd, f"{path} ({layout} layout)")
    return net.eval()


# ----------------------------------------------------------------------------------------- writing
def _tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save(model: CLIP, path: str | os.PathLike[str], format: str = "clipforge") -> Path:
    """Write `model` atomically.

    - `clipforge` (default): `path.safetensors` with the config in its metadata, or a directory with
      `model.safetensors` + `config.json` when `path` has no `.safetensors` suffix.
    - `hf`: a directory that `transformers.CLIPModel.from_pretrained` loads (ViT models only).
    - `openai`: a state dict in OpenAI/OpenCLIP key layout (`.safetensors` or torch `.pt`).
    """
    path = Path(path)
    sd = _tensors(model.state_dict())
    cfg = model.config
    if format == "clipforge":
        meta = {
            "format": "clipforge",
            "clipforge_version": str(FORMAT_VERSION),
            "clipforge_config": json.dumps(cfg.to_dict()),
        }
        if path.suffix == ".safetensors":
            atomic_write(path, lambda t: save_file(sd, t, metadata=meta))
        else:
            atomic_write(path / "model.safetensors", lambda t: save_file(sd, t, metadata=meta))
            cfg_json = json.dumps({"clipforge": {"version": FORMAT_VERSION, "config": cfg.to_dict()}}, indent=2)
            atomic_write(path / "config.json", lambda t: Path(t).write_text(cfg_json))
    elif format == "hf":
        hf_cfg = json.dumps(hf.config_to_hf(cfg), indent=2)
        hf_sd = hf.clipforge_to_hf(sd)
        atomic_write(path / "model.safetensors", lambda t: save_file(hf_sd, t, metadata={"format": "pt"}))
        atomic_write(path / "config.json", lambda t: Path(t).write_text(hf_cfg))
    elif format == "openai":
        oa = {k[len("text.") :] if k.startswith("text.") else k: v for k, v in sd.items()}
        if path.suffix == ".safetensors":
            atomic_write(path, lambda t: save_file(oa, t))
        else:
            atomic_write(path, lambda t: torch.save(oa, t))
    else:
        raise CheckpointError(f"unknown format {format!r}; use 'clipforge', 'hf' or 'openai'")
    return path
