"""Which precision to compute in. bf16 autocast is the speed lever where the hardware multiplies bf16
matrices natively (recent GPUs; CPUs with AVX512-BF16 or AMX). Elsewhere PyTorch emulates bf16 and it
is far slower than fp32 (a 2048^2 matmul ran ~400x slower on an AVX2-only CPU here), so "auto", the
default for training, the quickstart and the study, picks bf16 only where it is native."""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from functools import cache

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@cache
def native_bf16(device: str | torch.device = "cpu") -> bool:
    """True when `device` multiplies bf16 matrices in hardware (so bf16 autocast is faster than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 does not count emulation anyway
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if all(c is None for c in checks):  # an older or newer torch without these probes: ask oneDNN
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return any(c() for c in checks if c is not None)
    return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """ "auto" -> "bf16" where it is native on `device`, else "fp32"; "bf16", "fp16" and "fp32" are kept
    (with a warning when bf16 would be emulated). fp16 is for GPUs without bf16: the trainer pairs it
    with a gradient scaler."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        warnings.warn(
            f"bf16 is emulated on this {torch.device(device).type} (no native bf16 matrix multiply): "
            "it runs much slower than fp32 here; use precision 'auto' or 'fp32'",
            stacklevel=2,
        )
    return precision


def autocast(precision: str, device: str | torch.device = "cpu") -> AbstractContextManager:
    """torch.autocast in bf16 or fp16 for a resolved precision "bf16" or "fp16", a no-op for "fp32"."""
    device = torch.device(device)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))
