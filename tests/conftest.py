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


# Runs the `clipforge` command and prints a line after each checkpoint is written, so a test can act on
# that event instead of polling the disk.
_ANNOUNCING_CLI = """
import sys
import clipforge.train.loop as loop
save = loop.save_training_state
def announce(path, state):
    save(path, state)
    print("checkpoint", state["step"], flush=True)
loop.save_training_state = announce
from clipforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def kill_after_checkpoint():
    """`kill(args, step, env)`: run `clipforge *args`, SIGKILL it right after the checkpoint of `step`
    (or a later one) is on disk, and return the exit status (a watchdog kills a hung child)."""
    import signal
    import subprocess
    import sys
    import threading

    def kill(args, step, env=None):
        proc = subprocess.Popen(
            [sys.executable, "-c", _ANNOUNCING_CLI, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env or {**os.environ, "OMP_NUM_THREADS": "1"},
        )
        watchdog = threading.Timer(600, proc.kill)  # only if the child hangs; the caller waits on events
        watchdog.start()
        for line in proc.stdout:
            if line.startswith("checkpoint") and int(line.split()[1]) >= step:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        watchdog.cancel()
        return proc.returncode

    return kill
