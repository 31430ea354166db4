import json

import pytest
from PIL import Image

import clipforge
from clipforge.cli import main
from clipforge.eval.run import run_eval


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    clipforge.save(clipforge.create_model("tiny-vit", seed=0), path)
    return path


def test_eval_zeroshot_and_linear_probe_on_digits(ckpt, tmp_path, capsys):
    for task in ("zeroshot", "linear-probe"):
        out = tmp_path / f"{task}.json"
        assert (
            main(
                [
                    "eval",
                    "--model",
                    str(ckpt),
                    "--task",
                    task,
                    "--data",
                    "digits",
                    "--templates",
                    "digits",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        result = json.loads(out.read_text())
        assert result["task"] == task and result["dataset"] == "digits" and result["model"] == str(ckpt)
        assert f"| top1 | {result['metrics']['top1']:.4f} |" in capsys.readouterr().out
    probe = json.loads((tmp_path / "linear-probe.json").read_text())["metrics"]
    # even random CLIP features carry the digits' pixels: the probe is far above chance (0.1)
    assert probe["top1"] > 0.5 and probe["train_samples"] == 1257
    zs = json.loads((tmp_path / "zeroshot.json").read_text())["metrics"]
    assert zs["samples"] == 540
    # the same numbers computed independently: the classifier's argmax against the labels, and scikit-learn
    from sklearn.metrics import balanced_accuracy_score

    from clipforge.eval import zero_shot_classifier
    from clipforge.eval.datasets import labelled_dataset
    from clipforge.eval.features import image_features

    model, ds = clipforge.load(ckpt), labelled_dataset("digits", "test", 64)
    logits = zero_shot_classifier(model, ds.classnames, "digits").logits(image_features(model, ds))
    predicted = logits.argmax(1).numpy()
    assert zs["top1"] == pytest.approx(float((predicted == ds.labels).mean()), abs=1e-9)
    assert zs["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(ds.labels, predicted), abs=1e-9)


def test_eval_on_class_folders_and_fewshot(ckpt, tmp_path):
    root = tmp_path / "classes"
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    for split in ("train", "val"):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (40, 30), tuple(max(0, c - 10 * i) for c in rgb)).save(
                    root / split / name / f"{i}.png"
                )
    model = clipforge.load(ckpt)
    zs = run_eval(model, "zeroshot", str(root))
    assert zs["metrics"]["samples"] == 12
    fs = run_eval(model, "fewshot", str(root))
    assert set(fs["metrics"]) == {"1-shot", "2-shot", "4-shot", "8-shot", "16-shot", "zero-shot"}
    assert fs["metrics"]["4-shot"]["top1"] == 1.0  # two flat colours are linearly separable


def test_zeroshot_and_retrieval_identical_across_formats(ckpt, tmp_path):
    model = clipforge.load(ckpt)
    clipforge.save(model, tmp_path / "hf", format="hf")
    clipforge.save(model, tmp_path / "oa.pt", format="openai")
    results = []
    for m in (model, clipforge.load(tmp_path / "hf"), clipforge.load(tmp_path / "oa.pt", model=model.config)):
        zs = run_eval(m, "zeroshot", "synthetic:label=composite,n=64", templates="synthetic")["metrics"]
        rt = run_eval(m, "retrieval", "synthetic:split=val,n=32")["metrics"]
        results.append((zs, rt))
    assert results[0] == results[1] == results[2]


def test_zeroshot_cli(ckpt, tmp_path, capsys):
    img = tmp_path / "red.png"
    Image.new("RGB", (50, 50), (220, 20, 20)).save(img)
    assert (
        main(
            [
                "zeroshot",
                str(img),
                "--model",
                str(ckpt),
                "--labels",
                "red square,blue circle,green star",
                "--json",
                "--top",
                "2",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res[0]["image"] == str(img) and len(res[0]["predictions"]) == 2
    # the same probabilities from the Python API: softmax over the three classes, best first
    import torch

    from clipforge.eval import zero_shot_classifier

    model = clipforge.load(ckpt)
    labels = ["red square", "blue circle", "green star"]
    with torch.no_grad():
        feats = model.encode_image(clipforge.preprocess(model)(clipforge.load_image(img))[None])
    expected = zero_shot_classifier(model, labels, "openai80").classify(feats, k=2)[0]
    assert [(p["label"], p["prob"]) for p in res[0]["predictions"]] == [(l, round(q, 4)) for l, q in expected]
    assert main(["zeroshot", str(tmp_path / "missing.png"), "--model", str(ckpt), "--labels", "a,b"]) == 2


def test_quickstart_short_run_writes_its_report(tmp_path):
    from clipforge.systems.clip.quickstart import run_quickstart

    report = run_quickstart(
        tmp_path / "qs",
        minutes=0.05,
        eval_images=64,
        probe_images=96,
        retrieval_images=48,
        batch_size=32,
        progress=False,
    )
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["train_seconds"] > 0 and saved["steps"] >= 20
    for style in ("bare", "template", "ensemble"):  # accuracies over 64 images: whole counts of 64
        for table in ("heldout_shape_top1", "heldout_shape_debiased_top1", "heldout_composite_top1"):
            assert saved[table][style] * 64 == pytest.approx(round(saved[table][style] * 64), abs=1e-6)
    assert set(saved["fewshot_val_shape"]) == {"zero_shot", "1-shot", "2-shot", "4-shot", "8-shot", "16-shot"}
    assert "image_to_text_R@1" in saved["retrieval_val"]
    md = (tmp_path / "qs" / "report.md").read_text()
    assert "colour directions projected out" in md
    assert "held-out colour-shape" in md and f"{saved['heldout_shape_top1']['ensemble']:.1%}" in md
    assert (tmp_path / "qs" / "predictions.png").stat().st_size > 5000
    assert (tmp_path / "qs" / "train" / "curves.png").exists()
    assert report["findings"] == saved["findings"]


def test_quickstart_default_budget_keeps_the_steps_held_out_shapes_need(tmp_path, monkeypatch):
    """Default budget: 5 minutes, stretched to MIN_STEPS on a slow machine; an explicit --minutes is kept."""
    import clipforge.systems.clip.quickstart as qs

    calls = []

    def fake_setup(seconds, seed, batch_size, workers, min_steps):
        calls.append((seconds, min_steps))
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(qs, "setup", fake_setup)
    for minutes in (None, 2.0):
        with pytest.raises(KeyboardInterrupt):
            qs.run_quickstart(tmp_path / "qs", minutes=minutes, progress=False)
    assert calls == [(qs.DEFAULT_MINUTES * 60, qs.MIN_STEPS), (120.0, 20)]


def test_probe_on_class_folders_without_train_split_is_refused(ckpt, tmp_path):
    for name in ("a", "b"):
        (tmp_path / "flat" / name).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(tmp_path / "flat" / name / "0.png")
    model = clipforge.load(ckpt)
    assert run_eval(model, "zeroshot", str(tmp_path / "flat"))["metrics"]["samples"] == 2
    with pytest.raises(clipforge.ConfigError, match="no train/ folder"):
        run_eval(model, "linear-probe", str(tmp_path / "flat"))
