"""Images with boxes: the synthetic world's objects, and COCO instances files users have.

A detection sample is a dict {"image": (3, S, S) normalised, "boxes": (N, 4) xyxy in the S x S frame,
"labels": (N,) category ids, "image_id": int, "scale": float, "size": (width, height) as read,
"index": int, "flipped": bool, "skipped": int}. Images are letterboxed: the longer side resized to S,
the rest padded at the right/bottom with the mean colour (0 after normalising), so a box in the
original image is `box * scale` and a prediction maps back by `/ scale`. Training flips horizontally,
seeded per (epoch, index). COCO crowd boxes are left out of training targets (the evaluation ignores
detections on them). `exclude` drops the boxes of some
categories while their objects stay in the pictures: the open-vocabulary setting, where novel objects
are seen but never labelled.

`synthetic_coco(world)` writes a synthetic split as a COCO instances dict, so the same files flow
through `clipforge eval --task detection` as a user's own."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..eval.detection import load_coco
from ..transforms import image_to_tensor, load_image
from .sources import is_synthetic, sample_skipping_damaged, stable_seed, synthetic_options
from .synthetic import SHAPES, SyntheticWorld

SYNTHETIC_CATEGORIES = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]  # category id = SHAPES index + 1


def letterbox(image: Image.Image, size: int) -> tuple[Image.Image, float]:
    """`image` resized so its longer side is `size` and pasted at the top-left of a size x size canvas
    (black; callers normalise the padding to 0), and the scale applied."""
    w, h = image.size
    scale = size / max(w, h)
    if (w, h) == (size, size):
        return image, 1.0
    resized = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, (0, 0))
    return canvas, scale


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """xyxy boxes mirrored left-right in an image `width` wide."""
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), -1)


class DetectionDataset(Dataset):
    """Letterboxed images with xyxy boxes and category ids (see the module doc)."""

    categories: list[dict]

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        seed: int = 0,
        exclude: Iterable[int] = (),
    ) -> None:
        self.size, self.mean, self.std, self.train, self.seed = size, tuple(mean), tuple(std), train, seed
        self.exclude = frozenset(int(c) for c in exclude)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        """(RGB image, (N, 4) xyxy boxes in its pixels, (N,) category ids) of sample `index`."""
        raise NotImplementedError

    def image_id(self, index: int) -> int:
        """The COCO image id of sample `index`."""
        return index + 1

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        """Training skips an undecodable image for the next one and counts it; evaluation raises."""
        return sample_skipping_damaged(self._sample, key, len(self), self.train)

    def _sample(self, epoch: int, index: int) -> dict[str, Any]:
        image, boxes, labels = self.read(index)
        original = image.size
        keep = np.array([int(c) not in self.exclude for c in labels], dtype=bool)
        boxes, labels = boxes[keep], labels[keep]
        image, scale = letterbox(image, self.size)
        x = image_to_tensor(image, self.mean, self.std)
        b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale
        flipped = self.train and random.Random(stable_seed(self.seed, epoch, index)).random() < 0.5
        if flipped:
            x, b = x.flip(-1), flip_boxes(b, self.size)
        return {
            "image": x,
            "boxes": b,
            "labels": torch.as_tensor(labels, dtype=torch.long).reshape(-1),
            "image_id": self.image_id(index),
            "scale": scale,
            "size": original,  # (width, height) of the image as read
            "index": index,
            "flipped": flipped,
        }


class SyntheticDetection(DetectionDataset):
    """The synthetic world's objects as boxes; category id = SHAPES index + 1 (SYNTHETIC_CATEGORIES)."""

    categories = SYNTHETIC_CATEGORIES

    def __init__(self, world: SyntheticWorld, mean: Sequence[float], std: Sequence[float], **kwargs: Any) -> None:
        super().__init__(world.image_size, mean, std, **kwargs)
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        """The scene's image, its objects' boxes and their shapes' category ids."""
        scene = self.world[index]
        boxes = np.array([o.box for o in scene.objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([SHAPES.index(o.shape) + 1 for o in scene.objects], dtype=np.int64)
        return scene.image, boxes, labels


class CocoDetection(DetectionDataset):
    """A COCO instances file and its images folder (`file_name` relative to it)."""

    def __init__(self, annotations: str | Path, images: str | Path, size: int, mean, std, **kwargs: Any) -> None:
        super().__init__(size, mean, std, **kwargs)
        self.coco = load_coco(annotations)
        self.root = Path(images)
        if not self.root.is_dir():
            raise ConfigError(f"images folder {self.root} of {annotations} does not exist")
        self.categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in self.coco["categories"]]
        self.images = sorted(self.coco["images"], key=lambda im: int(im["id"]))
        for im in self.images:
            if "file_name" not in im:
                raise DataError(f"{annotations}: image {im['id']} has no file_name")
        self._anns: dict[int, list[dict]] = {int(im["id"]): [] for im in self.images}
        for a in self.coco["annotations"]:
            if not a["iscrowd"]:
                self._anns[a["image_id"]].append(a)

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, index: int) -> int:
        """The image's id in the COCO file."""
        return int(self.images[index]["id"])

    def read(self, index: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        """The image (RGB) and its non-crowd boxes (xyxy) and category ids."""
        im = self.images[index]
        image = load_image(self.root / im["file_name"]).convert("RGB")
        anns = self._anns[int(im["id"])]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32)
        labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        return image, boxes.reshape(-1, 4), labels


_SYNTHETIC_OPTIONS = ("n", "seed", "max_objects", "split")  # rendered at the model's size


def detection_dataset(
    spec: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = False,
    seed: int = 0,
    exclude: Iterable[str] = (),
) -> DetectionDataset:
    """`synthetic[:n=,seed=,max_objects=,split=]` (rendered at `size`), or a COCO instances file
    `ANNOTATIONS.json[:IMAGES_DIR]` (default images folder: `images/` beside the file, else its folder).
    `exclude` names categories whose boxes are dropped (their objects stay in the images)."""
    if is_synthetic(spec):
        defaults = {"n": 10_000, "split": "train" if train else "val", "seed": seed, "max_objects": 3}
        opts = synthetic_options(spec, defaults, _SYNTHETIC_OPTIONS)
        world = SyntheticWorld(opts["n"], size, opts["split"], opts["seed"], opts["max_objects"])
        ds: DetectionDataset = SyntheticDetection(world, mean, std, train=train, seed=seed)
    else:
        ann, images = spec, None
        if not Path(spec).is_file() and ":" in spec:
            ann, _, images = spec.rpartition(":")
        if not Path(ann).is_file():
            raise ConfigError(f"detection data {spec!r}: give synthetic[:...] or a COCO instances JSON[:IMAGES_DIR]")
        if images is None:
            images = Path(ann).parent / "images" if (Path(ann).parent / "images").is_dir() else Path(ann).parent
        ds = CocoDetection(ann, images, size, mean, std, train=train, seed=seed)
    ds.exclude = frozenset(category_ids(ds.categories, exclude))
    return ds


def category_ids(categories: Sequence[dict], names: Iterable[str]) -> list[int]:
    """The ids of categories named `names`; an unknown name is an error listing the known ones."""
    by_name = {c["name"]: int(c["id"]) for c in categories}
    out = []
    for n in names:
        if n not in by_name:
            raise ConfigError(f"unknown category {n!r}; this data has {', '.join(by_name)}")
        out.append(by_name[n])
    return out


def collate_detection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images (B, 3, S, S); per-image lists of boxes and labels; image ids and scales; skipped count."""
    return {
        "images": torch.stack([i["image"] for i in items]),
        "boxes": [i["boxes"] for i in items],
        "labels": [i["labels"] for i in items],
        "image_ids": [i["image_id"] for i in items],
        "scales": [i["scale"] for i in items],
        "sizes": [i["size"] for i in items],
        **({"distill_boxes": [i["distill_boxes"] for i in items]} if "distill_boxes" in items[0] else {}),
        **({"distill_embeds": [i["distill_embeds"] for i in items]} if "distill_embeds" in items[0] else {}),
        "skipped": sum(i.get("skipped", 0) for i in items),
    }


def synthetic_coco(world: SyntheticWorld, file_names: Sequence[str] | None = None) -> dict:
    """The world's scenes as a COCO instances dict (image id = index + 1; `area` the object's pixel count,
    as COCO's is its mask's)."""
    images, anns = [], []
    for i in range(len(world)):
        scene = world[i]
        name = file_names[i] if file_names else f"{i:06d}.png"
        images.append({"id": i + 1, "file_name": name, "width": world.image_size, "height": world.image_size})
        for k, o in enumerate(scene.objects):
            x0, y0, x1, y1 = o.box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": SHAPES.index(o.shape) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int((scene.instance_mask == k + 1).sum()),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": anns, "categories": SYNTHETIC_CATEGORIES}


def write_coco_folder(world: SyntheticWorld, out: str | Path, progress: bool = True) -> Path:
    """Write a synthetic split as a COCO folder: `images/*.png` and `instances.json`; returns the JSON."""
    import json

    from tqdm.auto import tqdm

    from .._io import atomic_write

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(world)), desc="writing images", disable=not progress):
        world[i].image.save(out / "images" / f"{i:06d}.png")
    coco = synthetic_coco(world)
    path = out / "instances.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(coco)))
    return path
