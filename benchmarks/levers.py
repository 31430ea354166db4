"""Each speed lever of clipforge measured on its own, on the same inputs, with the output difference
it causes (a lever is kept only if the outputs stay within tolerance):

- precision: bf16 autocast vs fp32 (matmul peak and the quickstart model's training step), and what
  precision "auto" picks on this machine;
- text trimming: the text tower on captions of 5-25 words padded to 77 vs trimmed to the longest
  caption in the batch (exact for a causal tower pooled at end-of-text);
- pooled forward: encode_image/encode_text (last block for the pooled token only, text padding after
  end-of-text dropped) vs running every token through every block and pooling;
- channels-last: a ResNet image tower with NCHW vs channels-last memory format;
- optimiser: AdamW for-loop vs foreach vs fused, one step over a model's parameters;
- torch.compile: a training step (forward, loss, backward) eager vs compiled.

Levers other than the first run in `--precision` (default auto: bf16 where native, else fp32).

    python benchmarks/levers.py                          # ViT-B-32 text/pooled/optimiser, RN50 channels-last,
                                                         # small-vit compile
    python benchmarks/levers.py --quick                  # tiny presets, seconds (a smoke test)
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

import clipforge
from clipforge.precision import autocast, native_bf16, resolve_precision
from vs_transformers import batch as make_batch
from vs_transformers import captions, matmul_peak

PRECISION = "fp32"  # set in main()


def per_s(fn, n: int, reps: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return n * reps / (time.perf_counter() - start)


def alternating(fns: dict, n: int, reps: int) -> dict:
    """Items per second of each callable, timed in turns (a, b, a, b, ...) after one warm-up call each,
    best of `reps`: on a VM whose speed drifts, both sides then see the same conditions."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return {k: n / v for k, v in best.items()}


@torch.no_grad()
def text_trimming(name: str, batch: int) -> None:
    model = clipforge.create_model(name, seed=0).eval()
    tokens = clipforge.tokenize(captions(batch, random.Random(0)), truncate=True)
    longest = int((tokens != 0).sum(1).max())
    with autocast(PRECISION):
        padded = per_s(lambda: model.encode_text(tokens), batch)
        trimmed = per_s(lambda: model.encode_text(tokens[:, :longest]), batch)
    diff = (model.encode_text(tokens) - model.encode_text(tokens[:, :longest])).abs().max().item()
    print(
        f"text trimming ({name}, batch {batch}, 77 -> {longest} tokens, {PRECISION}): "
        f"{padded:.1f} -> {trimmed:.1f} txt/s "
        f"({trimmed / padded:.2f}x); fp32 max |difference| {diff:.2e}"
    )


def precision_choice(batch: int, steps: int) -> None:
    """bf16 autocast vs fp32 on this machine: matmul peak and the quickstart model's training step."""
    from clipforge.systems.clip.quickstart import MODEL, TEXT_LAYERS

    peaks = {p: matmul_peak(torch.bfloat16 if p == "bf16" else torch.float32, n=1024, reps=3) for p in ("bf16", "fp32")}
    images, tokens, _ = make_batch(batch, clipforge.get_config(MODEL).vision.image_size, random.Random(0))
    rates = {}
    for precision in ("fp32", "bf16"):
        model = clipforge.create_model(MODEL, seed=0, text={"layers": TEXT_LAYERS}).train()

        def step(precision=precision, model=model) -> None:
            with autocast(precision):
                out = model(images, tokens)
            clipforge.clip_loss(out.image_embeds, out.text_embeds, out.logit_scale).backward()

        rates[precision] = per_s(step, batch, reps=steps)
    print(
        f"precision: matmul peak bf16 {peaks['bf16'] / 1e12:.3f} vs fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s; "
        f"{MODEL} ({TEXT_LAYERS}-layer text) training step at batch {batch}: bf16 {rates['bf16']:.1f} vs fp32 "
        f"{rates['fp32']:.1f} pairs/s ({rates['bf16'] / rates['fp32']:.2f}x); native bf16: {native_bf16('cpu')}, "
        f"'auto' picks {resolve_precision('auto')}"
    )


def pooled_forward(name: str, batch: int, reps: int) -> None:
    """encode_image / encode_text against the every-token path they shortcut, inference and training."""
    model = clipforge.create_model(name, seed=0)
    images, tokens, mask = make_batch(batch, model.config.vision.image_size, random.Random(0))
    real = int(mask.sum())
    paths = {
        "image": (
            lambda: model.encode_image(images),
            lambda: model.visual.ln_post(model.visual.tokens(images)[:, 0]) @ model.visual.proj,
        ),
        "text": (lambda: model.encode_text(tokens), lambda: model.text.pool(model.text.tokens(tokens), tokens)),
    }

    def train_step(fn) -> None:
        with autocast(PRECISION):
            fn().float().square().mean().backward()

    for tower, (pooled, full) in paths.items():
        model.eval()
        with torch.no_grad(), autocast(PRECISION):
            rates = alternating({"every token": full, "pooled": pooled}, batch, reps)
        model.train()
        rates.update(
            alternating(
                {
                    "every token train": lambda full=full: train_step(full),
                    "pooled train": lambda pooled=pooled: train_step(pooled),
                },
                batch,
                reps,
            )
        )
        with torch.no_grad():
            model.eval()
            diff = (pooled() - full()).abs().max().item()
        extra = f", {real} of {tokens.numel()} text tokens before end-of-text" if tower == "text" else ""
        print(
            f"pooled forward ({name} {tower} tower, batch {batch}{extra}, {PRECISION}): inference "
            f"{rates['every token']:.1f} -> {rates['pooled']:.1f}/s ({rates['pooled'] / rates['every token']:.2f}x), "
            f"forward+backward {rates['every token train']:.1f} -> {rates['pooled train']:.1f}/s "
            f"({rates['pooled train'] / rates['every token train']:.2f}x); fp32 max |difference| {diff:.1e}"
        )


def channels_last(name: str, batch: int) -> None:
    """The image tower's inference and training step (forward + backward) with NCHW vs channels-last."""
    model = clipforge.create_model(name, seed=0).eval()
    size = model.config.vision.image_size
    images = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        ref = model.encode_image(images)
    rates = {}
    for fmt in ("contiguous", "channels_last"):
        model.visual.channels_last = fmt == "channels_last"  # the tower converts its input when set

        def train_step() -> None:
            with autocast(PRECISION):
                model.encode_image(images).float().square().mean().backward()

        with torch.no_grad(), autocast(PRECISION):
            rates[fmt] = per_s(lambda: model.encode_image(images), batch)
            out = model.encode_image(images).float()
        rates[fmt + "_train"] = per_s(train_step, batch)
        cos = F.cosine_similarity(ref, out, dim=-1).min().item()
        print(
            f"channels-last ({name}, batch {batch}, {PRECISION}): {fmt:<13} inference {rates[fmt]:6.1f} img/s, "
            f"train step {rates[fmt + '_train']:6.1f} img/s, min cosine to fp32 {cos:.5f}"
        )
    print(
        f"channels-last speed-up: inference {rates['channels_last'] / rates['contiguous']:.2f}x, "
        f"train step {rates['channels_last_train'] / rates['contiguous_train']:.2f}x"
    )


def optimiser(name: str) -> None:
    model = clipforge.create_model(name, seed=0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    results = {}
    for kind in ("for-loop", "foreach", "fused"):
        kw = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[kind]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **kw)
        results[kind] = 1 / per_s(opt.step, 1, reps=5)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"AdamW step over {name} ({n:.0f}M parameters): "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results.items())
    )


def compiled(name: str, batch: int, steps: int) -> None:
    rng = random.Random(0)
    size = clipforge.get_config(name).vision.image_size
    data = [
        (torch.randn(batch, 3, size, size), clipforge.tokenize(captions(batch, rng), truncate=True)[:, :32])
        for _ in range(2)
    ]
    losses, rates = {}, {}
    for mode in ("eager", "compiled"):
        model = clipforge.create_model(name, seed=0).train()
        fwd = torch.compile(model) if mode == "compiled" else model

        def step(i: int = 0, fwd=fwd, model=model) -> torch.Tensor:
            images, tokens = data[i % 2]
            with autocast(PRECISION):
                out = fwd(images, tokens)
            loss = clipforge.clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.detach()

        t0 = time.perf_counter()
        losses[mode] = step().item()  # includes compilation
        first = time.perf_counter() - t0
        rates[mode] = per_s(step, batch, reps=steps)
        print(
            f"torch.compile ({name}, batch {batch}, {PRECISION} train step without optimiser): {mode:<8} "
            f"{rates[mode]:6.1f} pairs/s (first step {first:.1f} s), loss {losses[mode]:.5f}"
        )
    print(
        f"torch.compile speed-up: {rates['compiled'] / rates['eager']:.2f}x; loss difference "
        f"{abs(losses['compiled'] - losses['eager']):.2e}"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="tiny presets and batches (a smoke test)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = p.parse_args()
    global PRECISION
    PRECISION = resolve_precision(args.precision)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, levers timed in {PRECISION}")
    if args.quick:
        precision_choice(8, 1)
        text_trimming("tiny-vit", 16)
        pooled_forward("tiny-vit", 8, 1)
        channels_last("tiny-rn", 8)
        optimiser("tiny-vit")
        compiled("tiny-vit", 8, 2)
        return
    precision_choice(128, 3)
    text_trimming("ViT-B-32", 64)
    pooled_forward("ViT-B-32", 64, 3)
    channels_last("tiny-rn", 128)
    channels_last("RN50", 32)
    optimiser("ViT-B-32")
    compiled("small-vit", 64, 5)


if __name__ == "__main__":
    main()
