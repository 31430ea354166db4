"""Precision choice: "auto" takes bf16 only where the device multiplies bf16 natively."""

import warnings

import pytest
import torch

import clipforge.precision as P
from clipforge.errors import ConfigError


def test_native_bf16_on_cpu_follows_the_cpu_features(monkeypatch):
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        P.native_bf16.cache_clear()
        assert P.native_bf16("cpu") is expected
    P.native_bf16.cache_clear()


def test_auto_resolves_by_hardware_and_explicit_choices_stay(monkeypatch):
    for native, expected in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(P, "native_bf16", lambda device, v=native: v)
        assert P.resolve_precision("auto", "cpu") == expected
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert P.resolve_precision("bf16", "cpu") == "bf16"
            assert P.resolve_precision("fp32", "cpu") == "fp32"
        assert len(caught) == (0 if native else 1)  # bf16 asked for where it is emulated: warned once
        if not native:
            assert "emulated" in str(caught[0].message)
    assert P.resolve_precision("fp16", "cpu") == "fp16"  # for GPUs without bf16; the trainer adds a grad scaler
    with pytest.raises(ConfigError, match="auto, bf16, fp16, fp32"):
        P.resolve_precision("int8", "cpu")


def test_autocast_follows_the_resolved_precision():
    x = torch.randn(4, 4)
    with P.autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with P.autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32
