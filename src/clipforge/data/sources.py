"""Where training pairs come from, selected by one `--data` spec string.

  synthetic[:n=20000,size=64,seed=0,max_objects=3]   the built-in synthetic world (no files)
  path/to/pairs.csv | .tsv                           rows of (image path, caption); several rows per image allowed
  path/to/folder                                     images with same-stem .txt caption sidecars (one caption per line)
  path/to/shards/{00000..00099}.tar | folder of .tar WebDataset shards (NNNNN.jpg/png + NNNNN.txt)

A corrupt, truncated or undecodable image, or an empty caption, is skipped and counted: map-style
sources move on to the next index (the batch keeps its size), streams drop the sample. The count
travels with the batch so the trainer reports it. Image and caption are always read together, so a
skip never shifts pairs.
"""

from __future__ import annotations

import csv
import io
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from ..errors import ConfigError, DataError, ImageError
from ..transforms import load_image
from .synthetic import SyntheticWorld

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SYNTHETIC_OPTIONS = {"n": int, "size": int, "seed": int, "max_objects": int, "split": str}
MAX_CONSECUTIVE_SKIPS = 100
_WDS_HINT = (
    "each sample needs an image (.jpg, .jpeg, .png or .webp) and a non-empty .txt caption under one key; "
    "check the shards (tar tf SHARD | head) or rewrite them"
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed `--data` spec: its kind, where it is, and its options."""

    kind: str  # "synthetic" | "csv" | "folder" | "webdataset"
    location: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def is_synthetic(spec: str) -> bool:
    """Whether a data spec names the synthetic world (`synthetic` or `synthetic:k=v,...`)."""
    return spec == "synthetic" or spec.startswith("synthetic:")


def synthetic_options(
    spec: str, defaults: dict[str, Any] | None = None, allowed: tuple[str, ...] = tuple(_SYNTHETIC_OPTIONS)
) -> dict[str, Any]:
    """The typed options of a `synthetic[:k=v,...]` spec over `defaults`, checked against the world's limits;
    an option outside `allowed` or of the wrong type is an error naming the valid ones."""
    opts: dict[str, Any] = dict(defaults or {})
    for item in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = item.partition("=")
        if key not in allowed:
            raise ConfigError(f"unknown synthetic data option {key!r}; valid: {', '.join(allowed)}")
        try:
            opts[key] = _SYNTHETIC_OPTIONS[key](value)
        except ValueError as e:
            raise ConfigError(
                f"synthetic option {key}={value!r} is not a valid {_SYNTHETIC_OPTIONS[key].__name__}"
            ) from e
    _check_synthetic(opts)
    return opts


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a `--data` string; unknown synthetic options are an error naming the valid ones."""
    if is_synthetic(spec):
        return DataSpec("synthetic", options=synthetic_options(spec))
    if ".tar" in spec:
        return DataSpec("webdataset", spec)
    path = Path(spec)
    if path.suffix.lower() in (".csv", ".tsv"):
        if not path.exists():
            raise ConfigError(f"data file not found: {spec}")
        return DataSpec("csv", spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
        return DataSpec("webdataset", "::".join(shards)) if shards else DataSpec("folder", spec)
    raise ConfigError(
        f"cannot read data spec {spec!r}: not 'synthetic[:opts]', a .csv/.tsv file, a folder or WebDataset .tar shards"
    )


def _check_synthetic(opts: dict[str, Any]) -> None:
    """The synthetic world's limits, as one-line errors naming the valid values."""
    from .synthetic import SPLITS

    if "split" in opts and opts["split"] not in SPLITS:
        raise ConfigError(f"synthetic split={opts['split']!r} is not one of {', '.join(SPLITS)}")
    if opts.get("n", 1) <= 0:
        raise ConfigError(f"synthetic n={opts['n']} must be positive (the number of scenes)")
    if opts.get("size", 16) < 16:
        raise ConfigError(f"synthetic size={opts['size']} is too small: scenes need at least 16 pixels")
    if opts.get("max_objects", 1) < 1:
        raise ConfigError(f"synthetic max_objects={opts['max_objects']} must be at least 1")


def _read_text(path: Path) -> str:
    """A text file decoded as UTF-8; ConfigError naming the file and the fix if it is not."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); re-save it as UTF-8") from None


def sample_skipping_damaged(
    sample: Callable[[int, int], dict[str, Any]], key: tuple[int, int] | int, length: int, train: bool
) -> dict[str, Any]:
    """`sample(epoch, index)` plus "skipped": in training, a sample whose file cannot be decoded is passed
    over for the next one and counted (MAX_CONSECUTIVE_SKIPS in a row is an error); evaluation raises, so
    no score silently leaves images out."""
    epoch, index = key if isinstance(key, tuple) else (0, key)
    skipped = 0
    while True:
        try:
            return {**sample(epoch, index), "skipped": skipped}
        except (ImageError, OSError) as e:
            if not train:
                raise
            skipped += 1
            if skipped >= min(MAX_CONSECUTIVE_SKIPS, length):
                raise DataError(f"{skipped} samples in a row could not be used; the last: {e}") from None
            index = (index + 1) % length


def stable_seed(*parts: Any) -> int:
    """A seed from values that is the same in every process (unlike hash() of strings)."""
    return zlib.crc32(repr(parts).encode())


# --------------------------------------------------------------------------------- map-style sources
class PairDataset(Dataset):
    """Map-style pairs. Indexed by (epoch, index) so augmentation is a pure function of both."""

    def __init__(self, transform: Callable[..., torch.Tensor], seed: int = 0) -> None:
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> tuple[Any, str]:
        """(PIL image, caption); raises ImageError or ValueError for an unusable pair."""
        raise NotImplementedError

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped = 0
        while True:
            try:
                image, caption = self.read(index)
                if not caption or not caption.strip():
                    raise ValueError("empty caption")
                rng = random.Random(stable_seed(self.seed, epoch, index))
                return {"image": self.transform(image, rng=rng), "caption": caption.strip(), "skipped": skipped}
            except (ImageError, ValueError, OSError):
                skipped += 1
                if skipped >= min(MAX_CONSECUTIVE_SKIPS, len(self)):
                    raise ImageError(
                        f"{skipped} consecutive unusable samples from index {index - skipped + 1}; "
                        "is the dataset corrupt?"
                    ) from None
                index = (index + 1) % len(self)


class SyntheticPairs(PairDataset):
    """Pairs from the synthetic world; each scene's training caption is one of its phrasings, chosen by seed."""

    def __init__(self, world: SyntheticWorld, transform: Callable[..., torch.Tensor], seed: int = 0) -> None:
        super().__init__(transform, seed)
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def read(self, index: int) -> tuple[Any, str]:
        """(scene image, one of its captions)."""
        scene = self.world[index]
        return scene.image, scene.captions[stable_seed(self.seed, index) % len(scene.captions)]


class FilePairs(PairDataset):
    """Pairs of (image file, caption) from a CSV/TSV or a folder with .txt sidecars."""

    def __init__(self, pairs: list[tuple[str, str]], transform: Callable[..., torch.Tensor], seed: int = 0) -> None:
        super().__init__(transform, seed)
        if not pairs:
            raise ConfigError("the data source holds no (image, caption) pairs")
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[Any, str]:
        """(decoded image file, caption); ImageError for an unreadable file."""
        path, caption = self.pairs[index]
        return load_image(path), caption


def read_csv_pairs(path: str | Path, image_key: str = "", caption_key: str = "") -> list[tuple[str, str]]:
    """Rows of (image, caption). The columns named `image_key` and `caption_key` if given (an error names
    the header's columns when they are missing); else a header naming image/filepath/path and
    caption/text/title columns when present; else the first two columns. Relative paths are relative
    to the file."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = list(csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter))
    if not rows:
        raise ConfigError(f"{path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    img_col, cap_col = 0, 1
    img_names, cap_names = ("filepath", "image", "path", "file", "image_path"), ("caption", "text", "title")
    if image_key or caption_key:
        img_names = (image_key.lower(),) if image_key else img_names
        cap_names = (caption_key.lower(),) if caption_key else cap_names
        missing = [
            k for k, names in ((image_key, img_names), (caption_key, cap_names)) if k and k.lower() not in header
        ]
        if missing:
            raise ConfigError(
                f"{path} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(rows[0])}"
            )
    if any(h in img_names for h in header) and any(h in cap_names for h in header):
        img_col = next(i for i, h in enumerate(header) if h in img_names)
        cap_col = next(i for i, h in enumerate(header) if h in cap_names)
        rows = rows[1:]
    pairs = []
    for n, row in enumerate(rows):
        if len(row) <= max(img_col, cap_col):
            raise ConfigError(f"{path}: row {n + 1} has {len(row)} columns, expected image and caption")
        p = Path(row[img_col])
        pairs.append((str(p if p.is_absolute() else path.parent / p), row[cap_col]))
    return pairs


def read_folder_pairs(folder: str | Path) -> tuple[list[tuple[str, str]], int]:
    """(pairs, images without a caption file). Each non-empty line of the sidecar is one caption."""
    pairs, uncaptioned = [], 0
    for image in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS):
        sidecar = image.with_suffix(".txt")
        lines = [l.strip() for l in _read_text(sidecar).splitlines()] if sidecar.exists() else []
        lines = [l for l in lines if l]
        uncaptioned += not lines
        pairs.extend((str(image), line) for line in lines)
    return pairs, uncaptioned


# ------------------------------------------------------------------------------------- WebDataset
class WebDatasetPairs(IterableDataset):
    """Endless stream over WebDataset shards: shards shuffled per pass (seeded) and split across ranks
    and workers, then a shuffle buffer. Exact replay after resume is not possible for streams: a
    resumed run continues with fresh passes (no sample is lost; the step count is exact)."""

    def __init__(
        self, urls: str, transform: Callable[..., torch.Tensor], seed: int = 0, shuffle_buffer: int = 1000
    ) -> None:
        import webdataset as wds

        self.shards = wds.shardlists.expand_urls(urls)
        if not self.shards:
            raise ConfigError(f"no WebDataset shards match {urls!r}")
        missing = [s for s in self.shards if "://" not in s and not Path(s).exists()]
        if missing:
            raise ConfigError(f"WebDataset shard(s) not found: {', '.join(missing[:3])}")
        self.transform, self.seed, self.shuffle_buffer = transform, seed, shuffle_buffer

    def _decode(self, sample: dict[str, Any], counter: list[int]) -> dict[str, Any] | None:
        from PIL import Image

        key = sample.get("__key__", "?")
        image_key = next((k for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
        caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
        try:
            if image_key is None or not caption:
                raise ValueError("missing image or caption")
            with Image.open(io.BytesIO(sample[image_key])) as im:
                im.load()
                image = im.copy()
            rng = random.Random(stable_seed(self.seed, key))
            out = {"image": self.transform(image, rng=rng), "caption": caption, "skipped": counter[0]}
            counter[0] = 0
            return out
        except Exception:  # undecodable image bytes of any kind: skip and count
            counter[0] += 1
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        counter = [0]
        for epoch in range(10**9):
            shards = list(self.shards)
            random.Random(stable_seed(self.seed, epoch)).shuffle(shards)
            mine = list(wds.split_by_worker(wds.split_by_node([{"url": s} for s in shards])))
            if not mine:
                raise ConfigError(
                    f"{len(shards)} WebDataset shards are too few for every rank and data worker "
                    "to get one; write more shards or use fewer workers"
                )
            samples = wds.tarfile_to_samples(handler=wds.warn_and_continue)(iter(mine))
            yielded = False
            rng = random.Random(stable_seed(self.seed, epoch, "buffer"))
            for sample in wds.filters._shuffle(
                samples, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng
            ):
                out = self._decode(sample, counter)
                if out is not None:
                    yielded = True
                    yield out
                elif counter[0] >= MAX_CONSECUTIVE_SKIPS:
                    raise ImageError(f"{counter[0]} consecutive unusable samples in {self._what(mine)}; {_WDS_HINT}")
            if not yielded:
                raise ImageError(f"a whole pass over {self._what(mine)} gave no usable sample; {_WDS_HINT}")

    @staticmethod
    def _what(mine: list[dict[str, str]]) -> str:
        names = ", ".join(Path(m["url"]).name for m in mine[:3])
        return f"{len(mine)} shard(s) ({names}{' ...' if len(mine) > 3 else ''})"


def build_dataset(
    spec: DataSpec | str,
    transform: Callable[..., torch.Tensor],
    image_size: int,
    seed: int = 0,
    columns: tuple[str, str] = ("", ""),
) -> tuple[Dataset, dict[str, int]]:
    """(dataset, info) for a data spec; info counts problems found while indexing (uncaptioned images).
    `columns` names a CSV's (image, caption) columns; empty names use the header's usual names."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "synthetic":
        o = spec.options
        world = SyntheticWorld(
            o.get("n", 20_000),
            o.get("size", image_size),
            o.get("split", "train"),
            o.get("seed", seed),
            o.get("max_objects", 3),
        )
        return SyntheticPairs(world, transform, seed), {}
    if spec.kind == "csv":
        return FilePairs(read_csv_pairs(spec.location, *columns), transform, seed), {}
    if spec.kind == "folder":
        pairs, uncaptioned = read_folder_pairs(spec.location)
        return FilePairs(pairs, transform, seed), {"uncaptioned_images": uncaptioned}
    return WebDatasetPairs(spec.location, transform, seed), {}
