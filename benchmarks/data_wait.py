"""Fraction of training-step time spent waiting for data, small preset on the synthetic world.

    python benchmarks/data_wait.py --model tiny-rn --steps 60 --batch 128 --workers 1 [--text-layers 1]

The trainer times `next(loader)` against the whole step; this prints the mean over logged windows
(the first window, which includes worker start-up, is reported separately).
"""

from __future__ import annotations

import argparse
import tempfile

import clipforge
from clipforge.data import build_dataset
from clipforge.systems.clip import CLIPTask
from clipforge.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-rn")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--text-layers", type=int, help="override the preset's text tower depth (the quickstart uses 1)")
    args = p.parse_args()
    text = {"text": {"layers": args.text_layers}} if args.text_layers else {}
    model = clipforge.create_model(args.model, seed=0, **text)
    size = model.config.vision.image_size
    ds, _ = build_dataset("synthetic:n=100000", clipforge.image_transform(size, train=True), size)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            out=out, steps=args.steps, batch_size=args.batch, workers=args.workers, progress=False, log_every=10
        )
        res = train(CLIPTask(model), ds, cfg)
    rows = [r for r in res.history if "data_wait_frac" in r]
    steady = [r["data_wait_frac"] for r in rows[1:]] or [rows[0]["data_wait_frac"]]
    print(
        f"{args.model}, batch {args.batch}, {args.workers} worker(s): {res.samples_per_s:.0f} samples/s; "
        f"waiting for data {sum(steady) / len(steady):.1%} of step time (first window incl. start-up: "
        f"{rows[0]['data_wait_frac']:.1%})"
    )


if __name__ == "__main__":
    main()
