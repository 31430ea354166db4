"""Images with per-pixel class masks: the synthetic world's, and the VOC/ADE20K layout users have.

A segmentation folder holds images, indexed-PNG masks of the same file stem, and a class-name list
(one name per line; line i names mask value i; 255 = ignore). Recognised layouts under ROOT:
`JPEGImages/` + `SegmentationClass/` (PASCAL VOC; `ImageSets/Segmentation/{split}.txt` picks a split
where present), `images/` + `annotations/` (ADE20K), `images/` + `masks/`; the class list is
`ROOT/classes.txt` (or `labels.txt`) unless given. Samples are dicts {"image": (3, S, S) normalised,
"mask": (S, S) int64, "skipped": int}: images squashed to S x S (bilinear), masks nearest; evaluation
samples add "truth", the mask at the image's own size, which scores are computed at.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..eval.segmentation import IGNORE_INDEX, read_class_names, read_mask
from ..transforms import image_to_tensor, load_image
from .sources import is_synthetic, sample_skipping_damaged, stable_seed, synthetic_options
from .synthetic import SHAPES, SyntheticWorld

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_LAYOUTS = (("JPEGImages", "SegmentationClass"), ("images", "annotations"), ("images", "masks"))
SYNTHETIC_CLASSES = ("background", *SHAPES)  # class_mask values of the synthetic world


@dataclass(frozen=True)
class SegmentationFolder:
    """Where a folder's images, masks and class names are."""

    root: Path
    pairs: list[tuple[Path, Path]]  # (image, mask)
    classes: list[str]


def find_segmentation_folder(
    root: str | Path, classes: str | Path | None = None, split: str = ""
) -> SegmentationFolder:
    """Pair images and masks under `root` (see the module doc); an unrecognised layout, a missing class
    list or a folder without pairs is a one-line error."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"segmentation data folder {root} does not exist")
    for image_dir, mask_dir in _LAYOUTS:
        if (root / image_dir).is_dir() and (root / mask_dir).is_dir():
            break
    else:
        layouts = ", ".join(f"{a}/ + {b}/" for a, b in _LAYOUTS)
        raise ConfigError(f"{root} holds none of the segmentation layouts ({layouts})")
    if classes is None:
        found = [root / n for n in ("classes.txt", "labels.txt") if (root / n).is_file()]
        if not found:
            raise ConfigError(f"no class-name list in {root}: write classes.txt (line i names mask value i)")
        classes = found[0]
    names = read_class_names(classes)
    images, masks_dir, wanted = root / image_dir, root / mask_dir, None
    if split:  # VOC: a list of stems; ADE20K: images/SPLIT and annotations/SPLIT
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if listing.is_file():
            wanted = set(listing.read_text(encoding="utf-8").split())
        elif (images / split).is_dir() and (masks_dir / split).is_dir():
            images, masks_dir = images / split, masks_dir / split
        else:
            raise ConfigError(f"{root} has no split {split!r}: neither {listing} nor {images / split}/")
    masks = {p.stem: p for p in masks_dir.glob("*.png")}
    pairs = [
        (p, masks[p.stem])
        for p in sorted(images.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in masks and (wanted is None or p.stem in wanted)
    ]
    if not pairs:
        subfolders = sorted(d.name for d in images.iterdir() if d.is_dir())
        hint = f" (it has subfolders {', '.join(subfolders)}: give ROOT:SPLIT)" if subfolders else ""
        raise ConfigError(f"no image in {images} has a mask of the same name in {masks_dir}{hint}")
    return SegmentationFolder(root, pairs, names)


class SegmentationDataset(Dataset):
    """(image, mask) samples at `size` x `size`; training flips horizontally, seeded per (epoch, index).

    `remap` (a lookup table of 256 entries) renames mask values, e.g. unseen classes to ignore."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        seed: int = 0,
        remap: np.ndarray | None = None,
    ) -> None:
        self.size, self.mean, self.std, self.train, self.seed = size, tuple(mean), tuple(std), train, seed
        self.remap = remap

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """(image, class-index mask) of sample `index`."""
        raise NotImplementedError

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        """Training skips a sample whose image or mask file cannot be decoded for the next one and counts
        it, as the image-text sources do; evaluation raises, so no score silently leaves images out. A mask
        that decodes but breaks the dataset's rules (its mode, a value past the class list) always raises:
        that is the data's description to fix, not one damaged file."""
        return sample_skipping_damaged(self._sample, key, len(self), self.train)

    def _sample(self, epoch: int, index: int) -> dict[str, Any]:
        image, mask = self.read(index)
        if image.size != (mask.shape[1], mask.shape[0]):
            raise DataError(f"sample {index}: image is {image.size}, its mask {mask.shape[::-1]}")
        truth = None if self.train else torch.from_numpy(mask.astype(np.int64))  # scored at the image's size
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize((self.size, self.size), Image.NEAREST))
        mask = mask.astype(np.int64)
        if self.remap is not None:
            mask = self.remap[np.clip(mask, 0, 255)]
        x = image_to_tensor(image, self.mean, self.std)
        m = torch.from_numpy(np.ascontiguousarray(mask))
        if self.train and random.Random(stable_seed(self.seed, epoch, index)).random() < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        return {"image": x, "mask": m} if truth is None else {"image": x, "mask": m, "truth": truth}


class SyntheticSegmentation(SegmentationDataset):
    """The synthetic world's class masks: 0 background, i + 1 for SHAPES[i] (SYNTHETIC_CLASSES)."""

    classes = SYNTHETIC_CLASSES

    def __init__(self, world: SyntheticWorld, mean: Sequence[float], std: Sequence[float], **kwargs: Any) -> None:
        super().__init__(world.image_size, mean, std, **kwargs)
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The scene's image and class mask."""
        scene = self.world[index]
        return scene.image, scene.class_mask


class FolderSegmentation(SegmentationDataset):
    """A VOC/ADE20K-layout folder (`find_segmentation_folder`)."""

    def __init__(self, folder: SegmentationFolder, size: int, mean: Sequence[float], std: Sequence[float], **kw: Any):
        super().__init__(size, mean, std, **kw)
        self.folder, self.classes = folder, folder.classes

    def __len__(self) -> int:
        return len(self.folder.pairs)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The image (RGB) and its mask; values past the class list (other than 255) are an error."""
        image_path, mask_path = self.folder.pairs[index]
        image = load_image(image_path).convert("RGB")
        mask = read_mask(mask_path)
        bad = (mask >= len(self.classes)) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DataError(
                f"{mask_path} has value {int(mask[bad][0])} but {len(self.classes)} classes are listed "
                f"(0..{len(self.classes) - 1}; 255 = ignore)"
            )
        return image, mask


def remap_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry lookup table: identity except `mapping`'s values."""
    table = np.arange(256, dtype=np.int64)
    for k, v in mapping.items():
        table[k] = v
    return table


_SYNTHETIC_SEG_OPTIONS = ("n", "seed", "max_objects", "split")  # rendered at the model's size


def segmentation_dataset(
    spec: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = False,
    seed: int = 0,
    classes: str | Path | None = None,
) -> SegmentationDataset:
    """`synthetic[:n=,seed=,max_objects=,split=]` (rendered at `size`) or a VOC/ADE20K-layout folder
    (`ROOT` or `ROOT:SPLIT`); the dataset's `.classes` lists its class names."""
    if is_synthetic(spec):
        defaults = {"n": 10_000, "split": "train" if train else "val", "seed": seed}
        opts = synthetic_options(spec, defaults, _SYNTHETIC_SEG_OPTIONS)
        world = SyntheticWorld(opts["n"], size, opts["split"], opts["seed"], opts.get("max_objects", 3))
        return SyntheticSegmentation(world, mean, std, train=train, seed=seed)
    root, split = spec, ""
    if not Path(spec).is_dir() and ":" in spec:
        root, _, split = spec.rpartition(":")
    folder = find_segmentation_folder(root, classes, split)
    return FolderSegmentation(folder, size, mean, std, train=train, seed=seed)


def collate_segmentation(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images (B, 3, S, S), masks (B, S, S) and the count of skipped samples."""
    return {
        "images": torch.stack([i["image"] for i in items]),
        "masks": torch.stack([i["mask"] for i in items]),
        "skipped": sum(i.get("skipped", 0) for i in items),
    }
