"""LSeg: the model's shapes and label-set behaviour, starting from a CLIP, training through the one
command (resume after SIGKILL, torchrun), `clipforge segment`, the segmentation evaluator and the study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import clipforge
from clipforge.cli import main
from clipforge.data.synthetic import SyntheticWorld
from clipforge.errors import ConfigError
from clipforge.registry import get_system
from clipforge.systems.lseg import LSeg
from clipforge.systems.lseg.task import LSegOptions, LSegTask, training_labels
from clipforge.train.prepare import build_model, prepare_run


def _model(preset="lseg-shapes", **changes) -> LSeg:
    config = replace(get_system("lseg").preset(preset), **changes)
    return build_model(get_system("lseg"), config, seed=0).eval()


@pytest.mark.parametrize("preset", ["lseg-shapes", "lseg-tiny-vit"])
def test_pixel_embeddings_and_logits_have_the_documented_shapes(preset):
    model = _model(preset)
    images = torch.randn(2, 3, 64, 64)
    pixels = model.encode_pixels(images)
    assert pixels.shape == (2, model.clip.config.embed_dim, 32, 32)
    torch.testing.assert_close(pixels.norm(dim=1), torch.ones(2, 32, 32))
    labels = model.encode_labels(["background", "circle", "star"])
    logits = model(images, labels)
    assert logits.shape == (2, 3, 64, 64) and torch.isfinite(logits).all()
    assert logits.abs().max() <= model.logit_scale + 1e-4  # scaled cosines


@pytest.mark.parametrize("blocks, kind", [(0, "bottleneck"), (2, "bottleneck"), (2, "depthwise")])
def test_any_number_and_order_of_labels(blocks, kind):
    model = _model(blocks=blocks, block_kind=kind)
    images = torch.randn(1, 3, 64, 64)
    labels = ["background", "circle", "square", "star"]
    full = model(images, model.encode_labels(labels))
    order = [2, 0, 3, 1]
    permuted = model(images, model.encode_labels([labels[i] for i in order]))
    torch.testing.assert_close(permuted, full[:, order], atol=1e-5, rtol=1e-5)
    assert model(images, model.encode_labels(["circle"])).shape == (1, 1, 64, 64)


def test_from_clip_takes_the_clip_and_freezes_its_text_tower():
    clip = clipforge.load("shapes")
    model = get_system("lseg").from_clip(get_system("lseg").preset("lseg-tiny-vit"), clip)
    assert model.config.clip == clip.config  # the CLIP's architecture replaces the preset's
    ref = clip.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.clip.state_dict().items())
    assert not any(p.requires_grad for p in model.clip.text.parameters())
    assert not model.clip.logit_scale.requires_grad
    assert all(p.requires_grad for p in model.clip.visual.layer4.parameters())
    # the decoder adds to CLIP's own dense embedding, so before training it already segments zero-shot
    assert model.clip_dense and not model.head.weight.any()


def test_training_labels_leave_unseen_classes_unsupervised():
    labels, table = training_labels(["background", "circle", "square", "star"], "square")
    assert labels == ["background", "circle", "star"]
    assert table[:4].tolist() == [0, 1, 255, 2] and table[255] == 255
    with pytest.raises(ConfigError, match="hexagon"):
        training_labels(["background", "circle"], "hexagon")
    task = LSegTask(_model(), LSegOptions(unseen="circle,square"))
    ds = task.dataset("synthetic:n=40", seed=0)
    assert task.labels == ["background", "triangle", "diamond", "pentagon", "hexagon", "star", "cross"]
    masks = torch.stack([ds[i]["mask"] for i in range(40)])
    scenes = [ds.world[i] for i in range(40)]
    unseen = np.stack([np.isin(s.class_mask, [1, 2]) for s in scenes])
    assert unseen.any()
    for mask, hidden in zip(masks.numpy(), unseen):  # training flips half the images
        assert np.array_equal(mask == 255, hidden) or np.array_equal(mask == 255, hidden[:, ::-1])
        assert (mask[mask != 255] < 7).all()


def test_episodes_offer_background_and_one_present_class():
    task = LSegTask(_model(), LSegOptions(episodes=True))
    ds = task.dataset("synthetic:n=16", seed=0)
    batch = task.collate([ds[i] for i in range(16)])
    for mask, q in zip(batch["masks"], batch["query"]):
        assert q in mask.unique() or mask.max() == 0
    assert torch.equal(task.collate([ds[i] for i in range(16)])["query"], batch["query"])  # deterministic
    out = task.forward(task.model, batch)
    loss = task.loss(out)["cross_entropy"]
    # hand-computed: 2-way cross-entropy of (background, query) channels against the binarised mask
    logits = out["logits"].gather(
        1, torch.stack([torch.zeros(16, dtype=torch.long), batch["query"]], 1)[..., None, None].expand(-1, -1, 64, 64)
    )
    target = (batch["masks"] == batch["query"][:, None, None]).long()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, target))


def _train_args(out, *extra, steps=4, data="synthetic:n=64"):
    return ["train", "lseg", "--clip", "shapes", "--data", data, "--steps", str(steps), "--batch-size", "8",
            "--workers", "0", "--out", str(out), "--no-progress", *extra]  # fmt: skip


def test_train_from_shapes_through_the_command_then_segment_and_eval(tmp_path, capsys):
    assert main(_train_args(tmp_path / "run", "--set", "unseen=star")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["system"] == "lseg" and summary["steps"] == 4
    model = clipforge.load(summary["model"])
    assert isinstance(model, LSeg)
    shapes = clipforge.load("shapes").text.state_dict()
    assert all(torch.equal(v, shapes[k]) for k, v in model.clip.text.state_dict().items())  # text tower frozen
    # clipforge segment: overlays, masks at each image's own size, areas that add up
    images = []
    for i, size in enumerate([(64, 64), (90, 50)]):
        images.append(tmp_path / f"im{i}.png")
        SyntheticWorld(2, 64, "val")[i].image.resize(size).save(images[-1])
    out = tmp_path / "seg"
    labels = "background,circle,star"
    assert main(["segment", *map(str, images), "--model", summary["model"], "--labels", labels, "--out", str(out)]) == 0
    report = json.loads((out / "areas.json").read_text())
    for path, size in zip(images, [(64, 64), (90, 50)]):
        entry = report["images"][str(path)]
        assert sum(a["pixels"] for a in entry["areas"].values()) == size[0] * size[1]
        assert sum(a["fraction"] for a in entry["areas"].values()) == pytest.approx(1, abs=1e-4)
        assert Image.open(entry["mask"]).size == size and Image.open(entry["overlay"]).size[0] == size[0]
    assert report["labels"] == ["background", "circle", "star"]
    assert main(["segment", str(images[0]), "--model", summary["model"], "--labels", "a,a"]) == 2
    assert main(["segment", str(images[0]), "--model", "shapes", "--labels", "a,b"]) == 2
    assert "holds a clip model, not a segmenting system" in capsys.readouterr().err
    assert (
        main(["segment", str(images[0]), "--model", summary["model"], "--labels", "a,b", "--method", "groupvit"]) == 2
    )
    assert "not groupvit" in capsys.readouterr().err
    # clipforge eval with the model on synthetic data
    res = tmp_path / "eval.json"
    args = ["eval", "--model", summary["model"], "--task", "segmentation", "--data", "synthetic:n=8", "--out", str(res)]
    assert main(args) == 0
    metrics = json.loads(res.read_text())["metrics"]
    assert 0 <= metrics["miou"] <= 1 and metrics["images"] == 8 and len(metrics["per_class_iou"]) == 9


def test_clip_option_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="not built on a CLIP"):
        prepare_run("clip", data="synthetic:n=8", clip="shapes", load_data=False)
    with pytest.raises(ConfigError, match="cannot be set"):
        prepare_run("lseg", clip="shapes", settings={"clip.embed_dim": 64}, load_data=False)
    model = _model()
    clipforge.save(model, tmp_path / "lseg.safetensors")
    with pytest.raises(ConfigError, match="not a CLIP"):
        prepare_run("lseg", clip=str(tmp_path / "lseg.safetensors"), load_data=False)
    # --clip none: the preset's CLIP with random weights
    run = prepare_run("lseg", clip="none", load_data=False)
    shapes = clipforge.load("shapes").state_dict()
    assert not torch.equal(
        run.model.clip.state_dict()["text.token_embedding.weight"], shapes["text.token_embedding.weight"]
    )
    with pytest.raises(SystemExit) as e:  # CLIP itself is not built on a CLIP: no --clip flag
        main(["train", "clip", "--clip", "shapes", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "unknown option(s): --clip" in capsys.readouterr().err


def _weights(path):
    return load_file(str(path))


def _cli(*args):
    """`clipforge ARGS` in a child process with one OpenMP thread, as the killed run has (the thread
    count changes the order of float sums, so runs compared bit for bit share it)."""
    cmd = [sys.executable, "-m", "clipforge.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_lseg_resumes_after_sigkill_with_the_same_weights(tmp_path, kill_after_checkpoint):
    args = ("--precision", "fp32", "--checkpoint-every-steps", "2")
    ref = tmp_path / "ref"
    r = _cli(*_train_args(ref, *args, steps=10, data="synthetic:n=200"))
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "killed"
    assert kill_after_checkpoint(_train_args(out, *args, steps=10, data="synthetic:n=200"), 4) == -signal.SIGKILL
    killed_at = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 4 <= killed_at < 10
    r = _cli(*_train_args(out, *args, "--resume", steps=10, data="synthetic:n=200"))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(ref / "model.safetensors"), _weights(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lseg_trains_under_torchrun_with_two_gloo_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clipforge.cli",
           *_train_args(tmp_path / "two", "--precision", "fp32", steps=4)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses and all(np.isfinite(losses))
    assert isinstance(clipforge.load(summary["model"]), LSeg)


def test_study_writes_the_family_report(tmp_path):
    from clipforge.systems.lseg.study import StudySettings, run_study

    s = StudySettings(steps=2, batch_size=8, folds=(1,), test_images=24, progress=False, ablation=False)
    report = run_study(tmp_path, s)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["system"] == "lseg" and on_disk["seconds"] > 0
    for key in ("unseen_miou", "seen_miou", "fb_iou"):
        assert 0 <= on_disk["metrics"][key] <= 1
    for key in ("random_init_unseen_miou", "seen_labels_only_unseen_miou"):
        assert key in on_disk["baselines"]
    assert on_disk["baselines"]["seen_labels_only_unseen_miou"] == 0  # unseen names never offered: never predicted
    assert on_disk["folds"]["fold1"]["unseen"] == ["triangle", "diamond"]
    assert all({"claim", "paper", "measured", "reproduced"} <= set(c) for c in report["claims"])
    assert (tmp_path / "lseg_unseen.png").stat().st_size > 0 and "unseen mIoU" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("preset, embed, size", [("lseg-vit-b-32", 512, 224), ("lseg-rn50", 1024, 224)])
def test_lseg_builds_on_openai_architectures(preset, embed, size):
    model = _model(preset)
    assert isinstance(model.clip, clipforge.models.CLIP)
    with torch.no_grad():
        pixels = model.encode_pixels(torch.randn(1, 3, size, size))
        logits = model(torch.randn(1, 3, size, size), torch.nn.functional.normalize(torch.randn(5, embed), dim=-1))
    assert pixels.shape == (1, embed, size // 2, size // 2) and logits.shape == (1, 5, size, size)
    assert model.taps == ((2, 5, 8, 11) if "vit" in preset else ())


def test_an_explicit_model_without_clip_starts_random_and_says_so(capsys):
    run = prepare_run("lseg", recipe="shapes", model="lseg-tiny-vit", load_data=False)
    assert run.model.clip.config.vision.kind == "vit"  # the named preset wins over the recipe's CLIP
    assert "without --clip" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--clip none"):
        prepare_run("lseg", settings={"clip.embed_dim": 64}, load_data=False)  # defaulted to shapes: say so
    assert (
        prepare_run("lseg", clip="none", settings={"clip.embed_dim": 64}, load_data=False).model.config.clip.embed_dim
        == 64
    )


def test_episodes_refuse_an_unseen_background():
    with pytest.raises(ConfigError, match="background"):
        LSegTask(_model(), LSegOptions(episodes=True, unseen="background")).dataset("synthetic:n=8")


def test_resuming_with_another_backbone_learning_rate_is_refused(tmp_path):
    from clipforge.errors import TrainingError
    from clipforge.train import train

    def run(scale, resume):
        r = prepare_run(
            "lseg",
            data="synthetic:n=32",
            settings={"backbone_lr_scale": scale},
            train={
                "out": str(tmp_path),
                "steps": 2,
                "batch_size": 8,
                "workers": 0,
                "progress": False,
                "resume": resume,
            },
        )
        return train(r.task, r.dataset, r.config)

    run(0.1, False)
    with pytest.raises(TrainingError, match="learn at"):
        run(0.2, True)


def test_folder_evaluation_scores_at_each_images_own_size(tmp_path):
    from clipforge.eval.segmentation import IGNORE_INDEX, write_mask
    from clipforge.systems.lseg.infer import evaluate_segmentation

    root = tmp_path / "ade"
    for split, n in (("training", 2), ("validation", 3)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            size = (40 + 10 * i, 30)
            mask = np.random.default_rng(i).integers(0, 3, size[::-1])
            mask[0] = IGNORE_INDEX
            write_mask(mask, root / "annotations" / split / f"x{i}.png")
            Image.new("RGB", size, (i * 40, 90, 20)).save(root / "images" / split / f"x{i}.jpg")
    (root / "classes.txt").write_text("other\nwall\nsky\n")
    model = _model()
    metrics = evaluate_segmentation(model, f"{root}:validation", batch_size=2)
    assert metrics["images"] == 3 and metrics["pixels"] == sum((40 + 10 * i) * 29 for i in range(3))
    with pytest.raises(ConfigError, match="ROOT:SPLIT"):
        evaluate_segmentation(model, str(root))
    with pytest.raises(ConfigError, match="no split 'val'"):
        evaluate_segmentation(model, f"{root}:val")
    Image.new("RGB", (40, 30)).save(root / "annotations" / "training" / "x0.png")  # RGB: not a mask
    task = LSegTask(_model(), LSegOptions())
    ds = task.dataset(f"{root}:training")
    with pytest.raises(clipforge.errors.DataError, match="indexed or greyscale"):
        ds[0]  # a mask of the wrong kind is the data's description to fix: never skipped
