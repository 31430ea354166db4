"""`clipforge embed` over synthetic images: images/s end to end (rendering/decoding in workers, the
model, writing shards), beside the model alone on ready batches, as a share of this machine's matmul
peak measured in the same run (before, between and after the cases).

    python benchmarks/embed_speed.py --model shapes --n 10000
    python benchmarks/embed_speed.py --model ViT-B-32 --n 10000 --size 224 --random-weights
    python benchmarks/embed_speed.py --model ViT-B-32 --random-weights --batch-size 128 --compile-rounds 5 --n 0

`--compile-rounds N`: the image tower as `clipforge embed` runs it, eager against `--compile`d, on the
same ready batch, alternating which goes first round by round; medians, min-max and the compile time.
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
    p.add_argument("--compile-rounds", type=int, default=0, help="rounds of eager vs compiled (0: skip)")
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
    if args.compile_rounds:
        compare_compiled(model, prec, x, args.compile_rounds, flops_per_image, peaks)
    if args.n <= 0:
        return
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


def compare_compiled(model, prec: str, x: torch.Tensor, rounds: int, flops_per_image: float, peaks: list) -> None:
    """Eager and compiled runners of `clipforge embed` on one ready batch, alternating."""
    from clipforge.embed import _runner

    eager, in_dtype, ctx = _runner(model, prec)
    compiled, _, _ = _runner(model, prec, compile=True)
    x = x.to(dtype=in_dtype) if in_dtype is not None else x
    with torch.no_grad(), ctx():
        t = time.perf_counter()
        yc = compiled.encode_image(x)
        compile_s = time.perf_counter() - t
        ye = eager.encode_image(x)
        cos = torch.nn.functional.cosine_similarity(yc.float(), ye.float()).min().item()
        speed = {"eager": [], "compiled": []}
        for i in range(rounds):
            order = (("eager", eager), ("compiled", compiled))
            for name, runner in order if i % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                runner.encode_image(x)
                speed[name].append(len(x) / (time.perf_counter() - t))
    peaks.append(matmul_peak(torch.bfloat16 if prec == "bf16" else torch.float32))
    peak = statistics.median(peaks)
    print(f"eager vs compiled image tower, batch {len(x)}, {rounds} alternating rounds (compile {compile_s:.1f} s, "
          f"min cosine {cos:.5f}); matmul peak {peak / 1e12:.2f} TFLOP/s")  # fmt: skip
    for name, v in speed.items():
        med = statistics.median(v)
        share = med * flops_per_image / peak
        print(f"  {name:<9} {med:7.1f} img/s ({min(v):.1f}-{max(v):.1f}), {share:.1%} of the peak")
    ratios = [c / e for e, c in zip(speed["eager"], speed["compiled"])]
    print(f"  compiled / eager: median {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
