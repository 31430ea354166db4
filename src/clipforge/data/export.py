"""Write the synthetic world (or any Scene source) to disk in the layouts the real loaders read:
a CSV folder (images/ + captions.csv) and WebDataset shards (img2dataset layout)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tqdm import tqdm

from .synthetic import SyntheticWorld


def _meta(scene) -> dict:
    return {
        "caption": scene.caption,
        "captions": scene.captions,
        "background": scene.background,
        "objects": [
            {
                "shape": o.shape,
                "colour": o.colour,
                "size": o.size,
                "position": o.position,
                "box": list(o.box),
                "phrase": o.phrase,
            }
            for o in scene.objects
        ],
    }


def write_csv_folder(
    world: SyntheticWorld, out: str | Path, captions_per_image: int = 1, progress: bool = False
) -> Path:
    """`out/images/NNNNNNN.png` and `out/captions.csv` (filepath, caption; one row per caption)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(len(world)), disable=not progress, desc="writing images"):
        scene = world[i]
        name = f"images/{i:07d}.png"
        scene.image.save(out / name)
        rows += [(name, c) for c in scene.captions[:captions_per_image]]
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        writer.writerows(rows)
    return out / "captions.csv"


def write_webdataset(
    world: SyntheticWorld, out: str | Path, shard_size: int = 1000, image_format: str = "png", progress: bool = False
) -> str:
    """Shards `out/NNNNN.tar` with `KEY.png|jpg`, `KEY.txt` and `KEY.json`; returns the brace pattern."""
    import webdataset as wds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = (len(world) + shard_size - 1) // shard_size
    for s in tqdm(range(shards), disable=not progress, desc="writing shards"):
        with wds.TarWriter(str(out / f"{s:05d}.tar")) as sink:
            for i in range(s * shard_size, min(len(world), (s + 1) * shard_size)):
                scene = world[i]
                buf = io.BytesIO()
                scene.image.save(buf, format="PNG" if image_format == "png" else "JPEG", quality=95)
                sink.write(
                    {
                        "__key__": f"{i:09d}",
                        image_format: buf.getvalue(),
                        "txt": scene.caption,
                        "json": json.dumps(_meta(scene)).encode(),
                    }
                )
    return str(out / (f"{{00000..{shards - 1:05d}}}.tar" if shards > 1 else "00000.tar"))
