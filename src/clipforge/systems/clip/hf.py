"""Hugging Face `CLIPModel` layout: key renaming and config translation (no transformers import)."""

from __future__ import annotations

import re
from typing import Any

import torch

from ...config import OPENAI_MEAN, OPENAI_STD, CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from ...errors import CheckpointError

# (HF, clipforge) key prefixes, and infixes inside a transformer block; each pair maps both ways.
_PREFIXES = [
    ("text_model.embeddings.token_embedding.", "text.token_embedding."),
    ("text_model.embeddings.position_embedding.weight", "text.positional_embedding"),
    ("text_model.final_layer_norm.", "text.ln_final."),
    ("text_model.encoder.layers.", "text.transformer.resblocks."),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.", "visual.conv1."),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
    ("text_projection.weight", "text.text_projection"),  # nn.Linear (E, D) <-> matrix (D, E)
    ("visual_projection.weight", "visual.proj"),
]
_INFIXES = [
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
]
_TRANSPOSED = {"text.text_projection", "visual.proj"}
_HF_QKV = re.compile(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_CF_QKV = re.compile(r"(.*)\.attn\.in_proj_(weight|bias)$")


def _rename(key: str, to_clipforge: bool) -> str:
    for hf, cf in _PREFIXES:
        old, new = (hf, cf) if to_clipforge else (cf, hf)
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    for hf, cf in _INFIXES:
        old, new = (hf, cf) if to_clipforge else (cf, hf)
        key = key.replace(old, new)
    return key


def is_hf_state_dict(sd: dict[str, Any]) -> bool:
    """Whether `sd` uses transformers' CLIPModel key names."""
    return any(k.startswith(("text_model.", "vision_model.")) for k in sd)


def hf_to_clipforge(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel state dict in clipforge's keys (q, k, v projections fused)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        key = _rename(key, to_clipforge=True)
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value.T.contiguous() if key in _TRANSPOSED else value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{prefix}: attention has only {sorted(parts)} projections, expected q, k and v")
        out[f"{prefix}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def clipforge_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A clipforge CLIP state dict in transformers' CLIPModel keys (attention split into q, k, v)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _CF_QKV.match(key)
        if m:
            prefix = _rename(m.group(1) + ".", to_clipforge=False).rstrip(".")
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}.self_attn.{name}_proj.{m.group(2)}"] = part.contiguous()
        else:
            out[_rename(key, to_clipforge=False)] = value.T.contiguous() if key in _TRANSPOSED else value
    return out


def _act(name: str) -> str:
    if name not in ("gelu", "quick_gelu"):
        raise CheckpointError(f"hidden_act {name!r} is not supported; clipforge has 'gelu' and 'quick_gelu'")
    return name


def config_from_hf(d: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> CLIPConfig:
    """CLIPConfig from a transformers `CLIPConfig` JSON dict (and its `preprocessor_config.json`)."""
    t, v = d.get("text_config") or {}, d.get("vision_config") or {}
    try:
        tw, vw = t.get("hidden_size", 512), v.get("hidden_size", 768)
        text = TextConfig(
            context_length=t.get("max_position_embeddings", 77),
            vocab_size=t.get("vocab_size", 49408),
            width=tw,
            layers=t.get("num_hidden_layers", 12),
            head_width=tw // t.get("num_attention_heads", 8),
            mlp_ratio=t.get("intermediate_size", 2048) / tw,
            act=_act(t.get("hidden_act", "quick_gelu")),
            ln_eps=t.get("layer_norm_eps", 1e-5),
        )
        vision = VisionConfig(
            kind="vit",
            image_size=v.get("image_size", 224),
            width=vw,
            layers=v.get("num_hidden_layers", 12),
            patch_size=v.get("patch_size", 32),
            head_width=vw // v.get("num_attention_heads", 12),
            mlp_ratio=v.get("intermediate_size", 3072) / vw,
            act=_act(v.get("hidden_act", "quick_gelu")),
            ln_eps=v.get("layer_norm_eps", 1e-5),
        )
        return CLIPConfig(
            embed_dim=d.get("projection_dim", 512),
            vision=vision,
            text=text,
            init_logit_scale=d.get("logit_scale_init_value", 2.6592),
            preprocess=preprocess_from_hf(preprocessor) if preprocessor else PreprocessConfig(),
        )
    except (TypeError, ZeroDivisionError, ValueError) as e:
        raise CheckpointError(f"config.json is not a valid CLIP config: {e}") from e


def config_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """transformers `CLIPConfig` JSON for a ViT clipforge config."""
    if cfg.vision.kind != "vit":
        raise CheckpointError(
            "the Hugging Face CLIPModel has no ResNet image tower; save ResNet models with "
            "format='clipforge' or format='openai'"
        )
    if cfg.init_logit_bias is not None:
        raise CheckpointError(
            "the Hugging Face CLIPModel has no logit bias (this model was trained with the sigmoid loss); save it "
            "with format='clipforge' or format='openai'"
        )
    t, v = cfg.text, cfg.vision
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": t.act,
            "layer_norm_eps": t.ln_eps,
            "projection_dim": cfg.embed_dim,
            # OpenAI's tokenizer: pad 0, start 49406, end 49407 (the highest id, so pooling finds it).
            "pad_token_id": 0,
            "bos_token_id": t.vocab_size - 2,
            "eos_token_id": t.vocab_size - 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "hidden_act": v.act,
            "layer_norm_eps": v.ln_eps,
            "projection_dim": cfg.embed_dim,
            "num_channels": 3,
        },
    }


_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as transformers stores them


def preprocess_from_hf(d: dict[str, Any]) -> PreprocessConfig:
    """The preprocessing of a `preprocessor_config.json` (CLIPImageProcessor)."""
    try:
        return PreprocessConfig(
            mean=tuple(d.get("image_mean", OPENAI_MEAN)),
            std=tuple(d.get("image_std", OPENAI_STD)),
            interpolation=_RESAMPLE.get(d.get("resample", 3), "bicubic"),
            resize_mode="shortest" if d.get("do_center_crop", True) else "squash",
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"preprocessor_config.json is not a valid CLIP image processor config: {e}") from e


def preprocess_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """`preprocessor_config.json` for transformers' CLIPImageProcessor, matching clipforge's preprocessing."""
    p, size = cfg.preprocess, cfg.vision.image_size
    squash = p.resize_mode == "squash"
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size} if squash else {"shortest_edge": size},
        "resample": {v: k for k, v in _RESAMPLE.items()}[p.interpolation],
        "do_center_crop": not squash,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(p.mean),
        "image_std": list(p.std),
        "do_convert_rgb": True,
    }


def tokenizer_files(context_length: int) -> dict[str, str]:
    """The files of transformers' CLIPTokenizer for OpenAI's BPE (vocabulary and merges from clipforge's
    own copy), so `CLIPProcessor.from_pretrained` loads a saved folder without any download."""
    import json

    from ...tokenizer import get_tokenizer

    tok = get_tokenizer()
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        "errors": "replace",
        "processor_class": "CLIPProcessor",
        **special,
    }
    return {
        "vocab.json": json.dumps(tok.encoder, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }
