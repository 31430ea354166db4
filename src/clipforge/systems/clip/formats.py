"""The CLIP system's checkpoint formats: OpenAI (state dict or TorchScript archive), OpenCLIP state
dicts and Hugging Face CLIP directories, read into and written out of clipforge's key layout.

clipforge's layout (`visual.*`, `text.*`, `logit_scale`) is OpenAI's with the text tower under
`text.`. The architecture comes from the stored config (clipforge, Hugging Face), else from `model=`,
else it is inferred from the weight shapes.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..._io import atomic_directory, atomic_write
from ...checkpoints import Checkpoint, load_state_dict_checked, state_dict_for_saving
from ...config import CLIPConfig, TextConfig, VisionConfig
from ...errors import CheckpointError
from ...models import CLIP
from ...presets import get_config
from . import hf

_IGNORED_KEYS = {"input_resolution", "context_length", "vocab_size", "text.attn_mask", "attn_mask"}


def _to_clipforge_layout(sd: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in clipforge keys, layout 'clipforge' | 'hf' | 'openai', or '' when it is no CLIP's)."""
    sd = {k: v for k, v in sd.items() if k not in _IGNORED_KEYS}
    if hf.is_hf_state_dict(sd):
        return hf.hf_to_clipforge(sd), "hf"
    if "text.token_embedding.weight" in sd:
        return sd, "clipforge"
    if "token_embedding.weight" in sd and "text_projection" in sd:
        return {k if k.startswith("visual.") or k == "logit_scale" else f"text.{k}": v for k, v in sd.items()}, "openai"
    return sd, ""


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


def import_clip(ckpt: Checkpoint, model: str | CLIPConfig | None = None, act: str | None = None) -> CLIP | None:
    """A CLIP from a checkpoint in any CLIP layout, or None when the weights are not a CLIP's.

    `model` (preset name or CLIPConfig) names the architecture where the weights cannot tell it,
    e.g. `model="ViT-B-32-gelu"` for an OpenCLIP GELU checkpoint. Without it, a config stored with
    the weights is used, else the architecture is inferred from the shapes with `act` (default
    QuickGELU, as in OpenAI's weights)."""
    sd, layout = _to_clipforge_layout(ckpt.state_dict, str(ckpt.path))
    if not layout:
        return None
    if model is not None:
        cfg = get_config(model) if isinstance(model, str) else model
    elif ckpt.flavour == "clipforge" and ckpt.config is not None:
        cfg = CLIPConfig.from_dict(ckpt.config)
    elif ckpt.flavour == "hf" and ckpt.config is not None:
        cfg = hf.config_from_hf(ckpt.config)
    else:
        if act is None:
            warnings.warn(
                f"{ckpt.path}: the activation cannot be read from the weights; assuming QuickGELU "
                "(OpenAI's). Pass model='<name>-gelu' or act='gelu' for GELU-trained weights.",
                stacklevel=3,
            )
        cfg = infer_config(sd, act or "quick_gelu")
    if act is not None:
        cfg = cfg.replace(vision={"act": act}, text={"act": act})
    net = CLIP.from_config(cfg)
    load_state_dict_checked(net, sd, f"{ckpt.path} ({layout} layout)")
    return net


def export_hf(model: CLIP, path: Path) -> Path:
    """A directory that `transformers.CLIPModel.from_pretrained` loads (ViT models only)."""
    hf_cfg = json.dumps(hf.config_to_hf(model.config), indent=2)
    hf_sd = hf.clipforge_to_hf(state_dict_for_saving(model))

    def write(folder: Path) -> None:
        save_file(hf_sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(hf_cfg, encoding="utf-8")

    return atomic_directory(path, write)


def export_openai(model: CLIP, path: Path) -> Path:
    """A state dict in OpenAI/OpenCLIP key layout (`.safetensors`, else a torch `.pt` file)."""
    sd = state_dict_for_saving(model)
    oa = {k[len("text.") :] if k.startswith("text.") else k: v for k, v in sd.items()}
    if path.suffix == ".safetensors":
        atomic_write(path, lambda t: save_file(oa, t))
    else:
        atomic_write(path, lambda t: torch.save(oa, t))
    return path
