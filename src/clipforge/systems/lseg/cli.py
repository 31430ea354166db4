"""The LSeg study command: `clipforge study lseg` (`clipforge segment` is shared: clipforge.dense)."""

from __future__ import annotations

import argparse
import json

from ...registry import Verb


def _study_args(p: argparse.ArgumentParser) -> None:
    from .study import StudySettings

    defaults = StudySettings()
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the figure")
    p.add_argument("--clip", default=defaults.clip, help="the CLIP to build on (default: shapes)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="training steps per fold")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--folds", default="0,1,2,3", help="which of the 4 folds to run (comma-separated)")
    p.add_argument("--test-images", type=int, default=defaults.test_images, help="held-out scenes scored per fold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _study(args: argparse.Namespace) -> int:
    from .study import StudySettings, run_study

    folds = tuple(int(f) for f in args.folds.split(",") if f.strip())
    settings = StudySettings(
        clip=args.clip,
        steps=args.steps,
        batch_size=args.batch_size,
        folds=folds,
        test_images=args.test_images,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report = run_study(args.out, settings)
    print(json.dumps({"out": args.out, "seconds": report["seconds"], "metrics": report["metrics"]}))
    return 0


STUDIES = {"lseg": Verb("lseg", "PASCAL-5i-style zero-shot folds on the synthetic world", _study_args, _study)}
