"""The CLIP system's own commands: `clipforge demo`, `zeroshot`, `quickstart` and `study efficiency`."""

from __future__ import annotations

import argparse
import json

from ...registry import Verb


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


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-vit")
    p.add_argument("--seed", type=int, default=0)


def _zeroshot(args: argparse.Namespace) -> int:
    import clipforge
    from clipforge.eval import zero_shot_classifier
    from clipforge.eval.datasets import LabelledImages
    from clipforge.eval.features import image_features
    from clipforge.eval.run import pick_device

    labels = [l.strip() for l in args.labels.split(",") if l.strip()]
    if len(labels) < 2:
        raise clipforge.ConfigError("give at least two comma-separated --labels")
    model = clipforge.load(args.model, **({"act": args.act} if args.act else {})).to(pick_device(args.device))
    clf = zero_shot_classifier(model, labels, args.templates)
    files = LabelledImages(list(args.images), [0] * len(args.images), labels, "images")
    tops = clf.classify(image_features(model, files, batch_size=args.batch_size), k=args.top)
    results = [
        {"image": path, "predictions": [{"label": l, "prob": round(p, 4)} for l, p in top]}
        for path, top in zip(args.images, tops)
    ]
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            preds = ", ".join(f"{p['label']} {p['prob']:.2f}" for p in r["predictions"])
            print(f"{r['image']}: {preds}")
    return 0


def _zeroshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+")
    p.add_argument(
        "--model", required=True, help="weights: a checkpoint, hf-hub:ORG/REPO or a pretrained name (shapes, ViT-B-32)"
    )
    p.add_argument("--labels", required=True, help='comma-separated class names, e.g. "cat,dog,bird"')
    p.add_argument(
        "--templates", default="openai80", help="built-in set (openai80, openai7, photo, bare, ...) or a file"
    )
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--act", default=None, choices=["gelu", "quick_gelu"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: a GPU if there is one)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")


def _quickstart(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .quickstart import run_quickstart

    report = run_quickstart(args.out, minutes=args.minutes, seed=args.seed, progress=not args.no_progress)
    print()
    print(Path(report["files"]["report"]).read_text())
    print(f"report: {args.out}/report.json, {args.out}/report.md")
    return 0


def _quickstart_args(p: argparse.ArgumentParser) -> None:
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


def _study(args: argparse.Namespace) -> int:
    from clipforge.errors import ConfigError

    from .study import ORDER, run_efficiency_study

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


def _study_args(p: argparse.ArgumentParser) -> None:
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


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a CLIP: checkpoint, hf-hub:ORG/REPO or pretrained name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--images",
        help="a folder, a .csv/.tsv of (image, caption), WebDataset shards (a-{000..009}.tar), synthetic:n=...",
    )
    src.add_argument("--texts", help="a file of texts, one per line")
    p.add_argument("--out", required=True, help="embeddings folder: img_emb/, text_emb/, metadata/ (clip-retrieval's)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: 256 images, 1024 texts)")
    p.add_argument("--shard-size", type=int, default=10_000, help="rows per .npy/.parquet shard (the unit of resume)")
    p.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: half the threads)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="of the stored embeddings")
    p.add_argument("--no-captions", action="store_true", help="do not embed the source's captions (text_emb)")
    p.add_argument("--act", default=None, choices=["gelu", "quick_gelu"])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: a GPU if there is one)")
    p.add_argument("--compile", action="store_true", help="torch.compile the image tower (pays back on large folders)")
    p.add_argument("--no-progress", action="store_true")


def _embed(args: argparse.Namespace) -> int:
    import json

    from ...checkpoints import load
    from ...embed import embed_images, embed_texts
    from ...eval.run import pick_device

    model = load(args.model, **({"act": args.act} if args.act else {})).to(pick_device(args.device)).eval()
    if not hasattr(model, "encode_image"):
        from ...errors import ConfigError

        raise ConfigError(f"{args.model} is not a CLIP model (clipforge embed needs encode_image/encode_text)")
    batch = {"batch_size": args.batch_size} if args.batch_size else {}  # else each function's own default
    if args.texts:
        if args.compile:
            import sys

            print("note: --compile applies to the image tower; the texts are embedded without it", file=sys.stderr)
        result = embed_texts(model, args.texts, args.out, precision=args.precision, dtype=args.dtype, **batch)
    else:
        result = embed_images(
            model, args.images, args.out, shard_size=args.shard_size, workers=args.workers,
            precision=args.precision, captions=not args.no_captions, dtype=args.dtype,
            progress=not args.no_progress, model_name=args.model, compile=args.compile, **batch,
        )  # fmt: skip
    print(json.dumps(result.__dict__))
    return 0


VERBS = (
    Verb("embed", "embed a folder, CSV, WebDataset or file of texts into clip-retrieval's layout", _embed_args, _embed),
    Verb("demo", "zero-shot demo on drawn shapes (random weights)", _demo_args, _demo),
    Verb("zeroshot", "classify images by text labels", _zeroshot_args, _zeroshot),
    Verb(
        "quickstart",
        "train a small CLIP on the synthetic world and report what it learned",
        _quickstart_args,
        _quickstart,
    ),
)
STUDIES = {
    "efficiency": Verb("efficiency", "the CLIP paper's comparison of pre-training objectives", _study_args, _study),
}
