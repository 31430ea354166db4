"""COCO-style box detection metrics: the 12 summary numbers of the COCO evaluation (AP over IoU
0.50:0.05:0.95, AP50, AP75, AP by object size, AR at 1/10/100 detections and by size), per-class AP, and
COCO JSON in and out.

The procedure is COCO's own, step for step, so the numbers equal pycocotools' on the same files (the
tests check all 12 to 1e-6): per image and class the detections are sorted by score (at most 100 kept)
and greedily matched to the best-IoU unmatched ground truth at each threshold, crowd boxes absorb
detections without counting (IoU over the detection's area), boxes outside an area range are ignored,
precision is made monotone and read at 101 recall points."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

STATS = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREAS = {"all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
MAX_DETS = (1, 10, 100)


def load_json(source: str | Path | Mapping | list, what: str) -> Any:
    """A parsed JSON document from a path (or the object itself)."""
    if isinstance(source, (Mapping, list)):
        return source
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} file {path} is not valid JSON: {e}") from None


def load_coco(source: str | Path | Mapping) -> dict:
    """A COCO instances file (path or dict), checked: `images` with `id`, `categories` with `id` and
    `name`, `annotations` with `image_id`, `category_id`, `bbox` [x, y, w, h] (`area` defaults to w h,
    `iscrowd` to 0)."""
    data = load_json(source, "ground-truth")
    where = source if isinstance(source, (str, Path)) else "the ground truth"
    if not isinstance(data, Mapping) or "images" not in data or "categories" not in data:
        raise DataError(f"{where} is not a COCO instances file: it needs 'images', 'categories' and 'annotations'")
    try:
        images = {int(im["id"]): im for im in data["images"]}
        categories = {int(c["id"]): c for c in data["categories"]}
        anns = []
        for a in data.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            anns.append(
                {
                    **a,
                    "image_id": int(a["image_id"]),
                    "category_id": int(a["category_id"]),
                    "bbox": [x, y, w, h],
                    "area": float(a.get("area", w * h)),
                    "iscrowd": int(a.get("iscrowd", 0)),
                    "id": int(a.get("id", len(anns) + 1)),
                }
            )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: malformed COCO entry ({type(e).__name__}: {e})") from None
    for a in anns:
        if a["image_id"] not in images:
            raise DataError(f"{where}: annotation {a['id']} is on image {a['image_id']}, which 'images' does not list")
    return {**data, "images": list(images.values()), "categories": list(categories.values()), "annotations": anns}


def load_detections(source: str | Path | list, gt: Mapping) -> list[dict]:
    """COCO results (a path or list of {image_id, category_id, bbox [x, y, w, h], score}), checked against
    the ground truth's images (a detection on an unknown image is an error, as in COCO's tools)."""
    data = load_json(source, "detections")
    where = source if isinstance(source, (str, Path)) else "the detections"
    if not isinstance(data, list):
        raise DataError(f"{where} must be a JSON list of {{image_id, category_id, bbox, score}} (COCO results)")
    images = {int(im["id"]) for im in gt["images"]}
    out = []
    try:
        for i, d in enumerate(data):
            x, y, w, h = (float(v) for v in d["bbox"])
            out.append(
                {
                    "image_id": int(d["image_id"]),
                    "category_id": int(d["category_id"]),
                    "bbox": [x, y, w, h],
                    "score": float(d["score"]),
                    "area": w * h,
                    "id": i + 1,
                }
            )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: malformed detection ({type(e).__name__}: {e})") from None
    unknown = {d["image_id"] for d in out} - images
    if unknown:
        raise DataError(f"{where}: detections on images the ground truth does not list: {sorted(unknown)[:5]}")
    return out


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes; against a crowd box, intersection over the detection's own area."""
    dx0, dy0, dw, dh = (dt[:, None, i] for i in range(4))
    gx0, gy0, gw, gh = (gt[None, :, i] for i in range(4))
    w = np.minimum(dx0 + dw, gx0 + gw) - np.maximum(dx0, gx0)
    h = np.minimum(dy0 + dh, gy0 + gh) - np.maximum(dy0, gy0)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = np.where(crowd[None, :], dw * dh, dw * dh + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _match(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray, gt_ids: np.ndarray):
    """COCO's greedy matching at every threshold: (dt_match (T, D) matched gt id or 0, dt_ignore (T, D))."""
    T, (D, G) = len(IOU_THRESHOLDS), ious.shape
    dt_match = np.zeros((T, D), dtype=np.int64)
    dt_ignore = np.zeros((T, D), dtype=bool)
    gt_taken = np.zeros((T, G), dtype=bool)
    for t, thr in enumerate(IOU_THRESHOLDS):
        for d in range(D):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(G):
                if gt_taken[t, g] and not crowd[g]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                    break  # ground truth is sorted real-first: never trade a real match for an ignored one
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m == -1:
                continue
            dt_ignore[t, d] = gt_ignore[m]
            dt_match[t, d] = gt_ids[m]  # COCO keeps the matched id; an id of 0 reads as "unmatched" there too
            gt_taken[t, m] = True
    return dt_match, dt_ignore


def _evaluate_image(gts: list[dict], dts: list[dict]) -> list[dict | None]:
    """Per area range: the sorted detections' scores, matches and ignore flags, and the gt ignore flags."""
    if not gts and not dts:
        return [None] * len(AREAS)
    order = np.argsort([-d["score"] for d in dts], kind="mergesort")
    dts = [dts[i] for i in order][: MAX_DETS[-1]]
    crowd_all = np.array([g["iscrowd"] for g in gts], dtype=bool)
    ious_all = (
        _iou(np.array([d["bbox"] for d in dts], dtype=np.float64), np.array([g["bbox"] for g in gts]), crowd_all)
        if dts and gts
        else np.zeros((len(dts), len(gts)))
    )
    dt_area = np.array([d["area"] for d in dts], dtype=np.float64)
    out = []
    for lo, hi in AREAS.values():
        ignore = np.array([bool(g["iscrowd"]) or g["area"] < lo or g["area"] > hi for g in gts], dtype=bool)
        gorder = np.argsort(ignore, kind="mergesort")
        gt_ignore, crowd = ignore[gorder], crowd_all[gorder]
        gt_ids = np.array([gts[i]["id"] for i in gorder], dtype=np.int64)
        dt_match, dt_ignore = _match(ious_all[:, gorder], gt_ignore, crowd, gt_ids)
        outside = (dt_area < lo) | (dt_area > hi)
        dt_ignore |= (dt_match == 0) & outside[None, :]
        out.append(
            {
                "scores": np.array([d["score"] for d in dts], dtype=np.float64),
                "match": dt_match,
                "dt_ignore": dt_ignore,
                "gt_ignore": gt_ignore,
            }
        )
    return out


def _accumulate(per_image: list[list[dict | None]]) -> tuple[np.ndarray, np.ndarray]:
    """precision (T, R, A, M) and recall (T, A, M) of one class (-1 where it has no real ground truth)."""
    T, R, A, M = len(IOU_THRESHOLDS), len(RECALL_POINTS), len(AREAS), len(MAX_DETS)
    precision = -np.ones((T, R, A, M))
    recall = -np.ones((T, A, M))
    for a in range(A):
        evals = [e[a] for e in per_image if e[a] is not None]
        if not evals:
            continue
        gt_ignore = np.concatenate([e["gt_ignore"] for e in evals])
        npig = int(np.count_nonzero(~gt_ignore))
        if npig == 0:
            continue
        for m, max_det in enumerate(MAX_DETS):
            scores = np.concatenate([e["scores"][:max_det] for e in evals])
            order = np.argsort(-scores, kind="mergesort")
            match = np.concatenate([e["match"][:, :max_det] for e in evals], axis=1)[:, order]
            ignore = np.concatenate([e["dt_ignore"][:, :max_det] for e in evals], axis=1)[:, order]
            tps = np.cumsum((match != 0) & ~ignore, axis=1).astype(float)
            fps = np.cumsum((match == 0) & ~ignore, axis=1).astype(float)
            for t in range(T):
                tp, fp = tps[t], fps[t]
                nd = len(tp)
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                recall[t, a, m] = rc[-1] if nd else 0
                pr = np.maximum.accumulate(pr[::-1])[::-1] if nd else pr  # monotone from the right
                idx = np.searchsorted(rc, RECALL_POINTS, side="left")
                q = np.zeros(R)
                ok = idx < nd
                q[ok] = pr[idx[ok]]
                precision[t, :, a, m] = q
    return precision, recall


def _mean(values: np.ndarray) -> float:
    v = values[values > -1]
    return float(np.mean(v)) if v.size else -1.0


def coco_evaluate(
    gt: str | Path | Mapping,
    detections: str | Path | list,
    categories: Iterable[int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """COCO box evaluation of `detections` against `gt` (files or parsed JSON), over `categories` (ids;
    default every category the ground truth lists): the 12 summary numbers under STATS names, plus
    `per_class_ap` {name: AP} (-1 where a class has no ground truth, as COCO prints)."""
    gt = load_coco(gt)
    dts = load_detections(detections, gt)
    cats = sorted(int(c) for c in categories) if categories is not None else sorted(c["id"] for c in gt["categories"])
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    unknown = set(cats) - set(names)
    if unknown:
        raise DataError(f"categories {sorted(unknown)} are not in the ground truth's 'categories'")
    images = sorted({int(im["id"]) for im in gt["images"]})
    gts_by, dts_by = defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        gts_by[a["image_id"], a["category_id"]].append(a)
    for d in dts:
        dts_by[d["image_id"], d["category_id"]].append(d)
    T, R, A, M = len(IOU_THRESHOLDS), len(RECALL_POINTS), len(AREAS), len(MAX_DETS)
    precision = -np.ones((T, R, len(cats), A, M))
    recall = -np.ones((T, len(cats), A, M))
    work = cats
    if progress:
        from tqdm.auto import tqdm

        work = tqdm(cats, desc="COCO eval", unit="class")
    for k, c in enumerate(work):
        per_image = [_evaluate_image(gts_by.get((i, c), []), dts_by.get((i, c), [])) for i in images]
        precision[:, :, k], recall[:, k] = _accumulate(per_image)
    t50, t75 = np.where(IOU_THRESHOLDS == 0.5)[0], np.where(IOU_THRESHOLDS == 0.75)[0]
    area = {name: i for i, name in enumerate(AREAS)}
    m100 = MAX_DETS.index(100)
    stats = [
        _mean(precision[:, :, :, area["all"], m100]),
        _mean(precision[t50][:, :, :, area["all"], m100]),
        _mean(precision[t75][:, :, :, area["all"], m100]),
        _mean(precision[:, :, :, area["small"], m100]),
        _mean(precision[:, :, :, area["medium"], m100]),
        _mean(precision[:, :, :, area["large"], m100]),
        _mean(recall[:, :, area["all"], MAX_DETS.index(1)]),
        _mean(recall[:, :, area["all"], MAX_DETS.index(10)]),
        _mean(recall[:, :, area["all"], m100]),
        _mean(recall[:, :, area["small"], m100]),
        _mean(recall[:, :, area["medium"], m100]),
        _mean(recall[:, :, area["large"], m100]),
    ]
    out: dict[str, Any] = dict(zip(STATS, stats))
    out["per_class_ap"] = {names[c]: _mean(precision[:, :, k, area["all"], m100]) for k, c in enumerate(cats)}
    out["per_class_ap50"] = {names[c]: _mean(precision[t50][:, :, k, area["all"], m100]) for k, c in enumerate(cats)}
    out["images"], out["detections"] = len(images), len(dts)
    return out


def write_coco_results(detections: Iterable[Mapping], path: str | Path) -> Path:
    """Write COCO results JSON ({image_id, category_id, bbox [x, y, w, h], score} per box) atomically."""
    from .._io import atomic_write

    rows = [
        {
            "image_id": int(d["image_id"]),
            "category_id": int(d["category_id"]),
            "bbox": [round(float(v), 3) for v in d["bbox"]],
            "score": round(float(d["score"]), 5),
        }
        for d in detections
    ]
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(rows)))
    return Path(path)
