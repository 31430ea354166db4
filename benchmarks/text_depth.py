"""How deep should the quickstart's text tower be? Trains tiny-rn with text towers of several depths,
each for the same wall-clock budget on this machine (the step count is calibrated per depth, as the
quickstart does), and prints zero-shot shape accuracy on the held-out colour-shape combinations
(shape-only prompts, 8-template ensemble; and with the colour directions projected out) and on seen
compositions. Everything else is the quickstart's recipe.

    python benchmarks/text_depth.py                      # depths 4, 2, 1 at 200 s each (~13 min)
    python benchmarks/text_depth.py --layers 4,1 --budget 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `clipforge quickstart` runs (see clipforge/cli.py)

import torch  # noqa: E402

from clipforge.eval.datasets import synthetic_labelled
from clipforge.eval.features import image_features
from clipforge.eval.zeroshot import zero_shot_classifier
from clipforge.systems.clip import CLIPTask
from clipforge.systems.clip.quickstart import MODEL, PROMPTS, _zeroshot_table, setup
from clipforge.train import TrainConfig, train


def run(layers: int, budget: float, seed: int, eval_images: int) -> dict:
    model, dataset, steps, s_per_step = setup(budget, seed, text_layers=layers)
    size = model.config.vision.image_size
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(
            CLIPTask(model),
            dataset,
            TrainConfig(
                out=tmp, steps=steps, batch_size=128, lr=1e-3, seed=seed, progress=False, log_every=max(1, steps // 10)
            ),
        )
        seconds = time.perf_counter() - t0
    model.eval()
    table, _ = _zeroshot_table(model, eval_images, size)
    seen = synthetic_labelled("val", "shape", eval_images, size, seed=11)
    clf = zero_shot_classifier(model, seen.classnames, PROMPTS["ensemble"])
    feats = image_features(model, seen, precision="auto")
    seen_acc = (clf.logits(feats).argmax(1) == torch.tensor(seen.labels)).float().mean().item()
    return {
        "text_layers": layers,
        "steps": steps,
        "s_per_step": round(s_per_step, 3),
        "train_seconds": round(seconds, 1),
        "heldout_shape": table["shape"]["ensemble"],
        "heldout_shape_debiased": table["shape_debiased"]["ensemble"],
        "heldout_composite": table["composite"]["ensemble"],
        "seen_shape": seen_acc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="4,2,1", help="comma-separated text tower depths")
    ap.add_argument("--budget", type=float, default=200.0, help="training seconds per depth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-images", type=int, default=800)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{MODEL}, batch 128, {args.budget:g} s of training per depth"
    )
    rows = []
    for layers in (int(x) for x in args.layers.split(",")):
        rows.append(run(layers, args.budget, args.seed, args.eval_images))
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| text layers | steps | s/step | held-out shape | held-out shape, debiased | "
        "held-out composite | seen shape |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['text_layers']} | {r['steps']} | {r['s_per_step']:.3f} | {r['heldout_shape']:.1%} | "
            f"{r['heldout_shape_debiased']:.1%} | {r['heldout_composite']:.1%} | {r['seen_shape']:.1%} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
