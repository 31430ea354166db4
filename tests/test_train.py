"""Training: loss falls, every data source works, exact accumulation, 2-process equality, kill-and-resume,
NaN handling, locking, and the run's outputs (metrics lines, plot, final model)."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.data import build_dataset
from clipforge.data.export import write_csv_folder, write_webdataset
from clipforge.data.loader import ImageTextCollate
from clipforge.data.synthetic import SyntheticWorld
from clipforge.precision import resolve_precision
from clipforge.systems.clip import CLIPOptions, CLIPTask
from clipforge.train import TrainConfig, TrainingError, train
from clipforge.train.step import Stepper

SMALL = ["vision.image_size=32", "vision.layers=2", "text.layers=2"]
SMALL_KW = dict(vision={"image_size": 32, "layers": 2}, text={"layers": 2})


def _cli(*args, timeout=600):
    cmd = [sys.executable, "-m", "clipforge.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def _train_args(out, data="synthetic:n=2000", steps=8, *extra):
    sets = [a for s in SMALL for a in ("--set", s)]
    return [
        "train",
        "--model",
        "tiny-vit",
        "--data",
        data,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--no-progress",
        "--log-every",
        "1",
        *sets,
        *extra,
    ]


def _rows(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _run(tmp_path, name, preset="tiny-vit", **kw):
    model = clipforge.create_model(preset, seed=0, **(SMALL_KW if preset == "tiny-vit" else {}))
    size = model.config.vision.image_size
    ds, _ = build_dataset(kw.pop("data", "synthetic:n=1000"), clipforge.image_transform(size, train=True), size)
    option_names = {"lock_image", "lock_image_unlocked", "lock_text", "lock_text_unlocked"}
    options = CLIPOptions(**{k: kw.pop(k) for k in list(kw) if k in option_names})
    opts = {"steps": 6, "lr": 1e-3, "precision": "fp32", "batch_size": 32, "log_every": 1, **kw}
    cfg = TrainConfig(out=str(tmp_path / name), workers=0, progress=False, **opts)
    return model, train(CLIPTask(model, options), ds, cfg)


def test_loss_falls_and_outputs_are_written(tmp_path):
    model, res = _run(tmp_path, "run", steps=100, precision="auto", batch_size=32, log_every=10)
    assert res.precision == resolve_precision("auto") and res.precision in ("bf16", "fp32")
    losses = [r["loss"] for r in res.history if "loss" in r]
    chance = math.log(32)  # the loss of embeddings that carry no information
    late = sum(losses[-3:]) / 3
    assert late < 0.7 * chance and late < 0.75 * losses[0], losses
    out = tmp_path / "run"
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(10, 101, 10))
    assert all("loss" in r and "lr" in r and "scale" in r and "samples_per_s" in r for r in rows)
    assert (out / "curves.png").stat().st_size > 1000
    assert Image.open(out / "curves.png").format == "PNG"
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 100


def test_bf16_autocast_training_runs_wherever_asked(tmp_path):
    """bf16 is what "auto" picks on hardware with native bf16; asked for elsewhere it is emulated (slow, warned)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, res = _run(tmp_path, "bf16", steps=3, precision="bf16")
    assert res.precision == "bf16" and math.isfinite(res.final_loss)


def test_caption_padding_to_a_multiple_is_exact():
    """Compiled training pads caption tokens to a multiple of 16: the lengths round up (never past the
    context length) and the text embeddings equal the trimmed batch's."""
    model = clipforge.create_model("tiny-vit", seed=0, **SMALL_KW).eval()
    ds, _ = build_dataset("synthetic:n=16", clipforge.image_transform(32), 32)
    items = [ds[i] for i in range(16)]
    trimmed, padded = ImageTextCollate()(items)["tokens"], ImageTextCollate(multiple=16)(items)["tokens"]
    assert padded.shape[1] == min(77, -(-trimmed.shape[1] // 16) * 16) and padded.shape[1] % 16 == 0
    assert (padded[:, : trimmed.shape[1]] == trimmed).all() and (padded[:, trimmed.shape[1] :] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(padded), model.encode_text(trimmed), atol=1e-5, rtol=1e-5)
    short = ImageTextCollate(context_length=20, multiple=16)(items)["tokens"]  # 17-20 tokens: not rounded to 32
    assert trimmed.shape[1] > 16 and short.shape[1] == 20


def test_exact_gradient_accumulation():
    """Gradients from 4 cached micro-batches equal the big-batch gradients of the contrastive loss."""
    model = clipforge.create_model("tiny-vit", seed=0, **SMALL_KW).train()
    ds, _ = build_dataset("synthetic:n=64", clipforge.image_transform(32), 32)
    batch = ImageTextCollate()([ds[i] for i in range(16)])
    grads = {}
    for accum in (1, 4):
        model.zero_grad()
        cfg = TrainConfig(out="unused", steps=1, batch_size=16, accum_steps=accum, precision="fp32")
        losses = Stepper(CLIPTask(model), model, cfg, torch.device("cpu"))(batch)
        grads[accum] = ({n: p.grad.clone() for n, p in model.named_parameters()}, losses["contrastive"])
    assert grads[1][1].item() == pytest.approx(grads[4][1].item(), abs=1e-6)
    for name, g in grads[1][0].items():
        torch.testing.assert_close(grads[4][0][name], g, atol=2e-6, rtol=1e-4, msg=name)
    assert grads[1][0]["logit_scale"].abs() > 0


def test_accumulated_run_matches_big_batch_run(tmp_path):
    """Plain SGD without clipping (AdamW would cancel a constant gradient scale): weights and gradient
    norms of an accumulated run equal the big-batch run's."""
    sgd = {"steps": 3, "optimizer": "sgd", "lr": 0.5, "grad_clip": None}
    m1, r1 = _run(tmp_path, "a1", **sgd)
    m4, r4 = _run(tmp_path, "a4", accum_steps=4, **sgd)
    for a, b in zip(r1.history, r4.history):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    init = clipforge.create_model("tiny-vit", seed=0, **SMALL_KW).state_dict()
    moved = max((m1.state_dict()[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3  # the steps are large enough for a gradient-scale error to show
    for (n, a), b in zip(m1.state_dict().items(), m4.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=n)


def test_accumulation_with_a_fully_locked_tower(tmp_path):
    """The locked tower's outputs carry no gradient; the cached re-run skips them."""
    model, res = _run(tmp_path, "acc-lock", steps=2, accum_steps=2, lock_text=True)
    assert res.step == 2 and math.isfinite(res.final_loss)


def _batchnorm_buffers(model, prefix="visual."):
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(prefix) and "running" in k or k.startswith(prefix) and "num_batches" in k
    }


def test_locked_resnet_tower_keeps_its_batchnorm_statistics(tmp_path):
    init = clipforge.create_model("tiny-rn", seed=0)
    before = _batchnorm_buffers(init)
    model, _ = _run(tmp_path, "lit-rn", preset="tiny-rn", steps=3, batch_size=8, lock_image=True)
    after = _batchnorm_buffers(model)
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    # with its last stage unlocked, that stage's statistics move and the frozen stages' do not
    model, _ = _run(
        tmp_path, "lit-rn1", preset="tiny-rn", steps=3, batch_size=8, lock_image=True, lock_image_unlocked=1
    )
    after = _batchnorm_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("visual.layer4."))
    assert not torch.equal(before["visual.layer4.0.bn1.running_mean"], after["visual.layer4.0.bn1.running_mean"])


def _rn_batch(n=16):
    ds, _ = build_dataset("synthetic:n=64", clipforge.image_transform(64), 64)
    return ImageTextCollate()([ds[i] for i in range(n)])


def test_cached_accumulation_updates_batchnorm_statistics_once_per_micro_batch():
    """The no-gradient pass over each micro-batch updates the running statistics; the re-run with
    gradients must not update them a second time."""
    batch = _rn_batch()
    model = clipforge.create_model("tiny-rn", seed=0).train()
    reference = clipforge.create_model("tiny-rn", seed=0).train()
    with torch.no_grad():
        for i in range(4):
            reference(batch["images"][4 * i : 4 * i + 4], batch["tokens"][4 * i : 4 * i + 4])
    cfg = TrainConfig(out="unused", steps=1, batch_size=16, accum_steps=4, precision="fp32")
    Stepper(CLIPTask(model), model, cfg, torch.device("cpu"))(batch)
    got, want = _batchnorm_buffers(model), _batchnorm_buffers(reference)
    assert got["visual.bn1.num_batches_tracked"].item() == 4
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_accumulation_is_exact_for_a_resnet_whose_batchnorm_is_frozen():
    """The documented scope: exact wherever BatchNorm does not normalise by the (micro-)batch; here the
    locked ResNet tower runs in eval mode and the text tower learns."""
    batch = _rn_batch()
    grads = {}
    for accum in (1, 4):
        model = clipforge.create_model("tiny-rn", seed=0)
        task = CLIPTask(model, CLIPOptions(lock_image=True))
        task.configure(model)
        task.train_mode(model)
        cfg = TrainConfig(out="unused", steps=1, batch_size=16, accum_steps=accum, precision="fp32")
        Stepper(task, model, cfg, torch.device("cpu"))(batch)
        grads[accum] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[1] and grads[1].keys() == grads[4].keys()
    for name, g in grads[1].items():
        torch.testing.assert_close(grads[4][name], g, atol=2e-6, rtol=1e-4, msg=name)


def test_locking_freezes_towers(tmp_path):
    init = clipforge.create_model("tiny-vit", seed=0, **SMALL_KW).state_dict()
    model, _ = _run(tmp_path, "lit", steps=3, lock_image=True)
    after = model.state_dict()
    assert all(torch.equal(init[k], after[k]) for k in init if k.startswith("visual."))
    assert not torch.equal(init["text.text_projection"], after["text.text_projection"])
    model, _ = _run(tmp_path, "lit1", steps=3, lock_image=True, lock_image_unlocked=1)
    after = model.state_dict()
    assert torch.equal(
        init["visual.transformer.resblocks.0.attn.in_proj_weight"],
        after["visual.transformer.resblocks.0.attn.in_proj_weight"],
    )
    assert not torch.equal(
        init["visual.transformer.resblocks.1.attn.in_proj_weight"],
        after["visual.transformer.resblocks.1.attn.in_proj_weight"],
    )
    assert not torch.equal(init["visual.proj"], after["visual.proj"])


class _NanAt(CLIPTask):
    def __init__(self, model, bad_step):
        super().__init__(model)
        self.calls, self.bad_step = 0, bad_step

    def loss(self, outputs):
        self.calls += 1
        losses = super().loss(outputs)
        return {k: v * float("nan") for k, v in losses.items()} if self.calls == self.bad_step else losses


def test_nan_loss_stops_with_step_or_is_skipped(tmp_path):
    ds, _ = build_dataset("synthetic:n=200", clipforge.image_transform(32), 32)
    model = clipforge.create_model("tiny-vit", seed=0, **SMALL_KW)
    cfg = TrainConfig(
        out=str(tmp_path / "nan"),
        steps=6,
        batch_size=8,
        workers=0,
        progress=False,
        checkpoint_every_steps=2,
        precision="fp32",
    )
    with pytest.raises(TrainingError, match="at step 4.*--on-nan skip"):
        train(_NanAt(model, 4), ds, cfg)
    state = torch.load(tmp_path / "nan" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    model = clipforge.create_model("tiny-vit", seed=0, **SMALL_KW)
    cfg = TrainConfig(
        out=str(tmp_path / "skip"),
        steps=6,
        batch_size=8,
        workers=0,
        progress=False,
        on_nan="skip",
        precision="fp32",
        log_every=1,
    )
    res = train(_NanAt(model, 4), ds, cfg)
    assert res.step == 6 and res.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_csv_webdataset_and_folder_sources(tmp_path):
    world = SyntheticWorld(96, 32, seed=5)
    csv_path = write_csv_folder(world, tmp_path / "csv")
    shards = write_webdataset(world, tmp_path / "wds", shard_size=32)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(40):
        scene = world[i]
        scene.image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(scene.caption + "\n")
    # corrupt and truncated images, and an image without caption
    (folder / "bad1.png").write_bytes(b"not an image at all")
    (folder / "bad1.txt").write_text("a caption whose image is corrupt")
    good = (folder / "0.png").read_bytes()
    (folder / "bad2.png").write_bytes(good[: len(good) // 3])
    (folder / "bad2.txt").write_text("a caption whose image is truncated")
    Image.new("RGB", (8, 8)).save(folder / "nocaption.png")
    for name, data in [("csv", str(csv_path)), ("wds", shards), ("folder", str(folder))]:
        _, res = _run(tmp_path, name, data=data, steps=12, batch_size=16)
        losses = [r["loss"] for r in res.history if "loss" in r]
        assert all(torch.isfinite(torch.tensor(l)) for l in losses)
        if name == "folder":
            assert res.skipped_samples >= 2  # both bad images were met (12 steps x 16 > 42 pairs)
            assert _rows(tmp_path / name)[-1]["skipped_samples"] == res.skipped_samples


def test_cli_train_and_unknown_options(tmp_path):
    r = _cli(*_train_args(tmp_path / "cli", steps=4))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and (tmp_path / "cli" / "model.safetensors").exists()
    loaded = clipforge.load(tmp_path / "cli" / "model.safetensors")
    assert loaded.config.vision.image_size == 32
    r = _cli(*_train_args(tmp_path / "bad", steps=4), "--learning-rate", "1")
    assert r.returncode == 2 and "--learning-rate" in r.stderr and "--lr" in r.stderr
    r = _cli(*_train_args(tmp_path / "bad", steps=4), "--set", "text.layrs=2")
    assert r.returncode == 2 and "text.layers" in r.stderr
    r = _cli(*_train_args(tmp_path / "bad", data="synthetic:size=32,colour=red", steps=4))
    assert r.returncode == 2 and "valid: n, size" in r.stderr


def test_two_process_gloo_matches_one_process(tmp_path):
    """Plain SGD without clipping, so a world-size scaling error in the gradients would show in the
    weights (AdamW cancels a constant scale); gradient norms are compared step by step as well."""
    sgd = ("--precision", "fp32", "--optimizer", "sgd", "--lr", "0.5", "--grad-clip", "0")
    args = _train_args(tmp_path / "one", "synthetic:n=500", 4, *sgd)
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "clipforge.cli",
        *_train_args(tmp_path / "two", "synthetic:n=500", 4, *sgd),
    ]
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads(r2.stdout.strip().splitlines()[-1])["world_size"] == 2
    assert json.loads(r.stdout.strip().splitlines()[-1])["world_size"] == 1
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    w1, w2 = _weights(tmp_path / "one" / "model.safetensors"), _weights(tmp_path / "two" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4, msg=k)
    # every rank accepts --overwrite of the earlier run in its folder
    again = subprocess.run(
        [*cmd, "--overwrite"], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["step"] for r in _rows(tmp_path / "two")] == [1, 2, 3, 4]


def test_sigkill_and_resume_gives_the_same_weights(tmp_path, kill_after_checkpoint):
    steps = 30
    args = ("--precision", "fp32", "--checkpoint-every-steps", "3")
    ref = _cli(*_train_args(tmp_path / "ref", "synthetic:n=1000", steps, *args))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    assert kill_after_checkpoint(_train_args(out, "synthetic:n=1000", steps, *args), 9) == -signal.SIGKILL
    ckpt = out / "checkpoints" / "last.pt"
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 9 <= killed_at < steps, "the run was not killed mid-way"
    res = _cli(*_train_args(out, "synthetic:n=1000", steps, *args, "--resume"))
    assert res.returncode == 0, res.stderr
    # a kill during a write can leave a temporary file, never a half-written last.pt; the resumed run tidies up
    assert [p.name for p in ckpt.parent.iterdir()] == ["last.pt"]
    a, b = _weights(tmp_path / "ref" / "model.safetensors"), _weights(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(b[k], a[k]), k
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # each step logged once


def test_a_finished_run_is_neither_overwritten_nor_silently_restarted(tmp_path):
    out = tmp_path / "run"
    assert _cli(*_train_args(out, "synthetic:n=200", 2)).returncode == 0
    before = _weights(out / "model.safetensors")
    again = _cli(*_train_args(out, "synthetic:n=200", 2, "--lr", "1e-2"))
    assert again.returncode == 2 and "holds an earlier run" in again.stderr and "--overwrite" in again.stderr
    after = _weights(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was lost
    missing = _cli(*_train_args(tmp_path / "empty", "synthetic:n=200", 2, "--resume"))
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr
    other = _cli(*_train_args(out, "synthetic:n=200", 4, "--resume", "--set", "text.layers=3"))
    assert other.returncode == 2 and "text.layers: 2 -> 3" in other.stderr
    lr = _cli(*_train_args(out, "synthetic:n=200", 4, "--resume", "--lr", "0.1"))
    assert lr.returncode == 2 and "lr: 0.0005 -> 0.1" in lr.stderr
    locked = _cli(*_train_args(out, "synthetic:n=200", 4, "--resume", "--lock-image"))
    assert locked.returncode == 2 and "optimiser state does not fit" in locked.stderr
    assert "Traceback" not in locked.stderr
    clip = _cli(*_train_args(out, "synthetic:n=200", 4, "--resume", "--grad-clip", "0.5"))
    assert clip.returncode == 2 and "grad_clip: 1.0 -> 0.5" in clip.stderr
    longer = _cli(*_train_args(out, "synthetic:n=200", 4, "--resume"))
    assert longer.returncode == 0 and "steps: 2 -> 4" in longer.stderr
    assert _cli(*_train_args(out, "synthetic:n=200", 2, "--overwrite")).returncode == 0
    assert [r["step"] for r in _rows(out)] == [1, 2]


def test_bad_validation_data_fails_before_training(tmp_path):
    r = _cli(*_train_args(tmp_path / "v", "synthetic:n=200", 50, "--val-data", "synthetic:label=size"))
    assert r.returncode == 2 and "synthetic label must be one of" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v" / "checkpoints" / "last.pt").exists()  # it stopped at step 0
