"""The systems registry: a toy system defined here, outside the package, is trained, saved, loaded,
evaluated, resumed and commanded through the public registry and the `clipforge` command alone (so
the next system needs no edit of the core), and contract tests run over every registered system and
preset."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import clipforge
from clipforge import settings
from clipforge.cli import main
from clipforge.errors import ConfigError, TrainingError
from clipforge.registry import Evaluator, Recipe, System, Verb, get_system, list_systems, register_system
from clipforge.settings import setting
from clipforge.train import Task, train
from clipforge.train.prepare import build_model, prepare_run


# ------------------------------------------------------------------------------ the toy system
@dataclass(frozen=True)
class ToyConfig:
    """A linear classifier of points in `dim` dimensions into `classes` classes."""

    dim: int = 4
    classes: int = 3
    hidden: int = 16


@dataclass(frozen=True)
class ToyOptions:
    fail_at_step: int = setting(0, help="raise after this step (0: never), to interrupt a run")


class ToyModel(nn.Module):
    def __init__(self, *, dim: int, classes: int, hidden: int, config: ToyConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    @classmethod
    def from_config(cls, config: ToyConfig) -> ToyModel:
        return cls(dim=config.dim, classes=config.classes, hidden=config.hidden, config=config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Blobs(Dataset):
    """`n` points around `classes` well-separated centres (a pure function of seed and index)."""

    def __init__(self, n: int, dim: int, classes: int, seed: int = 0) -> None:
        self.n, self.dim, self.classes, self.seed = n, dim, classes, seed
        self.centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 4

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        y = index % self.classes
        return {"x": self.centres[y] + torch.randn(self.dim, generator=g), "y": y}


def blobs(spec: str, config: ToyConfig, seed: int = 0) -> Blobs:
    name, _, opts = spec.partition(":")
    if name != "blobs":
        raise ConfigError(f"the toy system reads blobs[:n=N], not {spec!r}")
    o = dict(item.split("=") for item in opts.split(",") if item)
    return Blobs(int(o.get("n", 256)), config.dim, config.classes, int(o.get("seed", seed)))


class ToyTask(Task):
    def dataset(self, spec: str, seed: int = 0) -> Dataset:
        """blobs[:n=N,seed=S]"""
        return blobs(spec, self.model.config, seed)

    def forward(self, model, batch):
        logits = model(batch["x"])
        return {"nll": nn.functional.cross_entropy(logits.float(), batch["y"], reduction="none")}

    def loss(self, outputs):
        return {"cross_entropy": outputs["nll"].mean()}

    def after_step(self, model):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == self.options.fail_at_step:
            raise TrainingError(f"toy interruption after step {self.steps}")

    def log_values(self, model):
        return {"weight_norm": float(model.net[0].weight.detach().norm())}


def accuracy(model, data: str, batch_size: int = 64) -> dict[str, float]:
    ds = blobs(data, model.config, seed=99)
    x = torch.stack([ds[i]["x"] for i in range(len(ds))])
    y = torch.tensor([ds[i]["y"] for i in range(len(ds))])
    with torch.no_grad():
        return {"top1": (model(x).argmax(1) == y).float().mean().item(), "samples": len(ds)}


def _hello(args) -> int:
    print(f"hello from the toy system, {args.name}")
    return 0


def _study(args) -> int:
    model = build_model(get_system("toy"), ToyConfig(), seed=0)
    print(json.dumps({"untrained_top1": accuracy(model, "blobs:n=60")["top1"], "out": args.out}))
    return 0


TOY = System(
    name="toy",
    description="a classifier of Gaussian blobs",
    model=ToyModel,
    config=ToyConfig,
    task=ToyTask,
    options=ToyOptions,
    presets={"toy-small": ToyConfig(), "toy-wide": ToyConfig(hidden=64)},
    default_preset="toy-small",
    evaluators={
        "accuracy": Evaluator("accuracy", "top-1 on held-out blobs", accuracy, {"--batch-size": {"type": int}})
    },
    recipes={
        "default": Recipe(
            "default",
            "clipforge train toy --recipe default --out DIR",
            data="blobs:n=512",
            train={"steps": 30, "batch_size": 32, "lr": 0.02, "warmup": 1},
        )
    },
    verbs=(Verb("toy-hello", "say hello", lambda p: p.add_argument("--name", default="you"), _hello),),
    studies={"toy-study": Verb("toy-study", "untrained accuracy", lambda p: p.add_argument("--out"), _study)},
    sample_data="blobs:n=64",
)


@pytest.fixture
def toy():
    register_system(TOY)
    yield TOY
    from clipforge.registry import unregister_system

    unregister_system("toy")


def _train_args(out, *extra):
    return [
        "train",
        "toy",
        "--recipe",
        "default",
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
        "--log-every",
        "5",
        "--precision",
        "fp32",
        *extra,
    ]


def test_a_system_outside_the_package_trains_saves_loads_evaluates_and_resumes(toy, tmp_path, capsys):
    # train through the command line: the recipe's data and settings, the generic trainer
    assert main(_train_args(tmp_path / "run", "--checkpoint-every-steps", "10")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["system"] == "toy" and summary["steps"] == 30
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20, 25, 30]
    assert all("weight_norm" in r for r in rows if "loss" in r)  # the task's log_values reach the metrics
    assert rows[-1]["loss"] < 0.5 * math.log(3)  # far below the loss of a uniform guess
    # load rebuilds the system's model from the file alone
    model = clipforge.load(tmp_path / "run" / "model.safetensors")
    assert isinstance(model, ToyModel) and model.config == ToyConfig() and not model.training
    # evaluate through the registry's evaluator, from the command line
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "run" / "model.safetensors"),
                "--task",
                "accuracy",
                "--data",
                "blobs:n=90",
                "--batch-size",
                "16",
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["metrics"]["top1"] > 0.9 and result["metrics"]["samples"] == 90
    # an interrupted run resumes to exactly the uninterrupted weights
    assert main(_train_args(tmp_path / "cut", "--checkpoint-every-steps", "10", "--set", "fail_at_step=17")) == 2
    assert "toy interruption after step 17" in capsys.readouterr().err
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["step"] == 10
    assert main(_train_args(tmp_path / "cut", "--checkpoint-every-steps", "10", "--resume")) == 0
    a = clipforge.load(tmp_path / "run" / "model.safetensors").state_dict()
    b = clipforge.load(tmp_path / "cut" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the system's own verbs, study and presets are served by the one command
    capsys.readouterr()
    assert (
        main(["toy-hello", "--name", "tester"]) == 0 and "hello from the toy system, tester" in capsys.readouterr().out
    )
    assert main(["study", "toy", "--out", "x"]) == 0 and "untrained_top1" in capsys.readouterr().out
    assert main(["models", "toy"]) == 0 and "toy-wide" in capsys.readouterr().out


def test_toy_settings_and_errors_through_the_command(toy, tmp_path, capsys):
    assert main(_train_args(tmp_path / "w", "--model", "toy-wide", "--steps", "3", "--set", "classes=5")) == 0
    model = clipforge.load(tmp_path / "w" / "model.safetensors")
    assert model.config == ToyConfig(hidden=64, classes=5)
    capsys.readouterr()
    assert main(_train_args(tmp_path / "e", "--set", "hiden=3")) == 2
    assert "did you mean hidden" in capsys.readouterr().err
    assert main(_train_args(tmp_path / "e", "--model", "toy-huge")) == 2
    assert "toy-small" in capsys.readouterr().err
    assert main(["train", "toyz", "--out", str(tmp_path)]) == 2
    assert "unknown system 'toyz'. Did you mean toy?" in capsys.readouterr().err


def test_registry_refuses_clashes_and_non_systems(toy):
    with pytest.raises(ConfigError, match="already registered"):
        register_system(System(**{**TOY.__dict__, "description": "another"}))
    with pytest.raises(ConfigError, match="System"):
        register_system("toy")
    with pytest.raises(ConfigError, match="share field names"):
        System(**{**TOY.__dict__, "options": ToyConfig})


# ------------------------------------------------------------------- contracts over every system
def _systems():
    return list(dict.fromkeys([*list_systems(), TOY.name]))  # every built-in system, and the toy


def _parameters(system, config) -> int:
    with torch.device("meta"):  # count without allocating
        return sum(p.numel() for p in system.build(config).parameters())


def _presets():
    """(system, preset) pairs; presets over 120M parameters are marked slow."""
    out = []
    for name in _systems():
        system = TOY if name == TOY.name else get_system(name)
        for preset, config in system.presets.items():
            slow = _parameters(system, config) > 120e6
            out.append(pytest.param(name, preset, marks=pytest.mark.slow) if slow else (name, preset))
    return out


def _batch(task, n=4):
    ds = task.dataset(get_system_of_task(task).sample_data, seed=0)
    return task.collate([ds[i] for i in range(n)])


def get_system_of_task(task):
    from clipforge.registry import system_of

    return system_of(task.model)


@pytest.mark.parametrize("system_name, preset", _presets())
def test_every_preset_builds_and_every_trainable_parameter_gets_a_gradient(toy, system_name, preset):
    system = get_system(system_name)
    config = system.preset(preset)
    assert settings.from_dict(system.config, settings.to_dict(config)) == config  # stored configs round-trip
    model = build_model(system, config, seed=0).train()
    # every parameter initialised: uninitialised memory (torch.empty left as it is) shows as huge or NaN values
    wild = [n for n, p in model.named_parameters() if not torch.isfinite(p).all() or p.abs().max() > 1e3]
    assert not wild, f"parameters left uninitialised: {wild[:5]}"
    task = system.task(model, system.options())
    task.configure(model)
    losses = task.loss(task.forward(model, _batch(task, 2)))
    total = sum(losses.values())
    assert losses and torch.isfinite(total), losses
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert trainable and not missing, f"parameters without a finite gradient: {missing[:10]}"


@pytest.mark.parametrize("system_name", _systems())
def test_system_contract_save_load_train_resume(toy, system_name, tmp_path):
    """Tiny model of each system: two training steps, save/load round trip, exact resume after a crash."""
    system = get_system(system_name)
    common = {"batch_size": 8, "workers": 0, "progress": False, "precision": "fp32", "log_every": 1, "lr": 1e-3}

    def run(out, steps, resume=False, stop_after=0):
        r = prepare_run(
            system,
            data=system.sample_data,
            train={"out": str(out), "steps": steps, "resume": resume, "checkpoint_every_steps": 1, **common},
        )
        if stop_after:  # interrupt the run after this many optimiser steps, as a crash would
            hook, done = r.task.after_step, []

            def after_step(model):
                hook(model)
                done.append(1)
                if len(done) == stop_after:
                    raise KeyboardInterrupt

            r.task.after_step = after_step
            with pytest.raises(KeyboardInterrupt):
                train(r.task, r.dataset, r.config)
            return r, None
        return r, train(r.task, r.dataset, r.config)

    r, result = run(tmp_path / "a", 2)
    assert result.step == 2 and math.isfinite(result.final_loss)
    path = clipforge.save(r.model, tmp_path / "m.safetensors")
    loaded = clipforge.load(path)
    assert type(loaded) is type(r.model) and loaded.config == r.model.config
    ref = r.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    clipforge.save(r.model, tmp_path / "dir")  # directory form: weights + config.json
    assert clipforge.load(tmp_path / "dir").config == r.model.config
    # resume: two steps, then two more from the checkpoint == four steps straight
    full, _ = run(tmp_path / "full", 4)
    run(tmp_path / "b", 4, stop_after=3)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    resumed, result = run(tmp_path / "b", 4, resume=True)
    assert result.step == 4
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"


def test_a_system_whose_names_clash_is_refused(toy):
    import dataclasses

    from clipforge.registry import unregister_system

    clash = dataclasses.replace(TOY, name="toy2", verbs=(Verb("demo", "x", lambda p: None, lambda a: 0),))
    with pytest.raises(ConfigError, match="demo"):
        register_system(clash)

    @dataclass(frozen=True)
    class BadOptions:
        lr: float = 0.1  # would shadow the trainer's --lr

    with pytest.raises(ConfigError, match="lr"):
        register_system(dataclasses.replace(TOY, name="toy3", options=BadOptions, verbs=(), studies={}))
    with pytest.raises(ConfigError, match="toy-study"):
        register_system(dataclasses.replace(TOY, name="toy4", verbs=()))
    unregister_system("toy2")
    assert "toy2" not in list_systems() and "toy3" not in list_systems()
