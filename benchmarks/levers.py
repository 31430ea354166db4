"""Each speed lever of clipforge measured on its own, on the same inputs, with the output difference
it causes (a lever is kept only if the outputs stay within tolerance):

- text trimming: the text tower on captions of 5-25 words padded to 77 vs trimmed to the longest
  caption in the batch (exact for a causal tower pooled at end-of-text);
- channels-last: a ResNet image tower in bf16 with NCHW vs channels-last memory format;
- optimiser: AdamW for-loop vs foreach vs fused, one step over a model's parameters;
- torch.compile: a training step (forward, loss, backward) eager vs compiled.

    python benchmarks/levers.py                          # ViT-B-32 text/optimiser, RN50 channels-last, small-vit compile
    python benchmarks/levers.py --quick                  # tiny presets, seconds (a smoke test)
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

import clipforge
from vs_transformers import captions


def per_s(fn, n: int, reps: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return n * reps / (time.perf_counter() - start)


@torch.no_grad()
def text_trimming(name: str, batch: int) -> None:
    model = clipforge.create_model(name, seed=0).eval()
    tokens = clipforge.tokenize(captions(batch, random.Random(0)), truncate=True)
    longest = int((tokens != 0).sum(1).max())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = per_s(lambda: model.encode_text(tokens), batch)
        trimmed = per_s(lambda: model.encode_text(tokens[:, :longest]), batch)
    diff = (model.encode_text(tokens) - model.encode_text(tokens[:, :longest])).abs().max().item()
    print(f"text trimming ({name}, batch {batch}, 77 -> {longest} tokens, bf16): {padded:.1f} -> {trimmed:.1f} txt/s "
          f"({trimmed / padded:.2f}x); fp32 max |difference| {diff:.2e}")


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
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.encode_image(images).float().square().mean().backward()

        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            rates[fmt] = per_s(lambda: model.encode_image(images), batch)
            out = model.encode_image(images).float()
        rates[fmt + "_train"] = per_s(train_step, batch)
        cos = F.cosine_similarity(ref, out, dim=-1).min().item()
        print(f"channels-last ({name}, batch {batch}, bf16): {fmt:<13} inference {rates[fmt]:6.1f} img/s, "
              f"train step {rates[fmt + '_train']:6.1f} img/s, min cosine to fp32 {cos:.5f}")
    print(f"channels-last speed-up: inference {rates['channels_last'] / rates['contiguous']:.2f}x, "
          f"train step {rates['channels_last_train'] / rates['contiguous_train']:.2f}x")


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
    print(f"AdamW step over {name} ({n:.0f}M parameters): " +
          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results.items()))


def compiled(name: str, batch: int, steps: int) -> None:
    rng = random.Random(0)
    size = clipforge.get_config(name).vision.image_size
    data = [(torch.randn(batch, 3, size, size), clipforge.tokenize(captions(batch, rng), truncate=True)[:, :32])
            for _ in range(2)]
    losses, rates = {}, {}
    for mode in ("eager", "compiled"):
        model = clipforge.create_model(name, seed=0).train()
        fwd = torch.compile(model) if mode == "compiled" else model

        def step(i: int = 0) -> torch.Tensor:
            images, tokens = data[i % 2]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fwd(images, tokens)
            loss = clipforge.clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.detach()

        t0 = time.perf_counter()
        losses[mode] = step().item()  # includes compilation
        first = time.perf_counter() - t0
        rates[mode] = per_s(step, batch, reps=steps)
        print(f"torch.compile ({name}, batch {batch}, bf16 train step without optimiser): {mode:<8} "
              f"{rates[mode]:6.1f} pairs/s (first step {first:.1f} s), loss {losses[mode]:.5f}")
    print(f"torch.compile speed-up: {rates['compiled'] / rates['eager']:.2f}x; loss difference "
          f"{abs(losses['compiled'] - losses['eager']):.2e}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="tiny presets and batches (a smoke test)")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.quick:
        text_trimming("tiny-vit", 16)
        channels_last("tiny-rn", 8)
        optimiser("tiny-vit")
        compiled("tiny-vit", 8, 2)
        return
    text_trimming("ViT-B-32", 64)
    channels_last("tiny-rn", 128)
    channels_last("RN50", 32)
    optimiser("ViT-B-32")
    compiled("small-vit", 64, 5)


if __name__ == "__main__":
    main()
