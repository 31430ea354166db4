"""`clipforge embed` over synthetic images: images/s end to end (rendering/decoding in workers, the
model, writing shards), beside the model alone on ready batches, as a share of this machine's matmul
peak measured in the same run (before, between and after the cases).

    python benchmarks/embed_speed.py --model shapes --n 10000
    python benchmarks/embed_speed.py --model ViT-B-32 --n 10000 --size 224 --random-weights
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import clipforge
from clipforge.embed import embed_images
from clipforge.precision import autocast, resolve_precision

sys.path.insert(0, str(Path(__file__).parent))
from vs_transformers import cpu_flags, matmul_peak  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes")
    p.add_argument("--random-weights", action="store_true", help="an architecture name with random weights")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64, help="synthetic image size (the model resizes to its own)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()
    model = (clipforge.create_model(args.model, seed=0) if args.random_weights else clipforge.load(args.model)).eval()
    prec = resolve_precision("auto", "cpu")
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    s = model.config.vision.image_size
    x = torch.randn(args.batch_size, 3, s, s)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad(), autocast(prec, "cpu"):
        model.encode_image(x)
    flops_per_image = counter.get_total_flops() / args.batch_size
    peaks = [matmul_peak(dtype)]
    with torch.no_grad(), autocast(prec, "cpu"):
        model.encode_image(x)  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model.encode_image(x)
            times.append(time.perf_counter() - t)
    model_only = args.batch_size / statistics.median(times)
    peaks.append(matmul_peak(dtype))
    out = Path(tempfile.mkdtemp())
    try:
        r = embed_images(
            model, f"synthetic:n={args.n},size={args.size}", out, batch_size=args.batch_size,
            workers=args.workers, progress=False, captions=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
    peaks.append(matmul_peak(dtype))
    peak = statistics.median(peaks)
    print(f"machine: {cpu_flags()}; {torch.get_num_threads()} threads; torch {torch.__version__}; precision {prec}")
    print(f"matmul peak (n=2048) median {peak / 1e12:.2f} TFLOP/s over {len(peaks)} measurements")
    print(f"model {args.model} at {s} px: {flops_per_image / 1e9:.2f} GFLOP per image")
    for what, ips in (
        ("model alone, ready batches", model_only),
        (f"clipforge embed, {r.embedded} images", r.per_second),
    ):
        print(f"  {what:<34} {ips:8.1f} img/s  ({ips * flops_per_image / peak:.1%} of the peak)")


if __name__ == "__main__":
    main()
