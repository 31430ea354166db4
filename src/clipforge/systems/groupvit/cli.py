"""The GroupViT study command: `clipforge study groupvit`."""

from __future__ import annotations

import argparse
import json

from ...registry import Verb


def _study_args(p: argparse.ArgumentParser) -> None:
    from .study import StudySettings

    d = StudySettings()
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the figures")
    p.add_argument("--clip", default=d.clip, help="the CLIP whose text tower is used (default: shapes)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--test-images", type=int, default=d.test_images, help="held-out scenes scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _study(args: argparse.Namespace) -> int:
    from .study import StudySettings, run_study

    s = StudySettings(
        clip=args.clip,
        steps=args.steps,
        batch_size=args.batch_size,
        test_images=args.test_images,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report = run_study(args.out, s)
    print(json.dumps({"out": args.out, "seconds": report["seconds"], "metrics": report["metrics"]}))
    return 0


STUDIES = {"groupvit": Verb("groupvit", "zero-shot segmentation learned from captions alone", _study_args, _study)}
