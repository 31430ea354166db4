"""ViLD: open-vocabulary detection on the shared detection toolkit. Tiny random models and seconds of
training; the study's numbers are in docs/vild.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.data.detection import SyntheticDetection, detection_dataset, synthetic_coco
from clipforge.data.synthetic import SHAPES, SyntheticWorld
from clipforge.errors import ConfigError
from clipforge.registry import get_system
from clipforge.systems.vild import ViLD, ViLDOptions, ViLDTask
from clipforge.systems.vild.infer import detect, evaluate_detection, label_scores
from clipforge.systems.vild.task import crop_embeddings, distillation_targets
from clipforge.train.prepare import prepare_run

SYSTEM = get_system("vild")


def _tiny(**changes) -> ViLD:
    torch.manual_seed(0)
    config = SYSTEM.preset("vild-shapes")
    from dataclasses import replace

    return ViLD.from_config(replace(config, head_dim=32, fpn_dim=16, **changes)).eval()


def test_novel_boxes_never_reach_training_while_their_objects_stay_in_the_images():
    ds = detection_dataset("synthetic:n=200", 64, (0.5,) * 3, (0.5,) * 3, train=True, exclude=["star", "hexagon"])
    novel_ids = {SHAPES.index("star") + 1, SHAPES.index("hexagon") + 1}
    seen_novel_objects = 0
    for i in range(len(ds)):
        s = ds[i]
        assert not (set(s["labels"].tolist()) & novel_ids)
        assert len(s["boxes"]) == len(s["labels"])
        seen_novel_objects += sum(o.shape in ("star", "hexagon") for o in ds.world[i].objects)
    assert seen_novel_objects > 20  # they are drawn, only never boxed
    with pytest.raises(ConfigError, match="unknown category"):
        detection_dataset("synthetic:n=4", 64, (0.5,) * 3, (0.5,) * 3, exclude=["dragon"])


def test_training_flip_moves_boxes_with_the_image():
    ds = SyntheticDetection(SyntheticWorld(40, 64, "train", 0), (0.0,) * 3, (1.0,) * 3, train=True)
    flipped = [ds[i] for i in range(40) if ds[i]["flipped"]]
    assert flipped
    s = flipped[0]
    plain = SyntheticDetection(SyntheticWorld(40, 64, "train", 0), (0.0,) * 3, (1.0,) * 3)[s["index"]]
    torch.testing.assert_close(s["image"], plain["image"].flip(-1))
    torch.testing.assert_close(s["boxes"][:, [0, 2]], 64 - plain["boxes"][:, [2, 0]])


def test_synthetic_coco_boxes_are_the_objects_pixels():
    world = SyntheticWorld(5, 64, "val", 3)
    coco = synthetic_coco(world)
    ann = coco["annotations"][0]
    scene = world[ann["image_id"] - 1]
    ys, xs = np.nonzero(scene.instance_mask == 1)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    assert ann["area"] == len(xs) and ann["category_id"] == SHAPES.index(scene.objects[0].shape) + 1


def test_text_classifier_is_cosine_over_temperature_with_background_first():
    model = _tiny()
    regions = F.normalize(torch.randn(5, model.config.clip.embed_dim), dim=-1)
    labels = F.normalize(torch.randn(3, model.config.clip.embed_dim), dim=-1)
    logits = model.class_logits(regions, labels)
    bg = F.normalize(model.background.float(), dim=0)
    torch.testing.assert_close(logits[:, 0], regions @ bg / 0.01)
    torch.testing.assert_close(logits[:, 1:], regions @ labels.T / 0.01)


def test_ensemble_scores_are_the_papers_geometric_mean():
    model = _tiny(ensemble=True)
    feats = torch.randn(4, model.config.fpn_dim, 7, 7)
    labels = F.normalize(torch.randn(3, model.config.clip.embed_dim), dim=-1)
    novel = torch.tensor([False, True, False])
    scores, _ = label_scores(model, feats, labels, novel)
    emb, _ = model.head(feats)
    emb_i, _ = model.image_head(feats)
    p_text = F.softmax(model.class_logits(emb, labels), -1)[:, 1:]
    p_img = F.softmax(emb_i @ labels.T / 0.01, -1)
    want = torch.where(novel, p_text ** (1 / 3) * p_img ** (2 / 3), p_text ** (2 / 3) * p_img ** (1 / 3))
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-6)


def test_image_distillation_needs_proposals_and_its_targets_are_clip_crop_embeddings(tmp_path):
    model = _tiny()
    with pytest.raises(ConfigError, match="train ViLD-text first"):
        ViLDTask(model, ViLDOptions(image_weight=0.5)).dataset("synthetic:n=8")
    with pytest.raises(ConfigError, match="one must be positive"):
        ViLDOptions(text_weight=0, image_weight=0)
    proposer = clipforge.save(_tiny(), tmp_path / "proposer.safetensors")
    task = ViLDTask(model, ViLDOptions(image_weight=0.5, proposals=str(proposer), distill_regions=3))
    ds = task.dataset("synthetic:n=6")
    teacher = model.clip.eval()
    s = ds[(0, 1)]
    assert len(s["distill_boxes"]) == len(s["distill_embeds"]) <= 3
    # the cached target of a region is CLIP's embedding of its 1x and 1.5x crops (of the unflipped image)
    plain = ds.base.__class__(ds.base.world, ds.base.mean, ds.base.std)[s["index"]]
    box = ds.boxes[s["index"]][:1]
    want = crop_embeddings(teacher, plain["image"][None], [box], [1.0, 1.5])
    torch.testing.assert_close(ds.embeds[s["index"]][:1], want, rtol=1e-4, atol=1e-5)
    # distillation_targets pads images with fewer proposals than slots
    boxes, embeds, valid = distillation_targets(_tiny(), teacher, ds.base, 3, [1.0], progress=False)
    assert boxes.shape == (6, 3, 4) and embeds.shape[:2] == (6, 3) and valid.dtype == torch.bool


def test_training_reduces_the_loss_and_detect_returns_boxes_in_image_pixels(tmp_path):
    run = prepare_run(
        "vild",
        recipe="shapes-text",
        clip="none",
        data="synthetic:n=64",
        settings={"head_dim": 64, "fpn_dim": 32},
        train={"out": str(tmp_path / "run"), "steps": 12, "batch_size": 8, "lr": 2e-3, "progress": False,
               "precision": "fp32", "log_every": 1},
    )  # fmt: skip
    from clipforge.train.loop import train

    result = train(run.task, run.dataset, run.config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/rpn_objectness", "loss/rpn_box", "loss/box", "loss/text"} <= set(lines[0])
    assert result.final_loss < lines[0]["loss"]
    model = run.model.eval()
    assert model.config.base_classes == tuple(n for n in SHAPES if n not in ("star", "hexagon"))
    wide = Image.new("RGB", (160, 80), (200, 200, 200))
    (det,) = detect(model, [wide], "circle,star")
    assert det.boxes.shape[1] == 4 and len(det.boxes) == len(det.scores) == len(det.classes)
    if len(det.boxes):
        assert det.boxes[:, 2].max() <= 160 and det.boxes[:, 3].max() <= 80 and det.boxes.min() >= 0
        assert set(det.classes.tolist()) <= {0, 1}
        assert np.all(np.diff(det.scores) <= 1e-6)  # best first


def test_learned_classifier_knows_only_its_classes():
    model = _tiny(classifier="learned", base_classes=("circle", "square"))
    assert model.encode_labels(["square"]).shape == (1, model.config.clip.embed_dim)
    with pytest.raises(ConfigError, match="knows only"):
        model.encode_labels(["star"])
    with pytest.raises(ConfigError, match="needs its classes"):
        _tiny(classifier="learned")


def test_detect_and_eval_commands(tmp_path, capsys):
    from clipforge.cli import main

    model = _tiny()
    path = clipforge.save(model, tmp_path / "vild.safetensors")
    world = SyntheticWorld(2, 64, "val", 0)
    images = []
    for i in range(2):
        images.append(tmp_path / f"scene{i}.png")
        world[i].image.save(images[-1])
    assert main(["detect", *map(str, images), "--model", str(path), "--labels", "circle,star", "--out",
                 str(tmp_path / "det"), "--min-score", "0"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert [c["name"] for c in report["categories"]] == ["circle", "star"]
    assert (tmp_path / "det" / "scene0.boxes.png").is_file()
    assert all(d["image_id"] in (1, 2) and len(d["bbox"]) == 4 for d in report["detections"])
    capsys.readouterr()
    assert main(["segment", str(images[0]), "--model", str(path), "--labels", "a,b"]) != 0
    assert "holds a vild model, not a segmenting system" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(path), "--task", "detection", "--data", "synthetic:n=6", "--novel",
                 "star,hexagon", "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())["metrics"]
    assert {"AP", "AP50", "AR100", "novel_ap", "base_ap", "per_class_ap"} <= set(metrics)
    assert -1 <= metrics["novel_ap"] <= 1


def test_evaluate_detection_rejects_label_count_mismatch():
    with pytest.raises(ConfigError, match="texts for 8 categories"):
        evaluate_detection(_tiny(), "synthetic:n=2", labels="a,b", progress=False)


def test_coco_folder_round_trip_and_corrupt_images(tmp_path):
    from clipforge.cli import main
    from clipforge.errors import ImageError

    assert main(["data", "--format", "coco", "--n", "6", "--split", "val", "--out", str(tmp_path / "coco")]) == 0
    ann = tmp_path / "coco" / "instances.json"
    mean, std = (0.0,) * 3, (1.0,) * 3
    from_files = detection_dataset(str(ann), 64, mean, std)
    rendered = SyntheticDetection(SyntheticWorld(6, 64, "val", 0), mean, std)
    assert [c["name"] for c in from_files.categories] == list(SHAPES)
    for i in range(6):
        a, b = from_files[i], rendered[i]
        torch.testing.assert_close(a["boxes"], b["boxes"])
        assert a["labels"].tolist() == b["labels"].tolist() and a["image_id"] == i + 1
    # a non-square image is letterboxed: boxes scale with it, padding at the right/bottom
    big = Image.open(tmp_path / "coco" / "images" / "000000.png").resize((128, 96))
    big.save(tmp_path / "coco" / "images" / "000000.png")
    coco = json.loads(ann.read_text())
    for a in coco["annotations"]:
        if a["image_id"] == 1:
            a["bbox"] = [a["bbox"][0] * 2, a["bbox"][1] * 1.5, a["bbox"][2] * 2, a["bbox"][3] * 1.5]
    ann.write_text(json.dumps(coco))
    s = detection_dataset(str(ann), 64, mean, std)[0]
    assert s["scale"] == 0.5 and s["image"][:, 48:, :].abs().max() == 0  # 128x96 -> 64x48, padded below
    # a damaged image: training skips it (counted), evaluation stops naming it
    (tmp_path / "coco" / "images" / "000002.png").write_bytes(b"not a png")
    train_ds = detection_dataset(str(ann), 64, mean, std, train=True)
    assert train_ds[2]["skipped"] == 1 and train_ds[2]["index"] == 3
    with pytest.raises(ImageError, match="000002.png"):
        detection_dataset(str(ann), 64, mean, std)[2]


@pytest.mark.slow
@pytest.mark.parametrize("clip_name, preset", [("RN50", "vild-rn50"), ("ViT-B-32", "vild-vit-b-32")])
def test_builds_on_openai_architectures(clip_name, preset):
    """What a user with OpenAI's weights runs (`--clip RN50`): random weights of the same shapes here."""
    from clipforge import create_model

    torch.manual_seed(0)
    clip = create_model(clip_name)
    model = ViLD.from_clip(SYSTEM.preset(preset), clip).eval()
    assert torch.equal(model.clip.visual.state_dict()["conv1.weight"], clip.visual.state_dict()["conv1.weight"])
    x = torch.randn(1, 3, 224, 224)
    pyramid = model.pyramid(x)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(224 // s, 224 // s) for s in model.config.strides]
    assert all(p.shape[1] == 256 for p in pyramid)
    (det,) = detect(model, [Image.new("RGB", (300, 200), (90, 120, 150))], "dog,cat")
    assert det.boxes.shape[1] == 4 and len(det.boxes) <= model.config.detections


def test_configurations_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="consecutive"):
        _tiny(levels=(2, 4))
    with pytest.raises(ConfigError, match="second head learns only from ViLD-image"):
        ViLDTask(_tiny(ensemble=True), ViLDOptions())
    with pytest.raises(ConfigError, match="learned classifier cannot take image_weight"):
        ViLDTask(_tiny(classifier="learned", base_classes=("circle",)), ViLDOptions(image_weight=0.5))
