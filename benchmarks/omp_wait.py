"""OpenMP's wait policy beside data workers: `clipforge train|quickstart|study` set OMP_WAIT_POLICY=PASSIVE
(clipforge/__init__.py) because PyTorch's busy-waiting threads fight the data workers for the cores.
This runs `data_wait.py` (the quickstart's model and batch) in fresh processes under each policy, with
one data worker and with none, alternating the policies, and prints samples/s side by side.

    python benchmarks/omp_wait.py [--repeats 2] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    script = Path(__file__).with_name("data_wait.py")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    results: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.repeats):
        for workers in (1, 0):
            for policy in ("default", "PASSIVE"):
                env = dict(base, **({} if policy == "default" else {"OMP_WAIT_POLICY": policy}))
                out = subprocess.run(
                    [
                        sys.executable,
                        str(script),
                        "--model",
                        "tiny-rn",
                        "--text-layers",
                        "1",
                        "--batch",
                        "128",
                        "--steps",
                        str(args.steps),
                        "--workers",
                        str(workers),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rate = float(re.search(r"([\d.]+) samples/s", out).group(1))
                results.setdefault((workers, policy), []).append(rate)
                print(f"workers={workers} OMP_WAIT_POLICY={policy}: {out.strip()}", flush=True)
    print("\n| data workers | default (samples/s) | PASSIVE (samples/s) | ratio |\n|---|---|---|---|")
    for workers in (1, 0):
        d, q = (sum(results[workers, k]) / len(results[workers, k]) for k in ("default", "PASSIVE"))
        print(f"| {workers} | {d:.0f} | {q:.0f} | {q / d:.2f}x |")


if __name__ == "__main__":
    main()
