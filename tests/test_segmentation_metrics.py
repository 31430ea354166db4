"""Dense metrics against scikit-learn on random masks with ignore pixels, the PNG folder scorer behind
`clipforge eval --task segmentation --pred --gt`, and the VOC/ADE20K folder reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, jaccard_score
from sklearn.metrics import confusion_matrix as sk_confusion

from clipforge.cli import main
from clipforge.errors import ConfigError, DataError, ImageError
from clipforge.eval.segmentation import (
    IGNORE_INDEX,
    confusion_matrix,
    fb_iou,
    read_mask,
    score_folders,
    segmentation_scores,
    write_mask,
)


def _random_masks(seed: int, k: int, shape=(3, 17, 23)):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, shape)
    pred = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, k, shape))  # mostly right
    truth[rng.random(shape) < 0.1] = IGNORE_INDEX  # boundaries / void
    return pred, truth


def _sklearn_scores(pred, truth, k):
    keep = truth != IGNORE_INDEX
    p, t = pred[keep], truth[keep]
    present = [c for c in range(k) if (p == c).any() or (t == c).any()]
    iou = jaccard_score(t, p, labels=present, average=None, zero_division=0)
    fb = jaccard_score(t != 0, p != 0, labels=[False, True], average="macro")
    return sk_confusion(t, p, labels=list(range(k))), dict(zip(present, iou)), accuracy_score(t, p), fb


@pytest.mark.parametrize("seed, k", [(0, 2), (1, 5), (2, 9), (3, 21)])
def test_scores_equal_sklearn_on_random_masks_with_ignore_pixels(seed, k):
    pred, truth = _random_masks(seed, k)
    conf = confusion_matrix(pred, truth, k)
    sk_conf, sk_iou, sk_acc, sk_fb = _sklearn_scores(pred, truth, k)
    np.testing.assert_array_equal(conf, sk_conf)
    scores = segmentation_scores(conf, [f"c{i}" for i in range(k)])
    for c, v in sk_iou.items():
        assert scores["per_class_iou"][f"c{c}"] == pytest.approx(v, abs=1e-12)
    assert scores["miou"] == pytest.approx(np.mean(list(sk_iou.values())), abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(sk_acc, abs=1e-12)
    assert scores["fb_iou"] == pytest.approx(sk_fb, abs=1e-12)
    assert scores["pixels"] == int((truth != IGNORE_INDEX).sum())


def test_absent_classes_are_left_out_of_the_mean_and_hand_computed_case():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, IGNORE_INDEX]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])  # the ignored pixel's prediction (2) never counts
    s = segmentation_scores(confusion_matrix(pred, truth, 4))
    # class 0: I = 3, U = 3 + 1 (a 1 predicted 0) + 1 (a 0 predicted 1) = 5; class 1: I = 2, U = 4
    assert s["per_class_iou"] == {"0": 3 / 5, "1": 2 / 4, "2": None, "3": None}
    assert s["miou"] == pytest.approx((0.6 + 0.5) / 2)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert fb_iou(np.array([[5, 0], [0, 0]])) == 1.0  # only background, predicted right


def test_bad_labels_and_shapes_are_clear_errors():
    with pytest.raises(DataError, match="outside the 3 classes"):
        confusion_matrix(np.array([[3]]), np.array([[0]]), 3)
    with pytest.raises(DataError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def _voc_folder(root, n=4, k=4, size=(20, 14), seed=0):
    """A VOC-layout folder: JPEGImages, SegmentationClass (indexed PNG, 255 borders), classes.txt."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "classes.txt").write_text("\n".join(["background", "circle", "square", "star"][:k]) + "\n")
    for i in range(n):
        mask = rng.integers(0, k, size[::-1])
        mask[0, :] = IGNORE_INDEX
        write_mask(mask, root / "SegmentationClass" / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"img{i}.jpg"
        )
    return root


def test_eval_segmentation_scores_a_voc_folder_of_predictions(tmp_path, capsys):
    gt = _voc_folder(tmp_path / "voc")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    rng = np.random.default_rng(1)
    preds, truths = [], []
    for p in sorted((gt / "SegmentationClass").glob("*.png")):
        truth = read_mask(p)
        assert truth.max() == IGNORE_INDEX and Image.open(p).mode == "P"  # indexed PNG round trip
        pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, truth.shape))
        pred[truth == IGNORE_INDEX] = 0
        write_mask(pred, pred_dir / p.name)
        preds.append(pred)
        truths.append(truth)
    out = tmp_path / "scores.json"
    args = ["eval", "--task", "segmentation", "--pred", str(pred_dir), "--gt", str(gt / "SegmentationClass")]
    assert main([*args, "--classes", str(gt / "classes.txt"), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    _, sk_iou, sk_acc, sk_fb = _sklearn_scores(np.stack(preds), np.stack(truths), 4)
    names = ["background", "circle", "square", "star"]
    assert metrics["images"] == 4
    assert {names[c]: v for c, v in sk_iou.items()} == pytest.approx(metrics["per_class_iou"], abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(sk_acc) and metrics["fb_iou"] == pytest.approx(sk_fb)
    assert "miou" in capsys.readouterr().out
    # predictions equal to the truth score 1
    assert score_folders(gt / "SegmentationClass", gt / "SegmentationClass", gt / "classes.txt")["miou"] == 1.0


def test_eval_segmentation_file_errors(tmp_path, capsys):
    gt = _voc_folder(tmp_path / "voc", n=2)
    pred = tmp_path / "pred"
    pred.mkdir()
    write_mask(np.zeros((14, 20)), pred / "img0.png")
    base = [
        "eval",
        "--task",
        "segmentation",
        "--gt",
        str(gt / "SegmentationClass"),
        "--classes",
        str(gt / "classes.txt"),
    ]
    assert main([*base, "--pred", str(pred)]) == 2
    assert "have no prediction" in capsys.readouterr().err
    write_mask(np.zeros((10, 20)), pred / "img1.png")
    assert main([*base, "--pred", str(pred)]) == 2
    assert "prediction is (20, 10) pixels" in capsys.readouterr().err
    write_mask(np.full((14, 20), 7), pred / "img1.png")  # class 7 of 4
    assert main([*base, "--pred", str(pred)]) == 2
    assert "img1.png" in capsys.readouterr().err
    assert main(["eval", "--task", "segmentation", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "--classes" in capsys.readouterr().err
    Image.new("RGB", (20, 14)).save(pred / "img0.png")  # an RGB picture is not a mask
    assert main([*base, "--pred", str(pred)]) == 2
    assert "indexed or greyscale" in capsys.readouterr().err
    assert main(["eval", "--task", "segmentation"]) == 2
    assert "--pred/--gt" in capsys.readouterr().err


def test_segmentation_folder_reader(tmp_path):
    from clipforge.data.segmentation import segmentation_dataset

    root = _voc_folder(tmp_path / "voc", n=3)
    ds = segmentation_dataset(str(root), 16, (0.5,) * 3, (0.5,) * 3)
    assert len(ds) == 3 and ds.classes == ["background", "circle", "square", "star"]
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("img1\n")
    assert len(segmentation_dataset(f"{root}:val", 16, (0.5,) * 3, (0.5,) * 3)) == 1
    write_mask(np.full((14, 20), 9), root / "SegmentationClass" / "img2.png")
    with pytest.raises(DataError, match="value 9 but 4 classes"):
        ds[2]  # evaluation names the bad file
    (root / "JPEGImages" / "img1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="img1.jpg"):
        ds[1]
    train = segmentation_dataset(str(root), 16, (0.5,) * 3, (0.5,) * 3, train=True)
    with pytest.raises(DataError, match="value 9"):  # a mask against the class list is never skipped
        train[1]
    write_mask(np.full((14, 20), 3), root / "SegmentationClass" / "img2.png")
    item = train[1]  # training skips the undecodable image for the next sample, and counts it
    assert item["skipped"] == 1 and item["mask"].shape == (16, 16) and (item["mask"] == 3).all()
    assert train[0]["skipped"] == 0
    (root / "classes.txt").unlink()
    with pytest.raises(ConfigError, match="classes.txt"):
        segmentation_dataset(str(root), 16, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="none of the segmentation layouts"):
        segmentation_dataset(str(tmp_path), 16, (0.5,) * 3, (0.5,) * 3)
