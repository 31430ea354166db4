"""Peak memory of the contrastive loss (forward + backward) for N embeddings: the plain loss, which
materialises N x N logits, against clipforge's chunked loss. Each case runs in a fresh process and
reports its peak resident-memory increase over the inputs (ru_maxrss), plus the wall time.

    python benchmarks/loss_memory.py                 # N = 16384 both, N = 65536 chunked only
    python benchmarks/loss_memory.py --n 16384 65536 --plain-max 16384
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _case(kind: str, n: int, dim: int, chunk: int) -> None:
    import torch

    from clipforge.losses import clip_loss, clip_loss_chunked

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1).requires_grad_(True)
    txt = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1).requires_grad_(True)
    scale = torch.tensor(14.3, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = clip_loss(img, txt, scale) if kind == "plain" else clip_loss_chunked(img, txt, scale, chunk)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "kind": kind,
                "n": n,
                "dim": dim,
                "chunk": chunk,
                "loss": loss.item(),
                "peak_extra_mib": (peak - base) / 1024,
                "seconds": seconds,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--plain-max", type=int, default=16384, help="largest N to run the plain loss at")
    p.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        _case(args.case[0], int(args.case[1]), args.dim, int(args.case[2]))
        return
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    rows = []
    for n in args.n:
        for kind in ("plain", "chunked"):
            if kind == "plain" and n > args.plain_max:
                print(f"plain   N={n:>6}: skipped (its {n}x{n} fp32 logits alone are {n * n * 4 / 2**30:.1f} GiB)")
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--dim", str(args.dim), "--case", kind, str(n), str(args.chunk)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{kind:<7} N={n:>6}: loss {row['loss']:.5f}  peak +{row['peak_extra_mib']:8.1f} MiB  "
                f"{row['seconds']:6.1f} s"
            )
    for n in args.n:
        pair = {r["kind"]: r for r in rows if r["n"] == n}
        if len(pair) == 2:
            print(
                f"N={n}: chunked uses {pair['plain']['peak_extra_mib'] / pair['chunked']['peak_extra_mib']:.1f}x "
                f"less peak memory; losses differ by {abs(pair['plain']['loss'] - pair['chunked']['loss']):.2e}"
            )


if __name__ == "__main__":
    main()
