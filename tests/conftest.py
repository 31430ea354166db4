"""Shared fixtures. The OpenAI reference is the `clip` package of the `clip-anytorch` wheel
(OpenAI's own model.py and simple_tokenizer.py), installed without dependencies by the test command;
its files are loaded by path because its package __init__ imports torchvision, which is not installed."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import pytest
import torch


def _reference_module(name: str) -> ModuleType:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the OpenAI reference package is missing: pip install --no-deps clip-anytorch==2.6.0")
    path = os.path.join(list(spec.submodule_search_locations)[0], f"{name}.py")
    mspec = importlib.util.spec_from_file_location(f"_openai_reference_{name}", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def openai_model_module() -> ModuleType:
    return _reference_module("model")


@pytest.fixture(scope="session")
def openai_tokenizer():
    return _reference_module("simple_tokenizer").SimpleTokenizer()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
