"""The `clipforge` command. Each subcommand is a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    """Zero-shot classification of a few drawn shapes with a randomly initialised model."""
    import torch
    from PIL import Image, ImageDraw

    import clipforge

    model = clipforge.create_model(args.model, seed=args.seed).eval()
    preprocess = clipforge.preprocess(model)
    colours = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 30)}
    shapes = ["circle", "square"]
    images, truth = [], []
    for i, (colour, rgb) in enumerate(colours.items()):
        shape = shapes[i % 2]
        img = Image.new("RGB", (96, 96), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        (draw.ellipse if shape == "circle" else draw.rectangle)((20, 20, 76, 76), fill=rgb)
        images.append(preprocess(img))
        truth.append(f"{colour} {shape}")
    labels = [f"{c} {s}" for c in colours for s in shapes]
    tokens = clipforge.tokenize([f"a photo of a {label}." for label in labels])
    with torch.no_grad():
        out = model(torch.stack(images), tokens)
        probs = out.logits_per_image.softmax(dim=-1)
    print(
        f"clipforge {clipforge.__version__}: zero-shot demo with a RANDOMLY INITIALISED {args.model} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)."
    )
    print("Untrained, so predictions are at chance (1/8); training arrives with `clipforge train`.\n")
    correct = 0
    for t, p in zip(truth, probs):
        top = p.topk(3)
        preds = ", ".join(f"{labels[i]} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        correct += labels[int(top.indices[0])] == t
        print(f"  image of a {t:<14} -> {preds}")
    print(f"\ntop-1 accuracy on these {len(truth)} images: {correct}/{len(truth)}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import clipforge

    for name in clipforge.list_models():
        cfg = clipforge.get_config(name)
        print(
            f"{name:<20} {cfg.vision.kind:<6} image {cfg.vision.image_size:<4} embed {cfg.embed_dim:<5} "
            f"act {cfg.vision.act}"
        )
    return 0


def _convert(args: argparse.Namespace) -> int:
    import clipforge

    model = clipforge.load(args.src, model=args.model, act=args.act)
    path = clipforge.save(model, args.dst, format=args.format)
    print(
        json.dumps(
            {"from": args.src, "to": str(path), "format": args.format, "config": model.config.to_dict()}, indent=None
        )
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    import clipforge
    from clipforge.config import parse_overrides
    from clipforge.data import build_dataset
    from clipforge.tasks import CLIPTask
    from clipforge.train import TrainConfig, train

    cfg = TrainConfig(
        out=args.out,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        accum_steps=args.accum_steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        grad_clip=args.grad_clip or None,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        lock_image=args.lock_image,
        lock_image_unlocked=args.lock_image_unlocked,
        lock_text=args.lock_text,
        lock_text_unlocked=args.lock_text_unlocked,
        seed=args.seed,
        workers=args.workers,
        log_every=args.log_every,
        checkpoint_every_s=args.checkpoint_every,
        checkpoint_every_steps=args.checkpoint_every_steps,
        on_nan=args.on_nan,
        resume=args.resume,
        progress=not args.no_progress,
    )
    model = clipforge.create_model(args.model, seed=args.seed, **parse_overrides(args.set))
    size = model.config.vision.image_size
    dataset, info = build_dataset(args.data, clipforge.image_transform(size, train=True), size, seed=args.seed)
    if info.get("uncaptioned_images"):
        print(f"note: {info['uncaptioned_images']} images have no caption file and are not used", file=sys.stderr)
    result = train(CLIPTask(model, setup=cfg), dataset, cfg)
    from clipforge.distributed import rank, world_size

    if rank() == 0:
        path = clipforge.save(model, f"{args.out}/model.safetensors")
        losses = [r["loss"] for r in result.history if r.get("loss") is not None]
        print(
            json.dumps(
                {
                    "steps": result.step,
                    "world_size": world_size(),
                    "seconds": round(result.seconds, 1),
                    "samples_per_s": round(result.samples_per_s, 1),
                    "first_logged_loss": losses[0] if losses else None,
                    "final_loss": result.final_loss,
                    "skipped_samples": result.skipped_samples,
                    "skipped_steps": result.skipped_steps,
                    "data_wait_frac": round(result.data_wait_frac, 4),
                    "model": str(path),
                    "metrics": f"{args.out}/metrics.jsonl",
                    "plot": f"{args.out}/curves.png",
                }
            )
        )
    return 0


def _data(args: argparse.Namespace) -> int:
    from clipforge.data.export import write_csv_folder, write_webdataset
    from clipforge.data.synthetic import SyntheticWorld

    world = SyntheticWorld(args.n, args.size, args.split, args.seed)
    if args.format == "csv":
        where = write_csv_folder(world, args.out, progress=True)
    else:
        where = write_webdataset(world, args.out, args.shard_size, progress=True)
    print(json.dumps({"samples": args.n, "split": args.split, "format": args.format, "data": str(where)}))
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    import torch

    import clipforge
    from clipforge.eval import zero_shot_classifier

    model = (
        clipforge.load(args.model, act=args.act)
        if args.model not in clipforge.list_models()
        else clipforge.create_model(args.model)
    )
    labels = [l.strip() for l in args.labels.split(",") if l.strip()]
    if len(labels) < 2:
        raise clipforge.ConfigError("give at least two comma-separated --labels")
    clf = zero_shot_classifier(model, labels, args.templates)
    preprocess = clipforge.preprocess(model)
    results = []
    for path in args.images:
        with torch.no_grad():
            feats = model.encode_image(preprocess(clipforge.load_image(path))[None])
        top = clf.classify(feats, k=args.top)[0]
        results.append({"image": path, "predictions": [{"label": l, "prob": round(p, 4)} for l, p in top]})
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            preds = ", ".join(f"{p['label']} {p['prob']:.2f}" for p in r["predictions"])
            print(f"{r['image']}: {preds}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import clipforge
    from clipforge.eval.run import format_table, run_eval, write_json

    model = clipforge.load(args.model, act=args.act)
    result = run_eval(model, args.task, args.data, args.templates, model_name=args.model)
    print(format_table(result))
    if args.out:
        write_json(result, args.out)
        print(f"\nwrote {args.out}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipforge.quickstart import run_quickstart

    report = run_quickstart(args.out, minutes=args.minutes, seed=args.seed, progress=not args.no_progress)
    print()
    print(Path(report["files"]["report"]).read_text())
    print(f"report: {args.out}/report.json, {args.out}/report.md")
    return 0


def _study(args: argparse.Namespace) -> int:
    from clipforge.errors import ConfigError
    from clipforge.study import ORDER, run_efficiency_study

    eval_data = None
    if args.eval:
        eval_data = {}
        for item in args.eval:
            name, sep, spec = item.partition("=")
            if not sep or not name or not spec:
                raise ConfigError(
                    f"--eval takes NAME=SPEC (e.g. heldout=synthetic:label=shape,split=heldout), got {item!r}"
                )
            eval_data[name] = spec
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()] if args.objectives else list(ORDER)
    budget = {"images": args.images} if args.images else {}
    run_efficiency_study(
        args.out,
        data=args.data,
        model=args.model,
        **budget,
        batch_size=args.batch_size,
        evals=args.evals,
        lr=args.lr,
        objectives=objectives,
        eval_data=eval_data,
        templates=args.templates,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(f"report: {args.out}/report.json, {args.out}/report.md, {args.out}/curves.png")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="preset name (see `clipforge models`)")
    p.add_argument(
        "--data", required=True, help="synthetic[:n=..,size=..], a .csv/.tsv, a caption folder or .tar shards"
    )
    p.add_argument("--out", required=True, help="output folder")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int)
    length.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks and micro-batches)")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per step (exact for the contrastive loss)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.2)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5%% of steps)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 autocast where the hardware has native bf16 matmul, else fp32",
    )
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--lock-image", action="store_true", help="freeze the image tower (LiT)")
    p.add_argument("--lock-image-unlocked", type=int, default=0, help="...but train its last N blocks")
    p.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    p.add_argument("--lock-text-unlocked", type=int, default=0, help="...but train its last N blocks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="data-loading processes per rank")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between checkpoints")
    p.add_argument("--checkpoint-every-steps", type=int, default=None)
    p.add_argument("--on-nan", choices=["stop", "skip"], default="stop")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --set text.layers=6 --set vision.image_size=32",
    )
    p.set_defaults(func=_train)


class _Parser(argparse.ArgumentParser):
    """Unknown options name the close valid ones instead of only saying 'unrecognized'."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extra = super().parse_known_args(args, namespace)
        bad = [a.split("=")[0] for a in extra if a.startswith("--")]
        if bad:
            import difflib

            sub = getattr(ns, "_parser", self)
            valid = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
            hints = {b: difflib.get_close_matches(b, valid, n=2) for b in bad}
            msg = "; ".join(f"{b} (did you mean {' or '.join(h)}?)" if h else b for b, h in hints.items())
            self.error(f"unknown option(s): {msg}. Valid options: {' '.join(sorted(valid))}")
        return ns, extra


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clipforge", description="CLIP models: train, load, convert, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
    p = sub.add_parser("demo", help="zero-shot demo on drawn shapes (random weights)")
    p.add_argument("--model", default="tiny-vit")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)
    p = sub.add_parser("models", help="list the model presets")
    p.set_defaults(func=_models)
    p = sub.add_parser("convert", help="convert a checkpoint between formats (clipforge, hf, openai)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", default="clipforge", choices=["clipforge", "hf", "openai"])
    p.add_argument("--model", default=None, help="preset naming the architecture where weights cannot tell it")
    p.add_argument("--act", default=None, choices=["gelu", "quick_gelu"])
    p.set_defaults(func=_convert)
    p = sub.add_parser("quickstart", help="train a small CLIP on the synthetic world and report what it learned")
    p.add_argument("--out", default="quickstart")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget, calibrated to this machine (default: 5, stretched on slow machines to "
        "the ~1,500 steps held-out shapes need)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_quickstart)
    p = sub.add_parser("study", help="reproducible studies (efficiency: the CLIP paper's objective comparison)")
    p.add_argument("study", choices=["efficiency"])
    p.add_argument("--out", default="study-efficiency")
    p.add_argument("--data", default="synthetic", help="training data spec (as for `clipforge train`)")
    p.add_argument("--model", default="tiny-rn", help="preset whose image tower every objective shares")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="images seen per objective, the budget (default: sized to finish in ~20 min on 2 CPU cores)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--evals", type=int, default=8, help="zero-shot evaluations during training (plus one at the start)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--objectives",
        default=None,
        help="comma-separated subset of captioning,bow-prediction,bow-contrastive,clip (default: all)",
    )
    p.add_argument(
        "--eval",
        action="append",
        metavar="NAME=SPEC",
        help="zero-shot set (repeatable): digits, a class-folder root or synthetic:label=...; the first "
        "is the headline (default: held-out and seen synthetic colour-shape composites)",
    )
    p.add_argument("--templates", default="synthetic1", help="prompt templates (built-in set or a file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_study)
    p = sub.add_parser("zeroshot", help="classify images by text labels")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", required=True, help="checkpoint path (any supported format) or preset name")
    p.add_argument("--labels", required=True, help='comma-separated class names, e.g. "cat,dog,bird"')
    p.add_argument(
        "--templates", default="openai80", help="built-in set (openai80, openai7, photo, bare, ...) or a file"
    )
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--act", default=None, choices=["gelu", "quick_gelu"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_zeroshot)
    p = sub.add_parser("eval", help="zero-shot, retrieval, linear-probe or few-shot benchmark")
    p.add_argument("--model", required=True, help="checkpoint path (any supported format)")
    p.add_argument("--task", required=True, choices=["zeroshot", "retrieval", "linear-probe", "fewshot"])
    p.add_argument(
        "--data", required=True, help="digits, synthetic[:label=shape,...], class-folder root, or caption data"
    )
    p.add_argument("--templates", default="photo", help="template set or file (zero-shot)")
    p.add_argument("--act", default=None, choices=["gelu", "quick_gelu"])
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.set_defaults(func=_eval)
    p = sub.add_parser("data", help="write the synthetic world as a CSV folder or WebDataset shards")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["csv", "wds"], default="wds")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--split", choices=["train", "val", "heldout"], default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1000)
    p.set_defaults(func=_data)
    p = sub.add_parser("train", help="train a CLIP model (runs under torchrun too)")
    _add_train_args(p)
    p.set_defaults(_parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import ClipforgeError

    try:
        return args.func(args)
    except ClipforgeError as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
