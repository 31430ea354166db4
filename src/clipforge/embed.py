"""Embeddings of many images (or texts) on disk, in the layout clip-retrieval builds its index from and
serves, and exact search over them.

    OUT/img_emb/img_emb_{k}.npy        (n_k, E) unit-norm image embeddings of shard k (float16 by default)
    OUT/text_emb/text_emb_{k}.npy      (n_k, E) the same rows' captions (sources with captions), or the texts
    OUT/metadata/metadata_{k}.parquet  one row per embedding: image_path, caption (what the row is)
    OUT/embed.json                     model, source, counts, images/s

Sources: a folder of images (recursive), a CSV/TSV of (image, caption), WebDataset shards
(`a-{000..009}.tar`), `synthetic:n=,size=,split=,seed=` (the synthetic world), or with `--texts` a file of
one text per line. Items are numbered in the source's order and shard k holds items
[k * shard_size, (k + 1) * shard_size); a shard's files appear (atomically) only when it is complete, so a
killed run resumes at the first missing shard. Undecodable images are skipped and counted. Decoding runs
in DataLoader workers while the model embeds the previous batch; bf16 where the CPU or GPU has it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .errors import ConfigError, ImageError
from .eval.run import write_json

SUBDIRS = ("img_emb", "text_emb", "metadata")


# ------------------------------------------------------------------------------------------ sources
class _SyntheticImage:
    """Item i of a synthetic world: its image, or its caption (picklable, for spawn-started workers)."""

    def __init__(self, world, what: str) -> None:
        self.world, self.what = world, what

    def __call__(self, i: int):
        scene = self.world[i]
        return scene.image if self.what == "image" else scene.caption


class _FileImage:
    """The image file of item i."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self.items = items

    def __call__(self, i: int):
        from .transforms import load_image

        return load_image(self.items[i][0])


class _Indexed(Dataset):
    """Map-style items (key, caption, image loader) from `start` on; a failed decode gives image None."""

    def __init__(self, items: Sequence[tuple[str, str]], load, transform, start: int, caption=None) -> None:
        self.items, self.load, self.transform, self.start, self.caption = items, load, transform, start, caption

    def __len__(self) -> int:
        return max(0, len(self.items) - self.start)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.start + i
        key, caption = self.items[index]
        if self.caption is not None:
            caption = self.caption(index)
        try:
            image = self.transform(self.load(index))
        except (ImageError, OSError, ValueError):
            image = None
        return {"index": index, "key": key, "caption": caption, "image": image}


class _Shards(IterableDataset):
    """WebDataset shards in order, items numbered from 0, those before `start` passed over undecoded
    (each worker takes every n-th item, so the order is kept when the loader interleaves workers)."""

    def __init__(self, urls: str, transform, start: int) -> None:
        import webdataset as wds

        self.shards = wds.shardlists.expand_urls(urls)
        missing = [s for s in self.shards if "://" not in s and not Path(s).exists()]
        if not self.shards or missing:
            raise ConfigError(f"WebDataset shard(s) not found: {', '.join(missing[:3]) or urls}")
        self.transform, self.start = transform, start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        from .transforms import load_image

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        samples = wds.tarfile_to_samples(handler=wds.warn_and_continue)(iter([{"url": s} for s in self.shards]))
        for index, sample in enumerate(samples):
            if index < self.start or (index - self.start) % workers != worker:
                continue
            key = sample.get("__key__", str(index))
            caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
            image_key = next((k for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
            try:
                if image_key is None:
                    raise ImageError(f"sample {key} has no image")
                image = self.transform(load_image(sample[image_key], name=key))
            except (ImageError, OSError, ValueError):
                image = None
            yield {"index": index, "key": key, "caption": caption, "image": image}


def open_source(spec: str, transform, start: int = 0) -> tuple[Dataset | IterableDataset, int | None]:
    """The items of an image source from item `start` on, and how many there are in all (None: unknown,
    for WebDataset shards)."""
    from .data.sources import IMAGE_EXTS, is_synthetic, read_csv_pairs, synthetic_options

    if is_synthetic(spec):
        from .data.synthetic import SyntheticWorld

        defaults = {"n": 10_000, "size": 64, "split": "val", "seed": 0}
        opts = synthetic_options(spec, defaults, tuple(defaults))
        world = SyntheticWorld(opts["n"], opts["size"], opts["split"], opts["seed"])
        items = [(f"synthetic/{opts['split']}/{i}", "") for i in range(len(world))]
        return _Indexed(
            items, _SyntheticImage(world, "image"), transform, start, _SyntheticImage(world, "caption")
        ), len(items)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ConfigError(f"{path} holds no image files ({', '.join(IMAGE_EXTS)})")
        items = [(str(f), "") for f in files]
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        items = read_csv_pairs(path)
    elif ".tar" in spec:
        return _Shards(spec, transform, start), None
    else:
        raise ConfigError(f"image source {spec!r}: give a folder, a .csv/.tsv, WebDataset .tar shards or synthetic:...")
    return _Indexed(items, _FileImage(items), transform, start), len(items)


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [b for b in batch if b["image"] is not None]
    return {
        "images": torch.stack([b["image"] for b in ok]) if ok else None,
        "index": [b["index"] for b in ok],
        "keys": [b["key"] for b in ok],
        "captions": [b["caption"] for b in ok],
        "skipped": [b["key"] for b in batch if b["image"] is None],
        "skipped_index": [b["index"] for b in batch if b["image"] is None],
    }


# ------------------------------------------------------------------------------------------ writing
def _shard_done(out: Path, k: int, with_text: bool, with_images: bool) -> bool:
    need = [out / "metadata" / f"metadata_{k}.parquet"]
    if with_images:
        need.append(out / "img_emb" / f"img_emb_{k}.npy")
    if with_text:
        need.append(out / "text_emb" / f"text_emb_{k}.npy")
    return all(p.is_file() for p in need)


def _save_npy(path: Path, rows: list, width: int, dtype) -> None:
    from ._io import atomic_write

    arr = np.concatenate(rows) if rows else np.zeros((0, width), dtype)  # an empty shard keeps its width

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


def _write_shard(
    out: Path, k: int, images: list | None, texts: list | None, meta: dict[str, list], width: int, dtype
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ._io import atomic_write

    # the metadata goes last: its presence marks the shard complete
    if images is not None:
        _save_npy(out / "img_emb" / f"img_emb_{k}.npy", images, width, dtype)
    if texts is not None:
        _save_npy(out / "text_emb" / f"text_emb_{k}.npy", texts, width, dtype)
    table = pa.table(meta, schema=pa.schema([(name, pa.string()) for name in meta]))
    atomic_write(out / "metadata" / f"metadata_{k}.parquet", lambda tmp: pq.write_table(table, tmp))


def _runner(model, precision: str, compile: bool = False):
    """The model that embeds: under bf16, a copy with bf16 weights run without autocast (autocast would
    cast every weight on every batch: 5% of a ViT-B-32 image batch; 8% faster, the same 0.99994 cosine to
    fp32 as autocast); otherwise the model itself under `autocast` (fp16) or in fp32. With `compile`, a
    copy whose image tower's forward is torch.compiled for one batch shape (the caller pads the last batch)."""
    import copy

    from .precision import autocast

    device = next(model.parameters()).device
    if precision == "bf16":
        runner, in_dtype, ctx = copy.deepcopy(model).to(torch.bfloat16), torch.bfloat16, contextlib.nullcontext
    else:
        runner, in_dtype, ctx = model, None, lambda: autocast(precision, device)
    if compile:
        runner = runner if runner is not model else copy.deepcopy(model)
        runner.visual.forward = torch.compile(runner.visual.forward, dynamic=False)
    return runner, in_dtype, ctx


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("writing embeddings needs pyarrow: pip install 'clipforge[embed]'") from None


@dataclass
class EmbedResult:
    """What one `embed` call did."""

    out: str
    embedded: int  # rows written by this call
    skipped: int  # undecodable images passed over by this call
    resumed_from: int  # the first item this call read (0: a fresh run)
    seconds: float
    per_second: float


@torch.no_grad()
def embed_images(
    model,
    source: str,
    out: str | Path,
    *,
    batch_size: int = 256,
    shard_size: int = 10_000,
    workers: int | None = None,
    precision: str = "auto",
    captions: bool = True,
    dtype: str = "float16",
    progress: bool = True,
    model_name: str = "",
    compile: bool = False,
) -> EmbedResult:
    """Embed every image of `source` with `model` (a CLIP) into `out` (see the module doc); captions of the
    source go to text_emb when `captions` and the source has them. Resumes where complete shards end.
    `compile`: torch.compile the image tower first (the first batch pays the compile time)."""
    from tqdm.auto import tqdm

    from .precision import resolve_precision
    from .transforms import ImageTransform

    _require_pyarrow()
    if batch_size <= 0 or shard_size <= 0:
        raise ConfigError("batch_size and shard_size must be positive")
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 or float32, got {dtype!r}")
    device = next(model.parameters()).device
    prec = resolve_precision(precision, device)
    c = model.config
    p = c.preprocess
    transform = ImageTransform(
        c.vision.image_size, mean=p.mean, std=p.std, interpolation=p.interpolation, resize_mode=p.resize_mode
    )
    probe, total = open_source(source, transform, 0)  # a bad source fails here, before anything is written
    with_text = captions and (total is None or probe.caption is not None or any(c for _, c in probe.items[:100]))
    out = Path(out)
    settings = {"model": model_name, "source": source, "shard_size": shard_size, "dtype": dtype,
                "captions": with_text, "embed_dim": c.embed_dim}  # fmt: skip
    _check_resume(out, settings)
    for d in SUBDIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    k = 0
    while _shard_done(out, k, with_text, True):
        k += 1
    start = k * shard_size
    ds, total = open_source(source, transform, start)
    info = {"settings": settings, "precision": prec, "complete": False}
    write_json(info, out / "embed.json")
    workers = min(4, max(1, (torch.get_num_threads() or 2) // 2)) if workers is None else workers
    if isinstance(ds, IterableDataset):  # one decoding worker keeps a stream in order (shards are by item number)
        workers = min(workers, 1)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate, shuffle=False)
    from .tokenizer import tokenize

    runner, in_dtype, ctx = _runner(model, prec, compile)

    np_dtype = np.float16 if dtype == "float16" else np.float32
    shard_images: list = []
    shard_texts: list = []
    meta: dict[str, list] = {"image_path": [], "caption": []}
    written = skipped = 0
    last_seen = start - 1  # the highest item number read, embedded or skipped
    t0 = time.time()
    todo = None if total is None else max(0, total - start)
    bar = tqdm(total=todo, desc="embedding", unit="img", disable=not progress)

    def flush(k: int) -> None:
        nonlocal shard_images, shard_texts, meta
        _write_shard(out, k, shard_images, shard_texts if with_text else None, meta, c.embed_dim, np_dtype)
        shard_images, shard_texts, meta = [], [], {"image_path": [], "caption": []}

    def advance_to(shard: int) -> None:  # items arrive in order: every earlier shard is complete
        nonlocal k
        while shard > k:
            flush(k)
            k += 1

    for batch in loader if todo != 0 else []:
        bar.update(len(batch["keys"]) + len(batch["skipped"]))
        skipped += len(batch["skipped"])
        last_seen = max([last_seen, *batch["index"], *batch["skipped_index"]])
        if batch["images"] is None:
            continue
        images = batch["images"]
        n = len(images)
        if compile and n < batch_size:  # one shape for the compiled graph: pad the last batch
            images = torch.cat([images, images.new_zeros((batch_size - n, *images.shape[1:]))])
        with ctx():
            emb = runner.encode_image(images.to(device, dtype=in_dtype, non_blocking=True))[:n]
        emb = torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy().astype(np_dtype)
        texts = None
        if with_text:
            tokens = tokenize(batch["captions"], context_length=c.text.context_length, truncate=True)
            with ctx():
                t = runner.encode_text(tokens.to(device))
            texts = torch.nn.functional.normalize(t.float(), dim=-1).cpu().numpy().astype(np_dtype)
        for j, index in enumerate(batch["index"]):  # rows fall in the shard of their item number
            advance_to(index // shard_size)
            shard_images.append(emb[j : j + 1])
            if texts is not None:
                shard_texts.append(texts[j : j + 1])
            meta["image_path"].append(batch["keys"][j])
            meta["caption"].append(batch["captions"][j])
            written += 1
    # every shard up to the last item is written, those whose items all failed to decode too (empty)
    last = (total - 1) // shard_size if total is not None else last_seen // shard_size
    if last_seen >= start or (total is not None and start < total):
        advance_to(last)
        flush(k)
    bar.close()
    seconds = time.time() - t0
    result = EmbedResult(str(out), written, skipped, start, round(seconds, 2), round(written / max(seconds, 1e-9), 1))
    info.update(complete=True, **result.__dict__)
    write_json(info, out / "embed.json")
    return result


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to add to an embeddings folder written with other settings (model, source, shard size ...)."""
    path = out / "embed.json"
    if not path.is_file():
        if (out / "metadata").is_dir() and any((out / "metadata").iterdir()):
            raise ConfigError(f"{out} holds embeddings without embed.json: give a new --out")
        return
    try:
        before = json.loads(path.read_text()).get("settings", {})
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is damaged: give a new --out") from None
    differ = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if differ:
        what = ", ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in differ.items())
        raise ConfigError(f"{out} was written with other settings ({what}); resume with the same ones or a new --out")


@torch.no_grad()
def embed_texts(
    model,
    texts: str | Path,
    out: str | Path,
    *,
    batch_size: int = 1024,
    precision: str = "auto",
    dtype: str = "float16",
) -> EmbedResult:
    """Embed a file of texts (one per line) into `out`: text_emb/text_emb_0.npy and metadata (caption)."""
    from .precision import resolve_precision
    from .tokenizer import tokenize

    _require_pyarrow()
    path = Path(texts)
    if not path.is_file():
        raise ConfigError(f"texts file {path} does not exist (one text per line)")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{path} holds no texts")
    out = Path(out)
    for d in ("text_emb", "metadata"):
        (out / d).mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    prec = resolve_precision(precision, device)
    t0 = time.time()
    chunks = []
    runner, _, ctx = _runner(model, prec)
    for i in range(0, len(lines), batch_size):
        tokens = tokenize(lines[i : i + batch_size], context_length=model.config.text.context_length, truncate=True)
        with ctx():
            e = runner.encode_text(tokens.to(device))
        chunks.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu().numpy().astype(dtype))
    _write_shard(out, 0, None, chunks, {"caption": lines}, model.config.embed_dim, dtype)
    seconds = time.time() - t0
    result = EmbedResult(str(out), len(lines), 0, 0, round(seconds, 2), round(len(lines) / max(seconds, 1e-9), 1))
    info = {"settings": {"texts": str(path), "dtype": dtype, "embed_dim": model.config.embed_dim}, "precision": prec}
    write_json({**info, "complete": True, **result.__dict__}, out / "embed.json")
    return result


# ------------------------------------------------------------------------------------------ search
class EmbeddingIndex:
    """Exact nearest-neighbour search over an embeddings folder (`img_emb` or `text_emb`), cosine
    similarity (the rows are unit norm). The complete shards (those with metadata) are loaded into
    memory as float32."""

    def __init__(self, folder: str | Path, kind: str = "img") -> None:
        import pyarrow.parquet as pq

        if kind not in ("img", "text"):
            raise ConfigError(f"kind must be 'img' or 'text', got {kind!r}")
        folder = Path(folder)
        files = sorted((folder / f"{kind}_emb").glob(f"{kind}_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
        files = [f for f in files if (folder / "metadata" / f"metadata_{f.stem.split('_')[-1]}.parquet").is_file()]
        if not files:
            raise ConfigError(
                f"{folder} has no complete {kind}_emb/{kind}_emb_*.npy shard (write it with clipforge embed)"
            )
        shards = [np.load(f, mmap_mode="r") for f in files]
        self.embeddings = np.concatenate([np.asarray(s, dtype=np.float32) for s in shards])
        self.metadata: dict[str, list] = {}
        for f in files:
            k = f.stem.split("_")[-1]
            table = pq.read_table(folder / "metadata" / f"metadata_{k}.parquet").to_pydict()
            for col, values in table.items():
                self.metadata.setdefault(col, []).extend(values)
        if not len(self.embeddings):
            raise ConfigError(f"{folder}'s {kind}_emb shards hold no rows")

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, k), best first, of the `k` rows most similar to each query."""
        q = queries.detach().cpu().float().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
        q = np.atleast_2d(q).astype(np.float32)
        q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
        k = min(k, len(self))
        sims = q @ self.embeddings.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(sims, idx, axis=1), idx
