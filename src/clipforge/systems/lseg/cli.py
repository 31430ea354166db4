"""The LSeg commands: `clipforge segment` and `clipforge study lseg`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...registry import Verb


def _segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files to segment")
    p.add_argument("--model", required=True, help="an LSeg checkpoint (clipforge train lseg ...)")
    p.add_argument("--labels", required=True, help='comma-separated label texts, e.g. "circle,square,background"')
    p.add_argument("--out", default="segments", help="folder for NAME.overlay.png, NAME.mask.png and areas.json")
    p.add_argument("--templates", default=None, help="prompt templates of the labels (default: the model's own)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: a GPU if there is one)")


def _segment(args: argparse.Namespace) -> int:
    from ...checkpoints import load
    from ...errors import ConfigError
    from ...eval.run import pick_device, write_json
    from ...eval.segmentation import write_mask
    from ...transforms import load_image
    from .infer import overlay, parse_labels, segment
    from .model import LSeg

    labels = parse_labels(args.labels)
    model = load(args.model)
    if not isinstance(model, LSeg):
        raise ConfigError(f"{args.model} holds a {type(model).__name__}, not an LSeg model (clipforge train lseg)")
    model = model.to(pick_device(args.device)).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "labels": labels, "images": {}}
    for path in args.images:
        image = load_image(path).convert("RGB")
        (result,) = segment(model, [image], labels, args.templates)
        stem = Path(path).stem
        overlay(image, result.mask, labels).save(out / f"{stem}.overlay.png")
        write_mask(result.mask, out / f"{stem}.mask.png")
        report["images"][str(path)] = {
            "overlay": str(out / f"{stem}.overlay.png"),
            "mask": str(out / f"{stem}.mask.png"),
            "areas": result.areas,
        }
    write_json(report, out / "areas.json")
    print(json.dumps({"images": len(args.images), "out": str(out), "areas": str(out / "areas.json")}))
    return 0


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


VERBS = (Verb("segment", "label every pixel of images with any label texts (LSeg)", _segment_args, _segment),)
STUDIES = {"lseg": Verb("lseg", "PASCAL-5i-style zero-shot folds on the synthetic world", _study_args, _study)}
