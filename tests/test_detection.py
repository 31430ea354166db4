"""The shared detection toolkit: box ops and coding, NMS, RoIAlign, anchors and matching against
hand-computed cases, and COCO AP against pycocotools on the same files."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch

from clipforge.detection import (
    BoxCoder,
    Matcher,
    batched_nms,
    box_convert,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    grid_anchors,
    multilevel_roi_align,
    nms,
    remove_small_boxes,
    roi_align,
    roi_levels,
    sample_balanced,
)
from clipforge.errors import DataError
from clipforge.eval.detection import STATS, coco_evaluate, write_coco_results

# ----------------------------------------------------------------------------------------- boxes


def test_box_convert_round_trips_and_hand_values():
    b = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert box_convert(b, "xyxy", "xywh").tolist() == [[1.0, 2.0, 4.0, 8.0]]
    assert box_convert(b, "xyxy", "cxcywh").tolist() == [[3.0, 6.0, 4.0, 8.0]]
    r = torch.rand(50, 4) * 100
    r[:, 2:] += r[:, :2]
    for f in ("xywh", "cxcywh"):
        torch.testing.assert_close(box_convert(box_convert(r, "xyxy", f), f, "xyxy"), r)


def test_iou_and_giou_hand_cases():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    iou = box_iou(a, b)
    assert iou[0, 0].item() == pytest.approx(50 / 150)
    assert iou[1, 1].item() == 0 and iou[0, 2].item() == 0  # disjoint; empty box gives 0, not NaN
    giou = generalized_box_iou(a[1:], b[1:2])
    assert giou.item() == pytest.approx(0 - (3 - 2) / 3)  # hull 3, union 2
    assert generalized_box_iou(a, a).diagonal().tolist() == [1.0, 1.0]


def test_clip_and_remove_small():
    b = torch.tensor([[-5.0, 3.0, 120.0, 50.0], [10.0, 10.0, 11.0, 30.0]])
    assert clip_boxes(b, (40, 100)).tolist() == [[0.0, 3.0, 100.0, 40.0], [10.0, 10.0, 11.0, 30.0]]
    assert remove_small_boxes(b, 2.0).tolist() == [0]


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coding_round_trips(weights):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(100, 4, generator=g) * 50
    ref[:, 2:] += ref[:, :2] + 1
    boxes = torch.rand(100, 4, generator=g) * 50
    boxes[:, 2:] += boxes[:, :2] + 1
    coder = BoxCoder(weights)
    codes = coder.encode(boxes, ref)
    torch.testing.assert_close(coder.decode(codes, ref), boxes, rtol=1e-5, atol=1e-4)
    # a reference box codes to zeros against itself
    assert coder.encode(ref, ref).abs().max().item() == 0


def test_nms_hand_case():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    # IoU(0, 1) = 81 / 119 = 0.68; IoU(0, 3) = 0.9; IoU(1, 3) = 72 / 118 = 0.61
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.65).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 2, 3]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []
    # classes never suppress each other
    classes = torch.tensor([0, 1, 0, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [1, 0, 2]


def _roi_align_reference(feat, box, out, scale, s):
    """The common CPU kernel's RoIAlign (aligned=True), one scalar sample at a time."""
    C, H, W = feat.shape
    x0, y0, x1, y1 = (v * scale - 0.5 for v in box)
    bw, bh = (x1 - x0) / out, (y1 - y0) / out
    res = np.zeros((C, out, out))

    def bilinear(y, x):
        if y < -1 or y > H or x < -1 or x > W:
            return np.zeros(C)
        y, x = max(y, 0.0), max(x, 0.0)
        yl, xl = int(y), int(x)
        yh, xh = yl + 1, xl + 1
        if yl >= H - 1:
            yl = yh = H - 1
            y = float(yl)
        if xl >= W - 1:
            xl = xh = W - 1
            x = float(xl)
        ly, lx = y - yl, x - xl
        return (
            (1 - ly) * (1 - lx) * feat[:, yl, xl]
            + (1 - ly) * lx * feat[:, yl, xh]
            + ly * (1 - lx) * feat[:, yh, xl]
            + ly * lx * feat[:, yh, xh]
        )

    for py in range(out):
        for px in range(out):
            acc = np.zeros(C)
            for iy in range(s):
                for ix in range(s):
                    acc += bilinear(y0 + py * bh + (iy + 0.5) * bh / s, x0 + px * bw + (ix + 0.5) * bw / s)
            res[:, py, px] = acc / (s * s)
    return res


def test_roi_align_hand_case_on_a_linear_map():
    """Bilinear sampling of f(x, y) = x + 10 y is exact, so each bin is f at the bin's centre (minus the
    half-pixel of `aligned`)."""
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    feat = (xs + 10 * ys)[None, None]
    out = roi_align(feat, [torch.tensor([[2.0, 2.0, 6.0, 6.0]])], 2, sampling_ratio=2)
    # bin centres 3 and 5, minus 0.5: x 2.5, 4.5; y 2.5, 4.5
    assert out[0, 0].tolist() == [[27.5, 29.5], [47.5, 49.5]]
    # far outside the map: every sample counts 0
    assert roi_align(feat, [torch.tensor([[30.0, 30.0, 40.0, 40.0]])], 2).abs().max().item() == 0


def test_roi_align_matches_the_reference_kernel_everywhere():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 9, 11, generator=g)
    boxes = [
        torch.tensor([[-6.0, -4.0, 10.0, 30.0], [3.0, 5.0, 40.0, 33.0], [0.0, 0.0, 44.0, 36.0]]),
        torch.tensor([[10.0, 10.0, 11.0, 11.5], [38.0, 30.0, 60.0, 50.0]]),
    ]
    got = roi_align(feat, boxes, 3, spatial_scale=0.25, sampling_ratio=2)
    i = 0
    for b, bx in enumerate(boxes):
        for box in bx.tolist():
            want = _roi_align_reference(feat[b].double().numpy(), box, 3, 0.25, 2)
            np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-5, atol=1e-5)
            i += 1


def test_roi_align_takes_the_rois_tensor_form_and_multilevel_routes_by_size():
    feat = torch.randn(1, 2, 16, 16)
    boxes = torch.tensor([[0.0, 1.0, 1.0, 9.0, 9.0]])
    torch.testing.assert_close(roi_align(feat, boxes, 2, 0.5), roi_align(feat, [boxes[:, 1:]], 2, 0.5))
    b = torch.tensor([[0.0, 0, 16, 16], [0, 0, 200, 200], [0, 0, 1000, 1000]])
    assert roi_levels(b, 2, 5).tolist() == [2, 3, 5]  # 4 + log2(16/224) < 2 -> 2; 200 -> 3; 1000 -> 6 -> 5
    p2, p3 = torch.randn(1, 2, 64, 64), torch.randn(1, 2, 32, 32)
    mixed = multilevel_roi_align([p2, p3], [4, 8], [b[:2]], 2)
    torch.testing.assert_close(mixed[0], roi_align(p2, [b[:1]], 2, 0.25)[0])
    torch.testing.assert_close(mixed[1], roi_align(p3, [b[1:2]], 2, 0.125)[0])


# --------------------------------------------------------------------------------------- anchors


def test_grid_anchors_centres_and_shapes():
    a = grid_anchors((2, 3), 8, (16.0,), (0.5, 1.0, 2.0))
    assert a.shape == (2 * 3 * 3, 4)
    centres = (a[:, :2] + a[:, 2:]) / 2
    assert centres[0].tolist() == [4.0, 4.0] and centres[-1].tolist() == [20.0, 12.0]
    wh = a[:3, 2:] - a[:3, :2]
    torch.testing.assert_close(wh[:, 0] * wh[:, 1], torch.full((3,), 256.0))
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]))


def test_matcher_thresholds_and_low_quality_matches():
    gt = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    cand = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 14], [0, 0, 10, 30], [48, 48, 68, 68], [100, 100, 110, 110]])
    labels, matched = Matcher(0.7, 0.3)(gt, cand)
    # IoUs with their best gt: 1, 10/14 = 0.71, 1/3, 100/400 = 0.25, 0
    assert labels.tolist() == [1, 1, -1, 0, 0]
    assert matched[:2].tolist() == [0, 0]
    labels, matched = Matcher(0.7, 0.3, allow_low_quality=True)(gt, cand)
    assert labels.tolist() == [1, 1, -1, 1, 0] and matched[3].item() == 1  # the second gt claims its best
    labels, _ = Matcher(0.7, 0.3)(gt[:0], cand)
    assert labels.tolist() == [0] * 5


def test_balanced_sampling_caps_positives():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    pos, neg = sample_balanced(labels, 16, 0.25, torch.Generator().manual_seed(0))
    assert len(pos) == 4 and len(neg) == 12
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()


# ---------------------------------------------------------------------------------------- COCO AP


def _random_coco(seed: int, n_images: int = 12, crowd: float = 0.15):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in range(n_images)]
    cats = [{"id": c * 3 + 1, "name": f"class{c}"} for c in range(4)]
    anns, dets = [], []
    for im in images:
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(2, 150, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 200 - h)
            c = cats[rng.integers(4)]["id"]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": float(w * h * rng.uniform(0.5, 1)),
                    "iscrowd": int(rng.random() < crowd),
                }
            )
            for _ in range(rng.integers(0, 4)):  # near-hits, sometimes of the wrong class
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                dets.append(
                    {
                        "image_id": im["id"],
                        "category_id": c if rng.random() < 0.8 else cats[rng.integers(4)]["id"],
                        "bbox": [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])],
                        "score": float(rng.random()),
                    }
                )
        for _ in range(rng.integers(0, 30)):  # false positives of every size
            w, h = rng.uniform(2, 100, 2)
            x, y = rng.uniform(0, 150, 2)
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": cats[rng.integers(4)]["id"],
                    "bbox": [x, y, w, h],
                    "score": float(rng.random()),
                }
            )
    return {"images": images, "categories": cats, "annotations": anns}, dets


def _pycocotools(gt, dets, cats=None):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        if dets:
            d = g.loadRes(copy.deepcopy(dets))
        else:  # pycocotools' loadRes cannot take an empty list: an empty results set by hand
            d = COCO()
            d.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            d.createIndex()
        e = COCOeval(g, d, "bbox")
        if cats is not None:
            e.params.catIds = cats
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def _assert_equal_to_pycocotools(gt, dets, cats=None):
    want = _pycocotools(gt, dets, cats)
    got = coco_evaluate(gt, dets, categories=cats)
    np.testing.assert_allclose([got[s] for s in STATS], want, rtol=0, atol=1e-6)
    return got


@pytest.mark.parametrize("seed", range(8))
def test_coco_ap_equals_pycocotools_on_random_detections(seed):
    gt, dets = _random_coco(seed, n_images=6 + 3 * seed)
    got = _assert_equal_to_pycocotools(gt, dets)
    assert 0 < got["AP"] < 1  # a real, non-degenerate case


def test_coco_ap_edge_cases_equal_pycocotools(tmp_path):
    gt, dets = _random_coco(100)
    # images with neither boxes nor detections, and detections on an image with no boxes
    gt["images"] += [{"id": 500, "width": 10, "height": 10}, {"id": 501, "width": 10, "height": 10}]
    dets.append({"image_id": 501, "category_id": 1, "bbox": [1, 1, 3, 3], "score": 0.99})
    # an image over the 100-detection cap, and a category subset
    rng = np.random.default_rng(0)
    dets += [
        {"image_id": 1, "category_id": 1, "bbox": [float(v) for v in rng.uniform(1, 100, 4)], "score": float(s)}
        for s in rng.random(300)
    ]
    _assert_equal_to_pycocotools(gt, dets)
    _assert_equal_to_pycocotools(gt, dets, cats=[4, 7])
    # no predictions at all: every number 0 where there is ground truth, -1 where a size has none
    got = _assert_equal_to_pycocotools(gt, [])
    assert got["AP"] == 0
    # only crowd boxes: nothing to find, every number -1
    crowd = copy.deepcopy(gt)
    for a in crowd["annotations"]:
        a["iscrowd"] = 1
    got = _assert_equal_to_pycocotools(crowd, dets)
    assert got["AP"] == -1
    # perfect detections score 1 on every AP number that has ground truth
    exact = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    clean = copy.deepcopy(gt)
    for a in clean["annotations"]:
        a["iscrowd"] = 0
        a["area"] = a["bbox"][2] * a["bbox"][3]
    got = _assert_equal_to_pycocotools(clean, exact)
    assert got["AP"] == pytest.approx(1.0) and got["AP50"] == pytest.approx(1.0)
    # files in, files out
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    write_coco_results(dets, tmp_path / "dets.json")
    from_files = coco_evaluate(tmp_path / "gt.json", tmp_path / "dets.json")
    assert from_files["AP"] == pytest.approx(coco_evaluate(gt, dets)["AP"], abs=1e-4)  # rounded to 3 decimals


def test_coco_eval_rejects_bad_files(tmp_path):
    gt, dets = _random_coco(1)
    with pytest.raises(DataError, match="does not list"):
        coco_evaluate(gt, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(DataError, match="malformed detection"):
        coco_evaluate(gt, [{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        coco_evaluate(tmp_path / "bad.json", dets)
    with pytest.raises(DataError, match="not a COCO instances file"):
        coco_evaluate({"annotations": []}, dets)
    with pytest.raises(DataError, match="does not exist"):
        coco_evaluate(tmp_path / "missing.json", dets)
    with pytest.raises(DataError, match="not in the ground truth"):
        coco_evaluate(gt, dets, categories=[2])


def test_eval_cli_scores_detection_files(tmp_path, capsys):
    from clipforge.cli import main

    gt, dets = _random_coco(3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "result.json"
    rc = main(
        ["eval", "--task", "detection", "--pred", str(tmp_path / "dets.json"), "--gt", str(tmp_path / "gt.json"),
         "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| AP |" in printed and "| AR_large |" in printed
    metrics = json.loads(out.read_text())["metrics"]
    want = _pycocotools(gt, dets)
    np.testing.assert_allclose([metrics[s] for s in STATS], want, atol=1e-6)
    assert math.isfinite(metrics["per_class_ap"]["class0"])
