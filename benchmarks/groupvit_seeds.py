"""The GroupViT `shapes` recipe over several training seeds, and variants of it, each run scored on the same
300 held-out scenes with the study's scoring function (`clipforge.systems.groupvit.study.score`, at background
threshold 0.5 and without the study's separate selection scenes): how often a setting reaches the good
outcome, not just what one seed gives.

    python benchmarks/groupvit_seeds.py --seeds 0,1,2                       # the recipe, one run at a time
    python benchmarks/groupvit_seeds.py --seeds 0-3 --jobs 8 \\
        --variant recipe --variant phrases:segment_prompts=phrases           # 8 runs side by side on a GPU

A run takes about 9 min on 2 AVX512-BF16 cores (`--jobs 1`); on a GPU machine the runs share the GPU, and
each of the `--jobs` processes gets an equal share of the CPU cores for its threads besides one data worker
(the synthetic renderer needs the cores). Prints one line per run and a table with a row per variant (each
seed's mIoU at threshold 0.5, where the recipe's learned background decides; the mean; how many runs cleared
that run's image-level label by 0.1, the study's claim) and writes it all, with each run's threshold sweep,
oracle mIoU and group naming, to OUT/seeds.json. Exits 1 if any run failed (its log is OUT/NAME_sSEED.log).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def seeds_of(spec: str) -> list[int]:
    """'0,2,5' or '0-3' (inclusive) -> the list of seeds."""
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def variant_of(spec: str) -> tuple[str, dict[str, str]]:
    """'NAME' or 'NAME:key=value,key=value' -> (NAME, its --set settings)."""
    name, _, sets = spec.partition(":")
    settings = dict(s.split("=", 1) for s in sets.split(",") if s)
    return name, settings


def one(out: str, seed: int, settings: dict[str, str], steps: int, scenes: int, threads: int) -> dict:
    """Train one run (in this process) and score it."""
    import torch

    from clipforge.systems.groupvit.recipes import SHAPES
    from clipforge.systems.groupvit.study import score
    from clipforge.train.prepare import train_recipe

    torch.set_num_threads(threads)
    start = time.time()
    batch, lr = SHAPES.train["batch_size"], SHAPES.train["lr"]
    model = train_recipe(
        "groupvit", "shapes", out, steps=steps, batch_size=batch, lr=lr, seed=seed, progress=False, settings=settings
    )
    trained = time.time() - start
    r = score(model, scenes, 1001, 0.5)
    return {
        "miou": round(r["scores"]["miou"], 4),
        "oracle_miou": round(r["oracle"]["miou"], 4),
        "image_label_miou": round(r["image_label"]["miou"], 4),
        "miou_by_threshold": {k: round(v, 4) for k, v in r["threshold_sweep"].items()},
        "named": {k: round(v, 3) for k, v in r["shape_groups"].items() if k.endswith("fraction")},
        "train_seconds": round(trained, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="training seeds: '0,1,2' or '0-3'")
    p.add_argument("--variant", action="append", help="NAME or NAME:key=value,... (--set of the recipe); repeatable")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--scenes", type=int, default=300, help="held-out scenes each run is scored on")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each its own process")
    p.add_argument("--out", default="groupvit_seeds")
    p.add_argument("--one", nargs=4, metavar=("OUT", "SEED", "SETTINGS", "THREADS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        result = one(a.one[0], int(a.one[1]), json.loads(a.one[2]), a.steps, a.scenes, int(a.one[3]))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    try:
        variants = [variant_of(v) for v in (a.variant or ["recipe"])]
        seeds = seeds_of(a.seeds)
    except ValueError:
        p.error("--seeds takes '0,1,2' or '0-3'; --variant takes NAME or NAME:key=value,...")
    if len({name for name, _ in variants}) < len(variants):
        p.error("each --variant needs a name of its own (it names the run folders)")
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    runs = [(name, sets, seed) for name, sets in variants for seed in seeds]
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, active, results = list(runs), [], {}
    start = time.time()
    while pending or active:
        while pending and len(active) < a.jobs:
            name, sets, seed = pending.pop(0)
            out = root / f"{name}_s{seed}"
            cmd = [sys.executable, __file__, "--one", str(out), str(seed), json.dumps(sets), str(threads)]
            cmd += ["--steps", str(a.steps), "--scenes", str(a.scenes)]
            log = open(f"{out}.log", "w")
            active.append((name, seed, out, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        for item in list(active):
            name, seed, out, log, proc = item
            if proc.poll() is None:
                continue
            active.remove(item)
            log.close()
            lines = Path(f"{out}.log").read_text().splitlines()
            found = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
            results[(name, seed)] = found[-1] if found else {"error": lines[-1] if lines else f"exit {proc.returncode}"}
            print(f"{name} seed {seed}: {json.dumps(results[(name, seed)])}", flush=True)
        time.sleep(1)
    summary = {}
    print(f"\n{len(runs)} runs in {time.time() - start:.0f} s, {a.jobs} at once")
    print("| variant | settings | mIoU per seed | mean | runs >= image-level + 0.1 |\n|---|---|---|---:|---:|")
    for name, sets in variants:
        rows = {seed: results[(name, seed)] for seed in seeds}
        ok = [r for r in rows.values() if "miou" in r]
        mean = round(sum(r["miou"] for r in ok) / len(ok), 4) if ok else None
        cleared = sum(r["miou"] >= r["image_label_miou"] + 0.1 for r in ok)
        per_seed = ", ".join(f"{s}: {r.get('miou', 'failed')}" for s, r in rows.items())
        shown = ", ".join(f"{k}={v}" for k, v in sets.items()) or "the recipe"
        shown_mean = "-" if mean is None else f"{mean:.3f}"
        print(f"| {name} | {shown} | {per_seed} | {shown_mean} | {cleared} of {len(rows)} |")
        summary[name] = {"settings": sets, "runs": {str(s): r for s, r in rows.items()}, "mean_miou": mean}
    (root / "seeds.json").write_text(json.dumps(summary, indent=1))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
