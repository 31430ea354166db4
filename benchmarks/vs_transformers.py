"""clipforge against Hugging Face transformers' CLIPModel on the same architecture, weights and inputs,
in one process: training-step, image-embedding and text-embedding throughput at equal precision (bf16
autocast on both sides where bf16 is native, else fp32), with achieved FLOP/s as a fraction of this
machine's matmul peak measured in the same run.

The sides alternate round by round (A B, then B A, ...): each round times `--steps` steps of every side
back to back, so the machine's speed drifts (2x within minutes on shared machines) hit both sides alike.
Each side's median and spread over the rounds is printed, and the median of the per-round ratios. The
matmul peak (n = 2048 on a CPU, 8192 on a GPU) is measured before the first round and after each one;
MFU uses its median and counts the FLOPs of the standard computation, transformers' (every token through
every block), for both sides, so it is proportional to throughput. On a GPU each side's step memory is
also printed: the most one steady step allocates above what was resident before it.

    python benchmarks/vs_transformers.py --model ViT-B-32 --batch 32 --rounds 5
    python benchmarks/vs_transformers.py --model small-vit --batch 64 --cases train,image,text
    python benchmarks/vs_transformers.py --device cuda --model ViT-B-32 --batch 256 --embed-batch 512   # GPU

Both sides get captions of 5-25 words padded to the longest caption in the batch (transformers'
`padding=True`, its documented setting), SDPA attention, and torch.optim.AdamW (`--optimizer`:
foreach by default, or fused). `--compile` adds clipforge as `clipforge train --compile` runs it: each
tower torch.compiled (the text tower for dynamic lengths), captions padded to a multiple of 16 tokens.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F

import clipforge
from clipforge.data.loader import trim_tokens
from clipforge.systems.clip import hf as cf_hf
from clipforge.systems.clip.task import CLIPTask

WORDS = (
    "a photo of the red blue green small large dog cat bird car tree house person street sky water "
    "on in near with two three old young running sitting field city beach night day white black"
).split()


def captions(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) for _ in range(n)]


DEVICE = torch.device("cpu")
CONTEXT = 77  # clipforge.tokenize's context length


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def peak_size() -> int:
    """The matrix size the matmul peak is measured at: 2048 on a CPU, 8192 on a GPU."""
    return 8192 if DEVICE.type == "cuda" else 2048


def matmul_peak(dtype: torch.dtype, reps: int = 5) -> float:
    n = peak_size()
    if DEVICE.type == "cuda":
        reps = 20
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def build(name: str):
    import transformers

    ours = clipforge.create_model(name, seed=0)
    cfg = cf_hf.config_to_hf(ours.config)
    hf_cfg = transformers.CLIPConfig(
        text_config=cfg["text_config"], vision_config=cfg["vision_config"], projection_dim=cfg["projection_dim"]
    )
    theirs = transformers.CLIPModel(hf_cfg)
    try:
        theirs.set_attn_implementation("sdpa")
    except Exception:  # older transformers pick SDPA by default
        pass
    theirs.load_state_dict(cf_hf.clipforge_to_hf(ours.state_dict()), strict=False)
    return ours.to(DEVICE), theirs.to(DEVICE)


def batch(size: int, image_size: int, rng: random.Random):
    images = torch.randn(size, 3, image_size, image_size)
    tokens = trim_tokens(clipforge.tokenize(captions(size, rng), truncate=True), CONTEXT)
    return images.to(DEVICE), tokens.to(DEVICE), (tokens != 0).long().to(DEVICE)


def padded(batches: list, multiple: int = 16) -> list:
    """The batches with caption tokens padded to a multiple of `multiple` (at most the context length), as
    compiled training's collate pads them (exact: nothing after end-of-text reaches the pooled output)."""
    return [(i, trim_tokens(F.pad(t, (0, CONTEXT - t.shape[1])), CONTEXT, multiple), m) for i, t, m in batches]


def train_step_fn(side: str, model, opt):
    def step(images, tokens, mask):
        if side != "transformers":
            out = model(images, tokens)
            loss = clipforge.clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        else:
            loss = model(input_ids=tokens, attention_mask=mask, pixel_values=images, return_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().float()

    return step


def timed(fn, data, warmup: int, steps: int, bf16: bool) -> tuple[float, list[float]]:
    losses = []
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            out = fn(*data[i % len(data)])
        if out is not None:
            losses.append(out)
    sync()
    return (time.perf_counter() - start) / steps, [float(x) for x in losses]


def step_memory(fn, data, bf16: bool) -> float | None:
    """On a GPU: the most memory one steady step allocates above what was resident before it (activations,
    gradients and workspace; weights and optimiser state are resident already), in bytes. None on a CPU."""
    if DEVICE.type != "cuda":
        return None
    sync()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    before = torch.cuda.memory_allocated(DEVICE)
    timed(fn, data, 0, 1, bf16)
    return float(torch.cuda.max_memory_allocated(DEVICE) - before)


def count_flops(fn, data, bf16: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
        fn(*data[0])
    return float(counter.get_total_flops())


def cpu_flags() -> str:
    """The machine's CPU model and the flags that decide matmul speed (from /proc/cpuinfo)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return f"{model} [{' '.join(f for f in wanted if f in flags) or 'no AVX2'}]"


def _stats(values: list[float]) -> str:
    v = sorted(values)
    return f"median {statistics.median(v):8.1f} (min {v[0]:.1f}, max {v[-1]:.1f})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--embed-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps (or embedding batches) per side per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the sides alternate within and across rounds")
    p.add_argument("--loss-steps", type=int, default=20, help="steps for the bf16-vs-fp32 loss check")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--optimizer", choices=["foreach", "fused"], default="foreach", help="AdamW implementation (both sides)"
    )
    p.add_argument("--compile", action="store_true", help="also time clipforge under torch.compile")
    p.add_argument("--cases", default="train,image", help="comma-separated: train, image, text")
    p.add_argument(
        "--precision",
        choices=["auto", "both", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 where it is native on the device, else fp32",
    )
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.manual_seed(0)
    rng = random.Random(0)
    from clipforge.precision import native_bf16

    native = native_bf16(DEVICE)
    precisions = {"auto": ["bf16"] if native else ["fp32"], "both": ["bf16", "fp32"]}.get(
        args.precision, [args.precision]
    )
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else cpu_flags()
    print(f"machine: {where}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    size = clipforge.get_config(args.model).vision.image_size
    data = [batch(args.batch, size, rng) for _ in range(4)]
    embed = [batch(args.embed_batch, size, rng) for _ in range(2)]
    sides = ["transformers", "clipforge"] + (["clipforge+compile"] if args.compile else [])
    for precision in precisions:
        bf16 = precision == "bf16"
        dtype = torch.bfloat16 if bf16 else torch.float32
        # one model, optimiser and function per side and case, built once; the rounds then alternate
        fns: dict = {}
        nominal: dict = {}
        memory: dict = {}
        for side in sides:
            ours, theirs = build(args.model)
            model = (theirs if side == "transformers" else ours).train()
            if side.endswith("+compile"):  # as `clipforge train --compile` does: each tower compiled
                CLIPTask(model).compile(model)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **{args.optimizer: True})
            train_fn = train_step_fn(side, model, opt)

            def image_fn(i, t, m, model=model, side=side):
                with torch.no_grad():
                    if side == "transformers":
                        model.get_image_features(pixel_values=i)
                    else:
                        model.encode_image(i)

            def text_fn(i, t, m, model=model, side=side):
                with torch.no_grad():
                    if side == "transformers":
                        model.get_text_features(input_ids=t, attention_mask=m)
                    else:
                        model.encode_text(t)

            # the compiled side's captions come padded as its collate pads them, outside the timed steps
            side_data, side_embed = (padded(data), padded(embed)) if side.endswith("+compile") else (data, embed)
            fns[side] = {"train": (train_fn, side_data, args.batch), "image": (image_fn, side_embed, args.embed_batch),
                         "text": (text_fn, side_embed, args.embed_batch)}  # fmt: skip
            for case in cases:
                fn, d, _ = fns[side][case]
                if side == "transformers":  # the standard computation's FLOPs count for both sides (MFU)
                    nominal[case] = count_flops(fn, d, bf16)
                t0 = time.perf_counter()
                timed(fn, d, len(d) - 1, 1, bf16)  # warm-up (and compilation) on every batch, outside the rounds
                print(f"  {side} {case}: warm-up on {len(d)} batches (compilation) {time.perf_counter() - t0:.1f} s")
                memory[(side, case)] = step_memory(fn, d, bf16)
        per_round: dict = {(side, case): [] for side in sides for case in cases}
        peaks = [matmul_peak(dtype)]
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]  # ABAB..., then BA: drift hits both sides alike
            for case in cases:
                for side in order:
                    fn, d, n = fns[side][case]
                    sec, _ = timed(fn, d, 0, args.steps, bf16)
                    per_round[(side, case)].append(n / sec)
            peaks.append(matmul_peak(dtype))
        peak = statistics.median(peaks)
        print(
            f"\n{precision}: {args.rounds} rounds x {args.steps} steps per side; matmul peak (n={peak_size()}) median "
            f"{peak / 1e12:.2f} TFLOP/s (min {min(peaks) / 1e12:.2f}, max {max(peaks) / 1e12:.2f}) over "
            f"{len(peaks)} measurements between the rounds"
        )
        unit = {"train": "pairs/s", "image": "img/s", "text": "txt/s"}
        for case in cases:
            for side in sides:
                v = per_round[(side, case)]
                mfu = nominal[case] / (fns[side][case][2] / statistics.median(v)) / peak
                mem = memory[(side, case)]
                mem = "" if mem is None else f", step memory {mem / 2**30:.2f} GiB"
                print(f"  {case:<5} {side:<18} {_stats(v)} {unit[case]}  (MFU {mfu:.1%}{mem})")
            base = per_round[("transformers", case)]
            for side in sides[1:]:
                ratios = [a / b for a, b in zip(per_round[(side, case)], base)]
                print(
                    f"  {case:<5} {side}/transformers: median of per-round ratios {statistics.median(ratios):.2f}x "
                    f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
                )
    # numerical checks: bf16 training loss after N steps vs fp32, and bf16 image embeddings vs fp32
    if "bf16" not in precisions or args.loss_steps <= 0:
        return
    losses = {}
    for precision in ("bf16", "fp32"):
        ours, _ = build(args.model)
        opt = torch.optim.AdamW(ours.parameters(), lr=1e-5, **{args.optimizer: True})
        _, trace = timed(train_step_fn("clipforge", ours.train(), opt), data, 0, args.loss_steps, precision == "bf16")
        losses[precision] = trace[-1]
    ours, _ = build(args.model)
    ours.eval()
    with torch.no_grad():
        ref = ours.encode_image(embed[0][0])
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            low = ours.encode_image(embed[0][0]).float()
    cos = F.cosine_similarity(ref, low, dim=-1).min().item()
    rel = abs(losses["bf16"] - losses["fp32"]) / losses["fp32"]
    print(
        f"loss after {args.loss_steps} steps: bf16 {losses['bf16']:.4f} vs fp32 {losses['fp32']:.4f} "
        f"({rel:.2%} apart); bf16 image embeddings: min cosine to fp32 {cos:.5f}"
    )


if __name__ == "__main__":
    main()
