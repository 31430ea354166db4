"""Fine-tuning from the command line: start from pretrained weights, read a CSV with its own column
names, evaluate during training into metrics.jsonl (and TensorBoard), resume exactly after SIGKILL;
the sigmoid loss and fp16 with a gradient scaler."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import clipforge
from clipforge.data.synthetic import SyntheticWorld

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "clipforge.cli", *args], capture_output=True, text=True, timeout=900, env=ENV
    )


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Synthetic scenes with captions in a phrasing the shapes model never saw, in a CSV whose columns
    are not the usual names."""
    root = tmp_path_factory.mktemp("pairs")
    world = SyntheticWorld(400, 64, "train", seed=21, max_objects=1)
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "picture", "description"])
        for i in range(len(world)):
            scene = world[i]
            scene.image.save(root / f"{i}.png")
            o = scene.objects[0]
            writer.writerow([i, f"{i}.png", f"the shape is a {o.shape} and its colour is {o.colour}"])
    return root / "pairs.csv"


def _args(out, data, steps, *extra):
    return [
        "train",
        "--pretrained",
        "shapes",
        "--data",
        str(data),
        "--csv-image-key",
        "picture",
        "--csv-caption-key",
        "description",
        "--steps",
        str(steps),
        "--batch-size",
        "32",
        "--lr",
        "1e-4",
        "--warmup",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--log-every",
        "1",
        "--precision",
        "fp32",
        "--out",
        str(out),
        *extra,
    ]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_finetune_from_shapes_with_validation_and_tensorboard(pairs, tmp_path):
    out = tmp_path / "ft"
    r = _cli(
        *_args(
            out,
            pairs,
            30,
            "--val-data",
            "synthetic:label=shape,split=heldout,n=96",
            "--val-task",
            "zeroshot",
            "--eval-every",
            "10",
            "--report-to",
            "tensorboard",
        )
    )
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    losses = [row["loss"] for row in rows if "loss" in row]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses  # the new phrasing is learnt
    evals = [row for row in rows if "eval/top1" in row]
    assert [row["step"] for row in evals] == [0, 10, 20, 30]  # the starting point, then every 10 steps
    assert all(row["eval/top1"] > 0.6 and "eval/acc1" in row for row in evals)  # shapes' held-out skill holds
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "eval/top1"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("eval/top1")] == [0, 10, 20, 30]
    model = clipforge.load(out / "model.safetensors")
    assert model.config == clipforge.load("shapes").config


def test_finetuning_resumes_exactly_after_sigkill(pairs, tmp_path, kill_after_checkpoint):
    extra = ("--checkpoint-every-steps", "4")
    ref = _cli(*_args(tmp_path / "ref", pairs, 16, *extra))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    assert kill_after_checkpoint(_args(out, pairs, 16, *extra), 8, ENV) == -signal.SIGKILL
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 8
    resumed = _cli(*_args(out, pairs, 16, *extra, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    a = clipforge.load(tmp_path / "ref" / "model.safetensors").state_dict()
    b = clipforge.load(out / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_fixes_the_architecture(pairs, tmp_path):
    r = _cli(*_args(tmp_path / "x", pairs, 2, "--set", "text.layers=2"))
    assert r.returncode == 2 and "--pretrained fixes the architecture" in r.stderr
    r = _cli(*_args(tmp_path / "x", pairs, 2, "--model", "tiny-rn"))
    assert r.returncode == 2 and "give one" in r.stderr
    r = _cli(*_args(tmp_path / "x", pairs, 2, "--csv-caption-key", "caption"))
    assert r.returncode == 2 and "no column 'caption'" in r.stderr and "description" in r.stderr


TINY = [
    "--model",
    "tiny-vit",
    "--data",
    "synthetic:n=512,size=32",
    "--set",
    "vision.image_size=32",
    "--set",
    "vision.layers=2",
    "--set",
    "text.layers=2",
    "--batch-size",
    "32",
    "--workers",
    "0",
    "--no-progress",
    "--log-every",
    "1",
    "--lr",
    "1e-3",
]


def test_sigmoid_loss_from_the_command_line(tmp_path):
    r = _cli("train", *TINY, "--loss", "siglip", "--steps", "40", "--precision", "fp32", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "s")
    assert all("loss/sigmoid" not in row for row in rows)  # one named loss: logged as `loss`
    losses = [row["loss"] for row in rows]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    model = clipforge.load(tmp_path / "s" / "model.safetensors")
    assert model.config.init_logit_bias == -10.0 and model.logit_bias is not None
    assert float(model.logit_bias.detach()) != -10.0  # the bias was learnt


def test_fp16_with_a_gradient_scaler(tmp_path):
    r = _cli("train", *TINY, "--precision", "fp16", "--steps", "4", "--out", str(tmp_path / "h"))
    assert r.returncode == 0, r.stderr
    state = torch.load(tmp_path / "h" / "checkpoints" / "last.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
