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
from ...config import OPENAI_MEAN, OPENAI_STD, CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from ...errors import CheckpointError
from ...models import CLIP
from ...presets import ALIASES, PRESETS, get_config
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
        top = ("logit_scale", "logit_bias")
        return {k if k.startswith("visual.") or k in top else f"text.{k}": v for k, v in sd.items()}, "openai"
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


# OpenAI's names mean QuickGELU in clipforge (as in OpenAI's weights) but GELU in OpenCLIP's own configs
_AMBIGUOUS = {n for n in PRESETS if not n.endswith("-gelu") and not n.startswith(("tiny-", "small-"))}


def config_from_open_clip(d: dict[str, Any]) -> CLIPConfig:
    """CLIPConfig from an OpenCLIP `open_clip_config.json` (`model_cfg` and `preprocess_cfg`)."""
    m, p = d.get("model_cfg"), d.get("preprocess_cfg") or {}
    if not isinstance(m, dict):
        raise CheckpointError("open_clip_config.json has no model_cfg; it is not an OpenCLIP model folder")
    v, t = m.get("vision_cfg") or {}, m.get("text_cfg") or {}
    foreign = [k for k in ("timm_model_name", "hf_model_name", "hf_tokenizer_name") if v.get(k) or t.get(k)]
    if foreign:
        raise CheckpointError(
            f"this OpenCLIP model builds its towers with {', '.join(foreign)}; clipforge builds "
            "OpenAI-style ViT, ResNet and text towers only"
        )
    act = "quick_gelu" if m.get("quick_gelu") else "gelu"
    layers = v.get("layers", 12)
    resnet = isinstance(layers, (list, tuple))
    try:
        vision = VisionConfig(
            kind="resnet" if resnet else "vit",
            image_size=v.get("image_size", 224),
            width=v.get("width", 64 if resnet else 768),
            layers=tuple(layers) if resnet else layers,
            patch_size=v.get("patch_size", 32),
            head_width=v.get("head_width", 64),
            mlp_ratio=v.get("mlp_ratio", 4.0),
            act=act,
        )
        width = t.get("width", 512)
        text = TextConfig(
            context_length=t.get("context_length", 77),
            vocab_size=t.get("vocab_size", 49408),
            width=width,
            layers=t.get("layers", 12),
            head_width=width // t.get("heads", 8),
            mlp_ratio=t.get("mlp_ratio", 4.0),
            act=act,
        )
        preprocess = PreprocessConfig(
            mean=tuple(p.get("mean", OPENAI_MEAN)),
            std=tuple(p.get("std", OPENAI_STD)),
            interpolation=p.get("interpolation", "bicubic"),
            resize_mode="squash" if p.get("resize_mode") == "squash" else "shortest",
        )
        return CLIPConfig(embed_dim=m.get("embed_dim", 512), vision=vision, text=text, preprocess=preprocess)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"open_clip_config.json is not a CLIP config clipforge can build: {e}") from None


def _named_config(ckpt: Checkpoint, model: str) -> CLIPConfig:
    if model in _AMBIGUOUS or ALIASES.get(model) in _AMBIGUOUS and not model.endswith("-quickgelu"):
        if not ckpt.torchscript:  # OpenAI released TorchScript archives; a bare state dict may be OpenCLIP's
            warnings.warn(
                f"{ckpt.path}: {model!r} is ambiguous for a bare state dict: clipforge's {model} uses QuickGELU "
                f"(OpenAI's weights), OpenCLIP's {model} uses GELU (its own trainings). Loading with QuickGELU; "
                f"pass model='{ALIASES.get(model, model)}-gelu' for OpenCLIP-trained weights, or "
                f"'{ALIASES.get(model, model)}-quickgelu' to say it is OpenAI's.",
                stacklevel=4,
            )
    return get_config(model)


def import_clip(ckpt: Checkpoint, model: str | CLIPConfig | None = None, act: str | None = None) -> CLIP | None:
    """A CLIP from a checkpoint in any CLIP layout, or None when the weights are not a CLIP's.

    `model` (preset name or CLIPConfig) names the architecture where the weights cannot tell it,
    e.g. `model="ViT-B-32-gelu"` for an OpenCLIP GELU checkpoint. Without it, a config stored with
    the weights is used (clipforge's, Hugging Face's, or an OpenCLIP folder's `open_clip_config.json`),
    else the architecture is inferred from the shapes with `act` (default QuickGELU, as in OpenAI's
    weights)."""
    sd, layout = _to_clipforge_layout(ckpt.state_dict, str(ckpt.path))
    if not layout:
        return None
    if model is not None:
        cfg = _named_config(ckpt, model) if isinstance(model, str) else model
    elif ckpt.flavour == "clipforge" and ckpt.config is not None:
        cfg = CLIPConfig.from_dict(ckpt.config)
    elif ckpt.flavour == "hf" and ckpt.config is not None:
        cfg = hf.config_from_hf(ckpt.config, ckpt.files.get("preprocessor_config.json"))
    elif "open_clip_config.json" in ckpt.files:
        cfg = config_from_open_clip(ckpt.files["open_clip_config.json"])
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
    if "logit_bias" in sd and cfg.init_logit_bias is None:  # trained with the sigmoid loss
        cfg = cfg.replace(init_logit_bias=float(sd["logit_bias"]))
    net = CLIP.from_config(cfg)
    load_state_dict_checked(net, sd, f"{ckpt.path} ({layout} layout)")
    return net


def export_hf(model: CLIP, path: Path) -> Path:
    """A directory that `transformers.CLIPModel`, `CLIPProcessor` and the zero-shot image classification
    pipeline load as it is: weights, config, tokenizer files and image processor config (ViT models only)."""
    files = {
        "config.json": json.dumps(hf.config_to_hf(model.config), indent=2),
        "preprocessor_config.json": json.dumps(hf.preprocess_to_hf(model.config), indent=2),
        **hf.tokenizer_files(model.config.text.context_length),
    }
    hf_sd = hf.clipforge_to_hf(state_dict_for_saving(model))

    def write(folder: Path) -> None:
        save_file(hf_sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")

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
