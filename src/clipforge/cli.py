"""The `clipforge` command. Each subcommand is a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


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
    print(f"clipforge {clipforge.__version__}: zero-shot demo with a RANDOMLY INITIALISED {args.model} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters).")
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
        print(f"{name:<20} {cfg.vision.kind:<6} image {cfg.vision.image_size:<4} embed {cfg.embed_dim:<5} "
              f"act {cfg.vision.act}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import clipforge

    model = clipforge.load(args.src, model=args.model, act=args.act)
    path = clipforge.save(model, args.dst, format=args.format)
    print(json.dumps({"from": args.src, "to": str(path), "format": args.format,
                      "config": model.config.to_dict()}, indent=None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforge", description="CLIP models: train, load, convert, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
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
