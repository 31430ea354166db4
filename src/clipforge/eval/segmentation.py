"""Dense metrics: one confusion matrix gives mIoU, per-class IoU, pixel accuracy and FB-IoU.

Pure functions of label maps, so they score any model's output and a user's own PNG predictions
(`clipforge eval --task segmentation --pred DIR --gt DIR --classes FILE`). Pixels whose ground
truth is `ignore_index` (255 in VOC's masks: object boundaries, "void") are left out everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ImageError

IGNORE_INDEX = 255


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    `pred` and `target` are integer label maps of one shape (numpy arrays or tensors); target pixels
    equal to `ignore_index` are skipped, and a label outside [0, num_classes) is an error."""
    pred, target = _numpy(pred), _numpy(target)
    if pred.shape != target.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground truth shape {target.shape}")
    keep = target != ignore_index
    p, t = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    for name, labels in (("ground truth", t), ("prediction", p)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0]
            raise DataError(f"{name} label {bad} is outside the {num_classes} classes (0..{num_classes - 1})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Intersection over union of each class; NaN for a class absent from both prediction and truth."""
    confusion = np.asarray(confusion, dtype=np.float64)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def fb_iou(confusion: np.ndarray, background: int = 0) -> float:
    """Foreground-background IoU: every class but `background` merged into one foreground, then the
    mean of the two IoUs (HSNet's and LSeg's FB-IoU when the matrix sums their per-class episodes)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    fg = np.ones(len(confusion), dtype=bool)
    fg[background] = False
    merged = np.array(
        [
            [confusion[~fg][:, ~fg].sum(), confusion[~fg][:, fg].sum()],
            [confusion[fg][:, ~fg].sum(), confusion[fg][:, fg].sum()],
        ]
    )
    return float(np.nanmean(iou_per_class(merged)))


def segmentation_scores(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU (over classes present in prediction or truth), per-class IoU, pixel accuracy, mean class
    accuracy and FB-IoU (class 0 as background) of a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    iou = iou_per_class(confusion)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(confusion))]
    if len(names) != len(confusion):
        raise DataError(f"{len(names)} class names for a {len(confusion)}-class confusion matrix")
    total = confusion.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        class_acc = np.diag(confusion) / confusion.sum(1)
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(np.diag(confusion).sum() / total) if total else float("nan"),
        "mean_class_accuracy": float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else float("nan"),
        "fb_iou": fb_iou(confusion) if len(confusion) > 1 else float("nan"),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "pixels": int(total),
    }


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------- files on disk
def read_class_names(path: str | Path) -> list[str]:
    """One class name per line; line i names mask value i (blank lines and `#` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class-name list {path} does not exist (one name per line; line i is mask value i)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise DataError(f"{path} names no classes")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"{path} names {len(names)} classes; indexed PNG masks hold at most {IGNORE_INDEX}")
    return names


def read_mask(path: str | Path) -> np.ndarray:
    """An indexed (palette) or greyscale PNG as an (H, W) array of class indices."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode, mask = im.mode, np.asarray(im).astype(np.int64)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read mask {path}: {e}") from None
    if mode not in ("P", "L", "I", "I;16"):
        raise DataError(f"{path}: a mask must be an indexed or greyscale PNG of class indices, not {mode}")
    return mask


def write_mask(mask: np.ndarray, path: str | Path, palette: Sequence[int] | None = None) -> None:
    """Write an (H, W) class-index map as an indexed PNG (VOC's palette unless one is given)."""
    from PIL import Image

    from .._io import atomic_write

    im = Image.fromarray(np.asarray(mask, dtype=np.uint8), "P")
    im.putpalette(list(palette) if palette is not None else voc_palette())
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (bit-interleaved class index), flat RGB."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def score_folders(pred_dir: str | Path, gt_dir: str | Path, classes: str | Path | Sequence[str]) -> dict[str, Any]:
    """Score every ground-truth PNG in `gt_dir` against the prediction PNG of the same name in
    `pred_dir`; a missing or differently sized prediction is an error naming the file."""
    names = read_class_names(classes) if isinstance(classes, (str, Path)) else list(classes)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not d.is_dir():
            raise DataError(f"{what} folder {d} does not exist")
    gts = sorted(gt_dir.glob("*.png"))
    if not gts:
        raise DataError(f"no ground-truth .png masks in {gt_dir}")
    missing = [g.name for g in gts if not (pred_dir / g.name).is_file()]
    if missing:
        raise DataError(f"{len(missing)} ground-truth masks have no prediction in {pred_dir}, e.g. {missing[0]}")
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    for g in gts:
        truth, pred = read_mask(g), read_mask(pred_dir / g.name)
        if truth.shape != pred.shape:
            raise DataError(f"{g.name}: prediction is {pred.shape[::-1]} pixels, ground truth {truth.shape[::-1]}")
        try:
            confusion += confusion_matrix(pred, truth, len(names))
        except DataError as e:
            raise DataError(f"{g.name}: {e}") from None
    return {**segmentation_scores(confusion, names), "images": len(gts)}
