"""The ViLD study command: `clipforge study vild`."""

from __future__ import annotations

import argparse
import json

from ...registry import Verb


def _study_args(p: argparse.ArgumentParser) -> None:
    from .study import StudySettings

    d = StudySettings()
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the figure")
    p.add_argument("--clip", default=d.clip, help="the CLIP distilled and whose text embeds labels (default: shapes)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps of each detector")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--train-images", type=int, default=d.train_images, help="training scenes (distilled once)")
    p.add_argument("--test-images", type=int, default=d.test_images, help="held-out scenes scored")
    p.add_argument("--novel", default=d.novel, help="comma-separated shapes never boxed in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _study(args: argparse.Namespace) -> int:
    from .study import StudySettings, run_study

    s = StudySettings(
        clip=args.clip,
        steps=args.steps,
        batch_size=args.batch_size,
        train_images=args.train_images,
        test_images=args.test_images,
        novel=args.novel,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report = run_study(args.out, s)
    print(json.dumps({"out": args.out, "seconds": report["seconds"], "metrics": report["metrics"]}))
    return 0


STUDIES = {"vild": Verb("vild", "open-vocabulary detection: novel AP of ViLD vs ViLD-text", _study_args, _study)}
